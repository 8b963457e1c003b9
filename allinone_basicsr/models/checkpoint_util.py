"""Checkpoint reading and atomic writing for AllInOneModel (not a model module: the registry scan skips it)."""
import os
import pickle

import torch


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: a crash or a kill never leaves
    half a file under ``path`` (the old file, or none, stays until the new one is complete on disk)."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, logger=None):
    """``torch.load`` on the CPU; safe (``weights_only``) first, then a full unpickle for files that need it
    (e.g. Lightning checkpoints holding hyper-parameter objects), with a warning: load only files you trust."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        if logger is not None:
            logger.warning(f'{path} holds pickled Python objects ({str(err).splitlines()[0]}); loading it with '
                           'weights_only=False. Only load checkpoints from sources you trust.')
        return torch.load(path, map_location='cpu', weights_only=False)


def _strip_prefix(state, prefix):
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def extract_state_dict(ckpt, param_key='params', path='checkpoint'):
    """The network state dict inside a loaded checkpoint, whatever the known layout.

    Known layouts:
        - BasicSR / official SymUNet: ``{'params': ..., 'params_ema': ...}`` (``param_key`` first, then ``params``);
        - PyTorch Lightning / official PromptIR ``model.ckpt``: ``{'state_dict': {'net.<key>': ...}, 'epoch': ...}``
          (the ``net.`` entries, prefix removed; all entries if none has that prefix);
        - a bare state dict.
    DDP's ``module.`` prefix is removed. Anything else raises a ValueError listing the top-level keys found.
    """
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}')
    state = None
    for key in (param_key, 'params'):
        if key and isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            break
    if state is None and isinstance(ckpt.get('state_dict'), dict):
        state = ckpt['state_dict']
        net = {k[len('net.'):]: v for k, v in state.items() if k.startswith('net.')}
        state = net or state
    if state is None and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = ckpt
    if state is None:
        raise ValueError(f'{path}: unknown checkpoint layout; top-level keys: {sorted(map(str, ckpt))[:20]}. '
                         'Known layouts: BasicSR {"params"/"params_ema": state_dict}, Lightning '
                         '{"state_dict": {"net.<key>": ...}} (official PromptIR), or a bare state_dict.')
    return _strip_prefix(state, 'module.')
