"""The one place that makes basicsr 1.4.2 import and run on current torch / torchvision.

Every patch here answers one measured failure (see DESIGN.md, "basicsr 1.4.2 on current torch"):

1. ``import basicsr`` fails: ``torchvision.transforms.functional_tensor`` was removed from torchvision. We
   register a module of that name exposing ``rgb_to_grayscale`` from ``torchvision.transforms.functional``.
2. Resume on a machine without CUDA fails: ``basicsr.train.load_resume_state`` maps the state onto
   ``torch.cuda.current_device()``. Ours loads onto the CPU when CUDA is absent.
3. Distributed runs without CUDA fail: ``init_dist('pytorch')`` calls ``torch.cuda.set_device`` (division by
   zero without GPUs) and uses NCCL. Ours uses gloo and skips ``set_device`` when CUDA is absent.
   (``BaseModel.model_to_device`` passes CUDA ``device_ids`` to DDP; ``AllInOneModel`` overrides it.)
4. lmdb >= 1 refuses to open one environment twice in a process, and BasicSR's LMDB backend opens one per
   dataset. Ours shares one read-only environment per path within the process.

``apply()`` is idempotent and runs on ``import allinone_basicsr``, before anything imports basicsr.
"""
import os
import sys
import types
import warnings

_APPLIED = False
_LMDB_ENVS = {}


def _patch_functional_tensor():
    name = 'torchvision.transforms.functional_tensor'
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional
    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = shim


def _load_resume_state(opt):
    """Same as ``basicsr.train.load_resume_state``, but loads onto the CPU when CUDA is absent."""
    import torch
    from basicsr.utils import check_resume, scandir

    if torch.cuda.is_available() and opt.get('num_gpu', 0) != 0:
        device_id = torch.cuda.current_device()
        location = lambda storage, loc: storage.cuda(device_id)  # noqa: E731
    else:
        location = 'cpu'

    if opt['auto_resume']:
        # newest first; a state (or its checkpoint) that cannot be read is skipped with a warning
        state_path = os.path.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
        states = list(scandir(state_path, suffix='state', recursive=False, full_path=False)) \
            if os.path.isdir(state_path) else []
        for it in sorted((int(float(v.split('.state')[0])) for v in states), reverse=True):
            path = os.path.join(state_path, f'{it}.state')
            model_path = os.path.join(os.path.dirname(state_path), 'models', f'net_g_{it}.pth')
            try:
                resume_state = torch.load(path, map_location=location, weights_only=True)
                torch.load(model_path, map_location='cpu', weights_only=True)
            except Exception as error:  # truncated or corrupt: fall back to the one before
                warnings.warn(f'auto_resume: skipping unreadable training state {path} or {model_path} '
                              f'({type(error).__name__}: {error}); trying the previous one')
                continue
            opt['path']['resume_state'] = path
            check_resume(opt, resume_state['iter'])
            return resume_state
        return None

    resume_state_path = opt['path'].get('resume_state')
    if not resume_state_path:
        return None
    if not os.path.isfile(resume_state_path):
        raise FileNotFoundError(f'path.resume_state: no such file: {resume_state_path}')
    resume_state = torch.load(resume_state_path, map_location=location, weights_only=True)
    check_resume(opt, resume_state['iter'])
    return resume_state


def _init_dist_pytorch(backend='nccl', **kwargs):
    """``basicsr.utils.dist_util._init_dist_pytorch`` that also works without CUDA (gloo, no set_device)."""
    import torch
    import torch.distributed as dist
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_device(int(os.environ['RANK']) % torch.cuda.device_count())
    else:
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


def _patch_lmdb_backend():
    import lmdb
    from basicsr.utils import file_client

    def __init__(self, db_paths, client_keys='default', readonly=True, lock=False, readahead=False, **kwargs):
        if isinstance(client_keys, str):
            client_keys = [client_keys]
        self.db_paths = [str(v) for v in (db_paths if isinstance(db_paths, (list, tuple)) else [db_paths])]
        if len(client_keys) != len(self.db_paths):
            raise ValueError(f'client_keys and db_paths should have the same length, '
                             f'but received {len(client_keys)} and {len(self.db_paths)}.')
        self._client = {}
        for client, path in zip(client_keys, self.db_paths):
            if not os.path.isdir(path):
                raise FileNotFoundError(f'LMDB folder not found: {path}')
            key = (os.path.realpath(path), readonly, lock, readahead)
            if key not in _LMDB_ENVS:
                _LMDB_ENVS[key] = lmdb.open(path, readonly=readonly, lock=lock, readahead=readahead, **kwargs)
            self._client[client] = _LMDB_ENVS[key]

    file_client.LmdbBackend.__init__ = __init__


def apply():
    global _APPLIED
    if _APPLIED:
        return
    _patch_functional_tensor()
    import basicsr.train
    import basicsr.utils.dist_util as dist_util
    basicsr.train.load_resume_state = _load_resume_state
    dist_util._init_dist_pytorch = _init_dist_pytorch
    _patch_lmdb_backend()
    _APPLIED = True
