"""`path.pretrain_network_g` loads every known checkpoint layout, detected from the file (no conversion step)."""
import pytest
import torch

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
    """Stands for the non-tensor objects Lightning pickles (e.g. argparse.Namespace hyper-parameters)."""


def test_lightning_checkpoint_with_net_prefix(tmp_path, reference):
    ckpt = {
        'epoch': 119, 'global_step': 534120, 'pytorch-lightning_version': '2.0.1',
        'state_dict': {f'net.{k}': v for k, v in reference['state_dict'].items()},
        'loops': {}, 'callbacks': {}, 'optimizer_states': [{}], 'lr_schedulers': [{}],
        'hyper_parameters': {'opt': _Hparams()},
    }
    torch.save(ckpt, tmp_path / 'model.ckpt')
    out = output_of(build_from(tmp_path / 'model.ckpt', reference), reference)
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
    model = build_from(tmp_path / 'net_g.pth', reference, param_key_g=param_key)
    assert (output_of(model, reference) - reference['output']).abs().max() <= reference['atol']


def test_unknown_layout_lists_top_level_keys(tmp_path, reference):
    torch.save({'model': reference['state_dict'], 'step': 3}, tmp_path / 'odd.pth')
    with pytest.raises(ValueError, match=r"top-level keys: \['model', 'step'\]"):
        build_from(tmp_path / 'odd.pth', reference)
