"""The one place that makes basicsr 1.4.2 import and run on current torch / torchvision.

Every patch here answers one measured failure (see docs/design.md, "basicsr 1.4.2 on current torch"):

1. ``import basicsr`` fails: ``torchvision.transforms.functional_tensor`` was removed from torchvision. We
   register a module of that name exposing ``rgb_to_grayscale`` from ``torchvision.transforms.functional``.
2. Resume fails in stock ``basicsr.train.train_pipeline`` (a user's script with the plugin imported; our loop calls
   ``resume.load_resume_state`` directly): ``basicsr.train.load_resume_state`` maps the state onto
   ``torch.cuda.current_device()`` (an error without CUDA; on a GPU the RNG states then cannot be restored). It is
   replaced by ``resume.load_resume_state``, which loads onto the CPU (and skips unreadable states).
3. Distributed runs: ``init_dist('pytorch' | 'slurm')`` calls ``torch.cuda.set_device`` (division by zero without
   GPUs) and uses NCCL for every tensor, so a CPU model (``num_gpu: 0``) on a CUDA machine hands CPU tensors to
   NCCL. Ours: without CUDA gloo and no ``set_device``; with CUDA the mixed backend ``cpu:gloo,cuda:nccl`` (each
   collective goes to the backend of its tensors' device). (``BaseModel.model_to_device`` passes CUDA
   ``device_ids`` to DDP; ``AllInOneModel`` overrides it.)
4. lmdb >= 1 refuses to open one environment twice in a process, and BasicSR's LMDB backend opens one per
   dataset. Ours shares one read-only environment per path within the process, and checks it when it opens it
   (``data.lmdb_check``: a truncated ``data.mdb`` is an error naming the LMDB instead of a SIGBUS on the first read).

5. Option files can run code: BasicSR's ``ordered_yaml`` loader is yaml's full loader, which executes
   ``!!python/object/apply:...`` tags. BasicSR's parser gets ``utils.options.OptionFileLoader`` instead (the same
   ordered mappings and types, Python tags refused naming the file and line; an empty, binary or non-mapping file
   is an error naming the file, not a TypeError inside the parser).

``apply()`` is idempotent and runs on ``import allinone_basicsr``, before anything imports basicsr.
"""
import os
import sys
import types

_APPLIED = False


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


def _backend(backend):
    """The process-group backend: gloo without CUDA; with CUDA, NCCL for CUDA tensors and gloo for CPU ones."""
    import torch
    if not (torch.cuda.is_available() and torch.cuda.device_count() > 0):
        return 'gloo'
    return 'cpu:gloo,cuda:nccl' if backend == 'nccl' else backend


def _set_device(rank):
    import torch
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_device(rank % torch.cuda.device_count())


def _init_dist_pytorch(backend='nccl', **kwargs):
    """``basicsr.utils.dist_util._init_dist_pytorch`` with ``_backend``; the device is the local rank's."""
    import torch.distributed as dist
    _set_device(int(os.environ.get('LOCAL_RANK', os.environ['RANK'])))
    dist.init_process_group(backend=_backend(backend), **kwargs)


def _init_dist_slurm(backend='nccl', port=None, timeout=None):
    """``basicsr.utils.dist_util._init_dist_slurm`` with ``_backend`` and no GPU arithmetic without GPUs (BasicSR
    passes ``dist_params`` here; its ``timeout`` is applied after the init, by ``utils.cli.parse_options``)."""
    import subprocess

    import torch.distributed as dist
    proc_id, ntasks = int(os.environ['SLURM_PROCID']), int(os.environ['SLURM_NTASKS'])
    local_rank = int(os.environ.get('SLURM_LOCALID', proc_id))
    _set_device(local_rank)
    node_list = os.environ['SLURM_NODELIST']
    os.environ['MASTER_ADDR'] = subprocess.getoutput(f'scontrol show hostname {node_list} | head -n1')
    if port is not None:
        os.environ['MASTER_PORT'] = str(port)
    os.environ.setdefault('MASTER_PORT', '29500')
    os.environ.update(WORLD_SIZE=str(ntasks), RANK=str(proc_id), LOCAL_RANK=str(local_rank))
    dist.init_process_group(backend=_backend(backend))


def _patch_lmdb_backend():
    from basicsr.utils import file_client

    def __init__(self, db_paths, client_keys='default', readonly=True, lock=False, readahead=False, **kwargs):
        from allinone_basicsr.utils.lmdb import shared_lmdb
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
            self._client[client] = shared_lmdb(path, readonly=readonly, lock=lock, readahead=readahead, **kwargs)

    file_client.LmdbBackend.__init__ = __init__


def _patch_option_loader():
    """BasicSR's ``ordered_yaml`` loader is yaml's full (unsafe) one: an option file could run code. Its parser gets
    the safe ordered loader instead (same mappings and types; ``!!python/*`` tags refused, naming the file)."""
    from allinone_basicsr.utils.options import OptionFileLoader

    import basicsr.utils.options as options
    original = options.ordered_yaml

    def ordered_yaml():
        return OptionFileLoader, original()[1]

    options.ordered_yaml = ordered_yaml


def apply():
    global _APPLIED
    if _APPLIED:
        return
    _patch_functional_tensor()
    from allinone_basicsr.utils.resume import load_resume_state

    import basicsr.train
    import basicsr.utils.dist_util as dist_util
    basicsr.train.load_resume_state = load_resume_state
    dist_util._init_dist_pytorch = _init_dist_pytorch
    dist_util._init_dist_slurm = _init_dist_slurm
    _patch_lmdb_backend()
    _patch_option_loader()
    _APPLIED = True
