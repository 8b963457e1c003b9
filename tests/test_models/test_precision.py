"""Mixed precision (``train.amp`` / ``val.amp``) and compilation (``train.compile``) of AllInOneModel, on CPU."""
import functools
import logging
from pathlib import Path

import pytest
import torch
import yaml
from test_allinone_model import TINY, batch, make_opt

from allinone_basicsr.models import precision
from allinone_basicsr.utils.options import check_options

from basicsr.models import build_model

REPO = Path(__file__).resolve().parents[2]
STEPS = 25


def train(tmp_path, steps=STEPS, **train_opt):
    torch.manual_seed(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    model = build_model(make_opt(tmp_path, TINY, **train_opt))
    data = batch()
    losses = []
    for it in range(1, steps + 1):
        model.feed_data(data)
        model.optimize_parameters(it)
        losses.append(float(model.log_dict['l_pix']))
    return model, losses


def outputs(model):
    model.feed_data(batch())
    model.test()
    return model.output


def fp16_autocast_works():
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            torch.nn.functional.conv2d(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 3, 3))
        torch.amp.GradScaler('cpu')
        return True
    except (RuntimeError, TypeError, AssertionError):
        return False


def test_bf16_training_lowers_the_loss_and_stays_close_to_fp32(tmp_path):
    fp32, fp32_losses = train(tmp_path / 'fp32')
    bf16, bf16_losses = train(tmp_path / 'bf16', amp='bf16')
    assert bf16.precision.dtype == torch.bfloat16
    assert bf16.precision.scaler is None  # bfloat16 has float32's exponent range: no scaler
    assert bf16_losses[-1] < 0.8 * bf16_losses[0]
    # the two runs follow the same curve: every loss within 2% of fp32's
    for a, b in zip(fp32_losses, bf16_losses):
        assert abs(a - b) <= 0.02 * a
    # weights and optimizer state stay float32; outputs (fp32 inference of both) within 0.02 of each other in [0, 1]
    assert all(p.dtype == torch.float32 for p in bf16.net_g.parameters())
    assert all(v.dtype == torch.float32 for s in bf16.optimizer_g.state.values() for v in s.values()
               if torch.is_tensor(v) and v.is_floating_point())
    out32, out16 = outputs(fp32), outputs(bf16)
    assert out16.dtype == torch.float32
    assert (out32 - out16).abs().max() < 0.02


def test_training_forward_runs_in_the_low_precision(tmp_path):
    model = build_model(make_opt(tmp_path, TINY, amp='bf16'))
    seen = []
    model.net_g.intro.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert seen == [torch.bfloat16]  # the conv ran under autocast ...
    assert model.output.dtype == torch.float32  # ... and the losses saw float32


@pytest.mark.skipif(not fp16_autocast_works(), reason='this torch has no float16 autocast or GradScaler on CPU')
def test_fp16_with_the_scaler_clips_unscaled_gradients_and_learns(tmp_path):
    model, losses = train(tmp_path, amp='fp16', grad_clip=0.05)
    scaler = model.precision.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.get_scale() == 65536.0
    assert losses[-1] < 0.8 * losses[0]
    # the clipping saw the true gradients: after the step their norm is the clip norm, not 65536 times it
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.net_g.parameters()))
    assert norm <= 0.05 * 1.001


@pytest.mark.skipif(not fp16_autocast_works(), reason='this torch has no float16 autocast or GradScaler on CPU')
def test_fp16_resume_restores_the_scaler_and_continues_exactly(tmp_path):
    def steps(model, iters):
        for it in iters:
            model.feed_data(batch())
            model.optimize_parameters(it)

    straight, _ = train(tmp_path / 'straight', steps=3, amp='fp16')
    straight.precision.scaler.update(new_scale=1024.0)  # a scale a fresh scaler would not have
    steps(straight, (4, 5, 6))

    first, _ = train(tmp_path / 'halves', steps=3, amp='fp16')
    first.precision.scaler.update(new_scale=1024.0)
    first.save_training_state(epoch=0, current_iter=3)
    state = torch.load(tmp_path / 'halves' / '3.state', weights_only=False)
    assert state['scaler']['scale'] == 1024.0
    torch.manual_seed(123)  # another init and generator: everything must come from the weights and the state
    resumed = build_model(make_opt(tmp_path / 'halves', TINY, amp='fp16'))
    resumed.net_g.load_state_dict(first.net_g.state_dict())
    resumed.resume_training(state)
    assert resumed.precision.scaler.get_scale() == 1024.0
    steps(resumed, (4, 5, 6))
    for (key, a), b in zip(straight.net_g.state_dict().items(), resumed.net_g.state_dict().values()):
        assert torch.equal(a, b), key


def test_validation_amp_gives_float32_outputs_close_to_fp32(tmp_path):
    model = build_model(make_opt(tmp_path, TINY))
    exact = outputs(model)
    model.opt['val'] = {'amp': 'bf16'}
    low = outputs(model)
    assert low.dtype == torch.float32 and not torch.equal(low, exact)
    assert (low - exact).abs().max() < 0.02


@pytest.mark.parametrize('value', ['fp8', 'half', 16])
def test_unknown_precision_lists_the_valid_ones(tmp_path, value):
    with pytest.raises(ValueError) as err:
        build_model(make_opt(tmp_path, TINY, amp=value))
    assert "valid: bf16, fp16, ~" in str(err.value) and 'train.amp' in str(err.value)


@pytest.mark.parametrize('section', ['train', 'val'])
def test_option_check_names_the_precision_key(section):
    with open(REPO / 'options' / 'demo' / 'train_symunet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt[section]['amp'] = 'fp8'
    with pytest.raises(ValueError) as err:
        check_options(opt)
    assert f'{section}.amp' in str(err.value) and 'bf16' in str(err.value)
    opt[section]['amp'], opt[section]['compile'] = 'bf16', 'maybe'
    with pytest.raises((TypeError, ValueError)) as err:
        check_options(opt)
    assert f'{section}.compile' in str(err.value)


def aot_eager(monkeypatch):
    """torch.compile through dynamo and AOT autograd but no C++ code generation (what makes ``_orig_mod.`` keys is
    the OptimizedModule wrapper, the same for every backend): seconds instead of a minute per test."""
    monkeypatch.setattr(precision.torch, 'compile', functools.partial(torch.compile, backend='aot_eager'))


def test_compiled_training_keeps_checkpoint_keys_and_matches_eager(tmp_path, monkeypatch):
    aot_eager(monkeypatch)
    eager, eager_losses = train(tmp_path / 'eager', steps=3)
    compiled, compiled_losses = train(tmp_path / 'compiled', steps=3, compile=True)
    assert isinstance(compiled.precision.forward, precision.Compiled) and not compiled.precision.forward.failed
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for model, where in ((eager, 'eager'), (compiled, 'compiled')):
        model.save_network(model.net_g, 'net_g', 3)
        model.save_training_state(epoch=0, current_iter=3)
    e = torch.load(tmp_path / 'eager' / 'net_g_3.pth', weights_only=True)['params']
    c = torch.load(tmp_path / 'compiled' / 'net_g_3.pth', weights_only=True)['params']
    assert list(c) == list(e) and not any('_orig_mod' in k for k in c)
    es = torch.load(tmp_path / 'eager' / '3.state', weights_only=False)
    cs = torch.load(tmp_path / 'compiled' / '3.state', weights_only=False)
    assert es['optimizers'][0]['state'].keys() == cs['optimizers'][0]['state'].keys()
    # inference through the compiled graph too (val.compile follows train.compile), equal to the eager net's
    through_graph = outputs(compiled)
    graph = compiled._eval_precision.compiled
    assert graph.module is compiled.net_g and not graph.failed
    with torch.no_grad():
        assert torch.allclose(through_graph, compiled.net_g.eval()(batch()['lq']), atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch, caplog):
    def broken(module):
        def run(*args, **kwargs):
            raise RuntimeError('no C++ compiler found\nmore detail')
        return run

    monkeypatch.setattr(precision.torch, 'compile', broken)
    eager, eager_losses = train(tmp_path / 'eager', steps=3)
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        model, losses = train(tmp_path / 'compiled', steps=3, compile=True)
    assert losses == eager_losses  # the eager forward, bit-exact
    warnings = [r.getMessage() for r in caplog.records if 'torch.compile failed' in r.getMessage()]
    assert warnings == ['train.compile: torch.compile failed (RuntimeError: no C++ compiler found); '
                        'running eagerly instead.']


def test_compile_mapping_gives_torch_compile_its_keywords(tmp_path, monkeypatch):
    seen = []

    def record(module, **kwargs):
        seen.append(kwargs)
        return module

    monkeypatch.setattr(precision.torch, 'compile', record)
    train(tmp_path / 'mapping', steps=1, compile={'backend': 'aot_eager', 'mode': None})
    train(tmp_path / 'true', steps=1, compile=True)
    assert seen == [{'backend': 'aot_eager', 'mode': None}, {}]
    with open(REPO / 'options' / 'demo' / 'train_symunet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt['train']['compile'] = {'backend': 'inductor', 'fullgraf': True}
    with pytest.raises(ValueError, match=r"train.compile: unknown torch.compile keyword\(s\) \['fullgraf'\]; valid: "
                                         r"\['backend', 'mode', 'fullgraph', 'dynamic', 'options'\]"):
        check_options(opt)
