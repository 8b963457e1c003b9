"""Exact resume: per-sample seeds, the RNG states of every rank, and the loading of training states.

A resumed run continues with the batches, crops and noise of the uninterrupted run because every training sample
draws its randomness from its own seed: :class:`ResumableSampler` (BasicSR's EnlargedSampler order) yields
``(index, seed)`` and can start an epoch mid-way, and :class:`SeededDataset` wraps any dataset (BasicSR's own
included, unchanged): it seeds python's, numpy's and torch's CPU generators from the seed, then calls the dataset with
the plain index.

A training state (``training_states/<iter>.state``, written by ``AllInOneModel.save_training_state``) holds, besides
BasicSR's optimizers and schedulers, the torch (CPU and CUDA), numpy and python RNG states of every rank (a list,
one entry per rank), as tensors and plain numbers so it loads with ``weights_only=True``. It is always loaded onto
the CPU: the RNG setters need CPU byte tensors, and ``Optimizer.load_state_dict`` moves the optimizer state onto
the parameters' device itself.
"""
import hashlib
import logging
import math
import os
import random
from os import path as osp

import numpy as np
import torch
from torch.utils import data

from basicsr.data import build_dataloader, build_dataset
from basicsr.data.data_sampler import EnlargedSampler
from .seeds import sample_seed


class ResumableSampler(EnlargedSampler):
    """BasicSR's EnlargedSampler (same epoch-seeded order, same split across ranks) yielding ``(index, seed)``.

    The seed depends only on (manual_seed, epoch, rank, position in the epoch), so a sample's random crop, flips and
    noise do not depend on which worker loads it or on what ran before; ``skip`` starts an epoch at a position, so a
    run resumed at iteration k continues with the batch the uninterrupted run used at k + 1.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1, seed=0):
        super().__init__(dataset, num_replicas, rank, ratio)
        self.seed = seed
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        for position in range(self.skip, len(indices)):
            yield indices[position], sample_seed(self.seed, self.epoch, self.rank, position)

    def __len__(self):
        return self.num_samples - self.skip


class SeededDataset(data.Dataset):
    """Any dataset, each item drawn with its own randomness: ``dataset[(index, seed)]`` seeds python's ``random``,
    numpy's global generator and torch's CPU generator from ``seed``, then returns ``dataset.dataset[index]``.

    In a loader worker the generators are the worker's own. In the main process (``num_worker_per_gpu: 0``) their
    states are restored afterwards, so loading leaves the training's random streams as they were. Attributes other
    than the item access (``opt``, ...) are the wrapped dataset's.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index_seed):
        index, seed = index_seed
        in_worker = data.get_worker_info() is not None
        saved = None if in_worker else (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            if saved is not None:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.set_rng_state(saved[2])


def get_rng_states():
    """This process's torch (CPU and CUDA), numpy and python RNG states."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'python': {'version': py_state[0], 'state': list(py_state[1]), 'gauss_next': py_state[2]},
    }


def set_rng_states(states):
    """Restore the states of :func:`get_rng_states` (tensors on any device are copied to the CPU first)."""
    torch.set_rng_state(states['torch'].cpu())
    if states.get('cuda') and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states['cuda']])
    n = states['numpy']
    np.random.set_state(('MT19937', n['keys'].cpu().numpy().astype(np.uint32), n['pos'], n['has_gauss'],
                         n['cached_gaussian']))
    p = states['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss_next']))


def gather_rng_states(opt):
    """Every rank's RNG states, in rank order (a list of one in a single process). A collective when distributed:
    every rank must call it."""
    states = get_rng_states()
    if not opt.get('dist'):
        return [states]
    import torch.distributed as dist
    gathered = [None] * opt['world_size']
    dist.all_gather_object(gathered, states)
    return gathered


def restore_rng_states(saved, opt):
    """Restore this rank's entry of a training state's ``rng``.

    ``saved`` is a list with one entry per rank, or (older states) rank 0's dict alone. A state saved with another
    number of ranks cannot continue exactly: the ranks then keep the RNGs seeded at start, with a warning in the
    run's log (BasicSR's logger).
    """
    from basicsr.utils import get_root_logger
    rank, world_size = opt.get('rank', 0), opt.get('world_size', 1)
    if isinstance(saved, dict):
        saved = [saved]
    if len(saved) != world_size:
        get_root_logger().warning(f'the training state holds the RNG states of {len(saved)} rank(s), this run has '
                                  f'{world_size}: the RNGs stay as seeded at start (the run does not continue '
                                  'exactly)')
        return
    set_rng_states(saved[rank])


def load_resume_state(opt, notices=None):
    """The training state to resume from, loaded onto the CPU, or None.

    Same as ``basicsr.train.load_resume_state`` (``--auto_resume``: the newest state of the experiment; else
    ``path.resume_state``), except that it always loads onto the CPU (BasicSR maps it onto the current GPU, from
    which the RNG states cannot be restored), and that with ``--auto_resume`` a state (or its checkpoint) that
    cannot be read is skipped and the one before is used. That notice is appended to ``notices`` (``train`` logs
    them once the run's log file exists: BasicSR's logger gets its file once, when first set up); without a list
    (the stock pipeline) it goes to the ``basicsr`` logger as it is (stderr at least).
    """
    from basicsr.utils import check_resume, scandir
    from .checkpoint import load_training_state
    from .options import check_training_state

    if opt['auto_resume']:
        state_path = os.path.join(opt.get('root_path', '.'), 'experiments', opt['name'], 'training_states')
        states = list(scandir(state_path, suffix='state', recursive=False, full_path=False)) \
            if os.path.isdir(state_path) else []
        for it in sorted((int(float(v.split('.state')[0])) for v in states), reverse=True):
            path = os.path.join(state_path, f'{it}.state')
            model_path = os.path.join(os.path.dirname(state_path), 'models', f'net_g_{it}.pth')
            try:
                resume_state = load_training_state(path)
                check_training_state(resume_state, path)
                load_training_state(model_path, 'network file')
            except Exception as error:  # truncated or corrupt: fall back to the one before
                notice = (f'auto_resume: skipping unreadable training state {path} or {model_path} '
                          f'({type(error).__name__}: {error}); trying the previous one')
                if notices is None:
                    logging.getLogger('basicsr').warning(notice)  # not get_root_logger: it would lose the log file
                else:
                    notices.append(notice)
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
    resume_state = load_training_state(resume_state_path, 'path.resume_state: training state')
    check_training_state(resume_state, resume_state_path)
    check_resume(opt, resume_state['iter'])
    return resume_state


def resumable_loader(opt, logger):
    """The train loader, built once: ``datasets.train`` (BasicSR's ``build_dataset``) wrapped in a
    :class:`SeededDataset`, ordered by a :class:`ResumableSampler` (BasicSR's EnlargedSampler order, per-sample
    seeds), batched by BasicSR's ``build_dataloader``; logs BasicSR's training statistics. Returns the loader and its
    sampler."""
    dataset_opt = opt['datasets']['train']
    ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
    dataset = SeededDataset(build_dataset(dataset_opt))
    sampler = ResumableSampler(dataset, opt['world_size'], opt['rank'], ratio, seed=opt['manual_seed'])
    loader = build_dataloader(dataset, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'], sampler=sampler,
                              seed=opt['manual_seed'])
    per_epoch = math.ceil(len(dataset) * ratio / (dataset_opt['batch_size_per_gpu'] * opt['world_size']))
    total_iters = int(opt['train']['total_iter'])
    logger.info('Training statistics:'  # BasicSR's lines, as create_train_val_dataloader logs them
                f'\n\tNumber of train images: {len(dataset)}'
                f'\n\tDataset enlarge ratio: {ratio}'
                f'\n\tBatch size per gpu: {dataset_opt["batch_size_per_gpu"]}'
                f'\n\tWorld size (gpu number): {opt["world_size"]}'
                f'\n\tRequire iter number per epoch: {per_epoch}'
                f'\n\tTotal epochs: {math.ceil(total_iters / per_epoch)}; iters: {total_iters}.')
    return loader, sampler


# datasets.train keys that change how samples are loaded or batched, not what a sample is (the batch, world size
# and dataset_enlarge_ratio are compared on their own)
LOADER_KEYS = ('name', 'phase', 'num_worker_per_gpu', 'batch_size_per_gpu', 'dataset_enlarge_ratio', 'prefetch_mode',
               'pin_memory', 'persistent_workers', 'num_prefetch_queue')


def _is_source_key(key):
    return str(key).startswith('dataroot') or str(key).endswith('_file') or key == 'gt_key_map'


def _sha256_update(digest, data):
    digest.update(len(data).to_bytes(8, 'little'))
    digest.update(data)


def source_identity(path):
    """What a data source holds, in a few words and a digest, cheaply (no image is decoded).

    An LMDB (a folder with ``data.mdb``): its entry count, the size of ``data.mdb``, and a SHA-256 of its
    ``meta_info.txt`` and of the first and last entries (keys and bytes); an image folder: its file count and a
    SHA-256 of the names and sizes; a file (``meta_info_file``, ...): its size and SHA-256; else ``'missing'``.
    """
    from .lmdb import checked_lmdb
    path = str(path)
    digest = hashlib.sha256()
    if osp.isfile(osp.join(path, 'data.mdb')):
        meta = osp.join(path, 'meta_info.txt')
        if osp.isfile(meta):
            with open(meta, 'rb') as f:
                _sha256_update(digest, f.read())
        with checked_lmdb(path) as env, env.begin() as txn:
            entries = env.stat()['entries']
            cursor = txn.cursor()
            for found in (cursor.first(), cursor.last()):
                if found:
                    _sha256_update(digest, bytes(cursor.key()))
                    _sha256_update(digest, bytes(cursor.value()))
        size = osp.getsize(osp.join(path, 'data.mdb'))
        return f'LMDB of {entries} entries, data.mdb {size} bytes, sha256 {digest.hexdigest()[:16]}'
    if osp.isdir(path):
        names = sorted(os.listdir(path))
        for name in names:
            _sha256_update(digest, name.encode())
            _sha256_update(digest, str(osp.getsize(osp.join(path, name))).encode())
        return f'folder of {len(names)} files, sha256 {digest.hexdigest()[:16]}'
    if osp.isfile(path):
        with open(path, 'rb') as f:
            _sha256_update(digest, f.read())
        return f'file of {osp.getsize(path)} bytes, sha256 {digest.hexdigest()[:16]}'
    return 'missing'


def data_fingerprint(dataset_opt, root='.'):
    """What makes the samples of a train dataset (``datasets.train``): every option but the loader's (``LOADER_KEYS``
    and names), flattened to ``{'datasets.train.tasks[0].noise_sigma': 25, ...}``, and for every data source
    (``dataroot*``, ``*_file``, ``gt_key_map``) its :func:`source_identity` under ``'<key> (content)'``. Relative
    paths are read from ``root``, as training reads them."""
    flat = {}

    def walk(value, key, top=False):
        if isinstance(value, dict):
            for k, v in value.items():
                if k == 'name' or (top and k in LOADER_KEYS):
                    continue
                walk(v, f'{key}.{k}')
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
            for i, v in enumerate(value):
                walk(v, f'{key}[{i}]')
        else:
            flat[key] = list(value) if isinstance(value, (list, tuple)) else value
            if _is_source_key(key.rsplit('.', 1)[-1]) and isinstance(value, str):
                flat[f'{key} (content)'] = source_identity(value if osp.isabs(value) else osp.join(root, value))

    walk(dataset_opt, 'datasets.train', top=True)
    return flat


def run_record(opt, batch_size, samples):
    """What the position of a training state means, as far as a resume may not change it: the loader's batch, the
    world size, the number of samples and the enlarge ratio, the seed of the samples (``manual_seed``) and the data
    (:func:`data_fingerprint`). Kept in the state's ``run`` record (``training_state``) and compared on resume
    (:func:`check_resume_data`)."""
    dataset_opt = opt['datasets']['train']
    return {'batch_size': batch_size, 'world_size': opt['world_size'], 'samples': samples,
            'dataset_enlarge_ratio': dataset_opt.get('dataset_enlarge_ratio', 1), 'manual_seed': opt['manual_seed'],
            'data': data_fingerprint(dataset_opt, opt.get('root_path', '.'))}


def resume_seed(opt, resume_state, drawn):
    """With ``manual_seed: null`` (``drawn``: the seed was drawn at this start), the seed the resumed run drew at its
    own start (kept in the state's ``run`` record) replaces this start's, and the random generators are seeded with
    it as BasicSR seeds them (plus the rank); before the loaders and the model are built. Returns the notice to log,
    or None (a given seed, the same seed, or a state without the record)."""
    saved = (resume_state.get('run') or {}).get('manual_seed')
    if not drawn or saved is None or saved == opt['manual_seed']:
        return None
    from basicsr.utils import set_random_seed
    drawn_now, opt['manual_seed'] = opt['manual_seed'], saved
    set_random_seed(saved + opt['rank'])
    return (f'manual_seed: null: resuming with the seed {saved} that the run drew at its start (this start drew '
            f'{drawn_now}), so its samples continue as they were')


_UNSET = object()


def _show(value):
    return '(unset)' if value is _UNSET else value


def check_resume_data(saved, current, opt, logger):
    """The batch and the data of a resumed run must be those it was saved with (``saved``: the state's ``run``
    record; ``current``: this run's, :func:`run_record`): otherwise the saved position in the epoch means other
    samples. An error naming every key that changed, unless ``path.force_resume: true``: then each change is logged.
    What an older state's record lacks is not compared."""
    if not saved:
        return
    changed = [f'{key} {saved[key]} -> {value}' for key, value in current.items()
               if key != 'data' and key in saved and saved[key] != value]
    if 'data' in saved and 'data' in current:
        old, new = saved['data'], current['data']
        changed += [f'{key} {_show(old.get(key, _UNSET))} -> {_show(new.get(key, _UNSET))}'
                    for key in list(old) + [k for k in new if k not in old]
                    if old.get(key, _UNSET) != new.get(key, _UNSET)]
    if not changed:
        return
    message = (f'resuming {opt["name"]} with another batch or data than it was saved with ({", ".join(changed)}): '
               'the saved position in the epoch would point at other samples')
    if not opt['path'].get('force_resume'):
        raise ValueError(f'{message}. Restore the settings, start a new run (path.pretrain_network_g), or resume '
                         'anyway with --force_yml path:force_resume=true.')
    logger.warning(f'{message}; resuming anyway (path.force_resume).')
    for change in changed:
        logger.warning(f'path.force_resume: resuming with the changed {change}')


def training_state(model, epoch, current_iter):
    """The training state of ``model`` (an AllInOneModel) at ``current_iter``: BasicSR's optimizers and schedulers,
    every rank's RNG states, the GradScaler (``train.amp: fp16``), the non-finite streak, and what the position
    means (the schedule and the optimizer's type and settings, which a resume may change, the type excepted, and the
    batch, seed and data, which it may not: ``run_record``). A collective when distributed (the RNG states are
    gathered): every rank calls it; None on ranks other than 0."""
    rng = gather_rng_states(model.opt)
    if model.opt['rank'] != 0:
        return None
    train_opt = model.opt['train']
    return {
        'epoch': epoch,
        'iter': current_iter,
        'optimizers': [o.state_dict() for o in model.optimizers],
        'schedulers': [s.state_dict() for s in model.schedulers],
        'rng': rng,
        'nonfinite_streak': model.guard.streak,
        'scaler': model.precision.state_dict(),
        'run': dict(getattr(model, 'run_info', {}), total_iter=train_opt['total_iter'],
                    warmup_iter=train_opt.get('warmup_iter', -1), scheduler=dict(train_opt['scheduler']),
                    optim_g={'type': type(model.optimizers[0]).__name__}),
    }
