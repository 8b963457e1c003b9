"""`path.pretrain_network_g` loads every known checkpoint layout, detected from the file (no conversion step)."""
import argparse

import pytest
import torch
from log_capture import BasicsrLog

from basicsr.models import build_model


@pytest.fixture(scope='module')
def reference(reference_dir):
    ref = torch.load(reference_dir / 'promptir_tiny_reference.pt', map_location='cpu', weights_only=False)
    ref['state_dict'] = {k: v.float() for k, v in ref['state_dict'].items()}
    return ref


def build_from(path, ref, **path_opt):
    opt = {
        'name': 'load', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'is_train': False, 'dist': False, 'rank': 0,
        'network_g': dict(ref['config'], type=ref['arch']),
        'path': dict({'pretrain_network_g': str(path), 'strict_load_g': True}, **path_opt),
    }
    return build_model(opt)


def output_of(model, ref):
    model.feed_data({'lq': ref['input']})
    model.test()
    return model.output


class _Hparams:
    """A training script's own class pickled into a checkpoint: only a full unpickle (running code) rebuilds it."""


def lightning_checkpoint(reference, **extra):
    """The layout of the official PromptIR ``model.ckpt`` (Lightning 2.0): weights under ``state_dict`` with the
    ``net.`` prefix, and the metadata Lightning writes (loops, callback state, optimizer and scheduler states)."""
    sd = {f'net.{k}': v for k, v in reference['state_dict'].items()}
    return dict({
        'epoch': 119, 'global_step': 534120, 'pytorch-lightning_version': '2.0.1', 'state_dict': sd,
        'loops': {'fit_loop': {'state_dict': {}, 'epoch_progress': {'total': {'ready': 120, 'completed': 119}},
                               'epoch_loop.batch_progress': {'total': {'ready': 534120}}}},
        'callbacks': {"ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0}": {
            'monitor': None, 'best_model_score': None, 'best_model_path': '', 'current_score': None,
            'dirpath': 'train_ckpt', 'best_k_models': {}, 'kth_best_model_path': '',
            'kth_value': torch.tensor(float('inf')), 'last_model_path': 'train_ckpt/epoch=118-step=529669.ckpt'}},
        'optimizer_states': [{'state': {0: {'step': torch.tensor(534120.), 'exp_avg': torch.zeros(3)}},
                              'param_groups': [{'lr': 2.3e-05, 'betas': (0.9, 0.999), 'eps': 1e-08,
                                                'weight_decay': 0.01, 'amsgrad': False, 'params': [0]}]}],
        'lr_schedulers': [{'warmup_epochs': 15, 'max_epochs': 150, 'warmup_start_lr': 0.0, 'eta_min': 0.0,
                           'base_lrs': [0.0002], 'last_epoch': 119, '_step_count': 120, '_last_lr': [2.3e-05]}],
    }, **extra)


@pytest.mark.parametrize('extra', [{}, {'hyper_parameters': argparse.Namespace(lr=2e-4, epochs=120),
                                        'hparams_name': 'opt'}])
def test_lightning_checkpoint_with_net_prefix(tmp_path, reference, extra):
    """The official layout (and argparse hyper-parameters) loads weights-only: no trust needed."""
    torch.save(lightning_checkpoint(reference, **extra), tmp_path / 'model.ckpt')
    out = output_of(build_from(tmp_path / 'model.ckpt', reference), reference)
    assert (out - reference['output']).abs().max() <= reference['atol']


def test_a_checkpoint_with_other_python_objects_is_refused_then_converted(tmp_path, reference):
    """A script's own class needs a full unpickle: refused, with the global and the one-time conversion named;
    ``convert --trust-pickle`` (an explicit choice) writes a weights-only file that loads."""
    from allinone_basicsr.tools.common import UsageError
    from allinone_basicsr.tools.convert import main as convert
    from allinone_basicsr.utils.checkpoint import UnsafeCheckpointError
    torch.save(lightning_checkpoint(reference, hyper_parameters={'opt': _Hparams()}), tmp_path / 'model.ckpt')
    with pytest.raises(UnsafeCheckpointError,
                       match=r'test_checkpoint_loading\._Hparams.*allinone_basicsr\.tools\.convert '
                       r'.* --trust-pickle'):
        build_from(tmp_path / 'model.ckpt', reference)
    with pytest.raises(UsageError, match='refused'):  # exit status 2 through the command
        convert([str(tmp_path / 'model.ckpt'), str(tmp_path / 'lean.pth')])  # not without the flag
    convert([str(tmp_path / 'model.ckpt'), str(tmp_path / 'lean.pth'), '--trust-pickle'])
    assert set(torch.load(tmp_path / 'lean.pth', weights_only=True)) == {'params'}
    out = output_of(build_from(tmp_path / 'lean.pth', reference), reference)
    assert (out - reference['output']).abs().max() <= reference['atol']


@pytest.mark.parametrize('layout', ['params', 'params_ema', 'module_prefix', 'bare'])
def test_basicsr_and_bare_checkpoints(tmp_path, reference, layout):
    sd = reference['state_dict']
    ckpt = {
        'params': {'params': sd},
        'params_ema': {'params': {k: torch.zeros_like(v) for k, v in sd.items()}, 'params_ema': sd},
        'module_prefix': {'params': {f'module.{k}': v for k, v in sd.items()}},
        'bare': sd,
    }[layout]
    torch.save(ckpt, tmp_path / 'net_g.pth')
    param_key = 'params_ema' if layout == 'params_ema' else 'params'
    with BasicsrLog() as log:
        model = build_from(tmp_path / 'net_g.pth', reference, param_key_g=param_key)
    assert (output_of(model, reference) - reference['output']).abs().max() <= reference['atol']
    weights = 'the whole dict: the file has no param key (a bare state dict)' if layout == 'bare' else \
        f'param key [{param_key}]'
    assert f'Loading PromptIR from {tmp_path / "net_g.pth"} (strict=True). Weights: {weights}.' in log


def test_a_param_key_the_file_lacks_is_an_error_listing_its_keys(tmp_path, reference):
    """``param_key_g: foo`` (a typo) is refused with the keys the file has, not loaded from ``params``."""
    sd = reference['state_dict']
    torch.save({'params': {k: torch.zeros_like(v) for k, v in sd.items()}, 'params_ema': sd}, tmp_path / 'net_g.pth')
    with pytest.raises(ValueError, match=r"path\.param_key_g: 'foo' is not a key of .*net_g\.pth; the keys it has: "
                       r"\['params', 'params_ema'\]\. Set path\.param_key_g to one of them"):
        build_from(tmp_path / 'net_g.pth', reference, param_key_g='foo')


def test_params_ema_in_a_file_without_ema_uses_params_and_says_so(tmp_path, reference):
    """A training without EMA writes only ``params``: ``param_key_g: params_ema`` loads it, as stock BasicSR does,
    and the log says which key was used."""
    torch.save({'params': reference['state_dict']}, tmp_path / 'net_g.pth')
    with BasicsrLog() as log:
        model = build_from(tmp_path / 'net_g.pth', reference, param_key_g='params_ema')
    assert (output_of(model, reference) - reference['output']).abs().max() <= reference['atol']
    assert any('Weights: param key [params] (the file has no params_ema' in m for m in log), log


def test_lightning_checkpoint_says_it_has_no_param_key(tmp_path, reference):
    torch.save(lightning_checkpoint(reference), tmp_path / 'model.ckpt')
    with BasicsrLog() as log:
        build_from(tmp_path / 'model.ckpt', reference, param_key_g='params_ema')
    assert any("Weights: its state_dict's net.* entries: the file has no param key (a Lightning checkpoint) "
               '(path.param_key_g: params_ema does not apply).' in m for m in log), log


def test_unknown_layout_lists_top_level_keys(tmp_path, reference):
    torch.save({'model': reference['state_dict'], 'step': 3}, tmp_path / 'odd.pth')
    with pytest.raises(ValueError, match=r"top-level keys: \['model', 'step'\]"):
        build_from(tmp_path / 'odd.pth', reference)
