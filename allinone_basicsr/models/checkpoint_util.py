"""Checkpoint reading and atomic writing for AllInOneModel (not a model module: the registry scan skips it)."""
import argparse
import collections
import os
import pickle

import numpy as np
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


# Pure-data classes that Lightning checkpoints (and older training scripts) pickle besides tensors: hyper-parameter
# containers and numpy scalars. Rebuilding them sets attributes or builds numbers; it runs no code from the file.
_multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray  # numpy 2 / numpy 1
SAFE_GLOBALS = [argparse.Namespace, collections.OrderedDict, collections.defaultdict, np.dtype, _multiarray.scalar]
SAFE_GLOBALS += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
TORCH_MAGIC = (b'PK\x03\x04', b'\x80')  # a torch.save zip archive, a legacy pickle


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file that needs more than weights to be loaded: loading it would run Python code named in the file."""


def check_torch_file(path, key='path.pretrain_network_g'):
    """A file that is not a PyTorch file (JSON, an image, text, ...) is refused before anything unpickles it."""
    with open(path, 'rb') as f:
        head = f.read(8)
    if not head.startswith(TORCH_MAGIC):
        raise ValueError(f'{key}: {path} is not a PyTorch checkpoint (it starts with {head!r}; torch.save writes a '
                         'zip archive starting with PK, older files a pickle starting with \\x80)')


def load_checkpoint(path, logger=None, key='path.pretrain_network_g'):
    """``torch.load`` on the CPU with ``weights_only=True`` (tensors, numbers, strings, containers and the pure-data
    classes of ``SAFE_GLOBALS``): nothing in the file can run code. A file that needs anything else is refused with
    an :class:`UnsafeCheckpointError` naming the file and the offending globals, and how to convert it once with
    ``python -m allinone_basicsr.convert IN OUT --trust-pickle`` if its source is trusted. The official PromptIR
    release (a Lightning checkpoint: state dict, optimizer and scheduler states, loop and callback metadata) loads.
    """
    check_torch_file(path, key)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            offending = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # a legacy (non-zip) file: the error message names the first one
            offending = [str(err).split('GLOBAL ')[-1].split(' ')[0]] if 'GLOBAL ' in str(err) else []
        allowed = {f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS}
        offending = [g for g in offending if g not in allowed] or ['(see the message below)']
        raise UnsafeCheckpointError(
            f'{key}: {path} holds Python objects that only a full unpickle can rebuild ({", ".join(offending)}); '
            'loading it could run code from the file, so it is refused. If you trust its source, convert it once to '
            f'a weights-only file: python -m allinone_basicsr.convert {path} CONVERTED.pth --trust-pickle, then '
            f'point {key} at CONVERTED.pth.') from None


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
