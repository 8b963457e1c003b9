"""Checkpoint reading and atomic writing for AllInOneModel (not a model module: the registry scan skips it)."""
import os

import torch


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def extract_state_dict(ckpt, param_key='params', path='checkpoint'):
    """The network state dict inside a loaded checkpoint, whatever the known layout.

    Known layouts: BasicSR / official SymUNet ``{'params': ..., 'params_ema': ...}`` (``param_key`` first, then
    ``params``), and a bare state dict. Keys are stripped of DDP's ``module.`` prefix. Anything else raises a
    ValueError that lists the top-level keys found.
    """
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}')
    state = None
    for key in (param_key, 'params'):
        if key and isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            break
    if state is None and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = ckpt
    if state is None:
        raise ValueError(f'{path}: unknown checkpoint layout; top-level keys: {sorted(map(str, ckpt))[:20]}. '
                         f'Known layouts: BasicSR {{"params"/"params_ema": state_dict}} or a bare state_dict.')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
