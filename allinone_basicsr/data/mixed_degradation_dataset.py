"""All-in-one restoration datasets: a multi-task training set and a one-task val/test set.

Sources (``data/sources.py``): a path ending in ``.lmdb`` is an LMDB made by BasicSR's ``make_lmdb_from_imgs``
(keys from its ``meta_info.txt``, read through ``FileClient('lmdb')``); any other path is a folder of image files
(key = file stem). LQ and GT are paired by key. A task with ``noise_sigma`` and no ``dataroot_lq`` makes its LQ by
adding Gaussian noise to the GT (``degradations.add_gaussian_noise``): on the fly from numpy's global RNG for training
(seeded per sample by ``resume.SeededDataset``), from ``noise_rng(key, sigma)`` for val/test (identical in every
run).

Images are handled as uint8 RGB until the end and returned as float32 RGB CHW tensors in [0, 1]; 16-bit images are
reduced to 8 bits with a warning, given once per source (``image_io.to_bgr8``). Every LMDB is checked when it is
listed (``lmdb_check``): a truncated ``data.mdb`` is an error naming the option key, not a SIGBUS at the first read.

An LMDB entry is an encoded image (PNG, JPEG, ...: decoded whole) or a raw ``.npy`` array of the HxWx3 uint8 RGB
image (``prepare_3task.py --format raw``): read without decoding, as a view of the entry's bytes, so a training
sample copies only its crop. Both give the same pixels, so the same samples (tests/test_data/test_loader_samples.py).
"""
import bisect
import copy
import hashlib

import numpy as np
from torch.utils import data as data

from allinone_basicsr.utils.option_types import to_int, to_number

from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils.registry import DATASET_REGISTRY
from .degradations import add_gaussian_noise, noise_rng
from .sources import (SourceReader, center_crop_to_multiple, dataset_where, list_source, noisy_name, pair_sources,
                      read_gt_key_map, to_tensor)

DEFAULT_DEGRADATION_CLASSES = ('noise', 'rain', 'haze', 'blur', 'lowlight')


# Keys BasicSR itself reads from a dataset's options (loader, sampler, prefetcher, test/val pipelines).
BASICSR_DATASET_KEYS = ('name', 'type', 'phase', 'scale', 'io_backend', 'batch_size_per_gpu', 'num_worker_per_gpu',
                        'dataset_enlarge_ratio', 'prefetch_mode', 'pin_memory', 'persistent_workers', 'use_shuffle',
                        'num_prefetch_queue')
TASK_KEYS = ('name', 'degradation', 'dataroot_gt', 'dataroot_lq', 'noise_sigma', 'repeat', 'meta_info_file',
             'gt_key_map')


def check_option_keys(opt, own, where):
    """An unknown key (a typo such as ``gt_szie``) is an error that lists the valid ones."""
    valid = sorted(set(own) | set(BASICSR_DATASET_KEYS))
    unknown = sorted(set(opt) - set(valid))
    if unknown:
        raise ValueError(f'{where}: unknown option(s) {unknown}; valid: {valid}')


def _degradation_index(where, degradation, classes):
    """Class index of ``degradation``; ``where`` names the option, e.g. ``"datasets.train (...): tasks[0]"``."""
    if degradation is None:
        raise ValueError(f'{where}: degradation: missing, expected one of degradation_classes {list(classes)}')
    if degradation not in classes:
        raise ValueError(f'{where}: degradation {degradation!r} is not one of degradation_classes {list(classes)}')
    return list(classes).index(degradation)


def _check_sigma(where, sigma):
    """``where`` names the option, e.g. ``"datasets.train (...): tasks[0].noise_sigma"``; the option files' rule for
    it (``utils.option_types``: a number >= 0)."""
    return float(to_number(sigma, where, minimum=0))


class TaskSource:
    """One task's images: a GT source plus either an LQ source paired by key (optionally through a ``gt_key_map``)
    or a noise level, listed and checked once when built.

    Args:
        task (dict): ``dataroot_gt``, ``dataroot_lq`` or ``noise_sigma`` (exactly one), optional ``meta_info_file``
            and ``gt_key_map`` (see ``MixedDegradationDataset``).
        prefix (str): How error messages name the task's options, e.g. ``"datasets.train (name 'x'): tasks[0]."`` or
            ``"datasets.val (name 'y'): "`` (the option key follows).
        reader (SourceReader): Shared reader; the task's LMDBs are registered with it.
        owner (str): The task or dataset named in errors found when reading, e.g. ``"task 'rain'"``.

    ``keys``: the sample keys (LQ keys, or GT keys for a noise task), sorted. ``read(key)`` returns
    ``(img_lq, img_gt, lq_path, gt_path)``; for a noise task ``img_lq`` is None (the caller adds the noise, after any
    crop) and ``lq_path`` is the GT's with a ``_sigma<σ>`` suffix.
    """

    def __init__(self, task, prefix, reader, owner):
        self.reader, self.owner = reader, owner
        if not task.get('dataroot_gt'):
            raise ValueError(f'{prefix}dataroot_gt: missing')
        if bool(task.get('dataroot_lq')) == (task.get('noise_sigma') is not None):
            raise ValueError(f'{prefix}dataroot_lq, noise_sigma ({owner}): give either dataroot_lq or noise_sigma '
                             '(exactly one)')
        meta, key_map = task.get('meta_info_file'), task.get('gt_key_map')
        # with a gt_key_map, meta_info_file lists LQ keys; the GT source lists all of its own
        gt_lmdb, self.gt = list_source(task['dataroot_gt'], f'{prefix}dataroot_gt', None if key_map else meta)
        self.gt_client = reader.register(task['dataroot_gt'], gt_lmdb)
        self.lq, self.lq_client, self.sigma, self.gt_key = None, None, None, None
        if task.get('dataroot_lq'):
            lq_lmdb, self.lq = list_source(task['dataroot_lq'], f'{prefix}dataroot_lq', meta)
            if key_map:
                self.gt_key = read_gt_key_map(key_map, self.lq, self.gt, f'{prefix}gt_key_map')
            else:
                pair_sources(self.lq, self.gt, f'{prefix}dataroot_lq ({task["dataroot_lq"]})',
                             f'{prefix}dataroot_gt ({task["dataroot_gt"]})')
            self.lq_client = reader.register(task['dataroot_lq'], lq_lmdb)
        else:
            self.sigma = _check_sigma(f'{prefix}noise_sigma', task['noise_sigma'])
        self.keys = list(self.lq if self.lq is not None else self.gt)

    def fingerprint(self, extra=()):
        """What the images are, as ``sha256:<32 hex digits>``: SHA-256 over ``extra`` (options that change a sample,
        e.g. ``noise_sigma``), then per sample key in sorted order the key and the bytes of its GT and LQ records
        (the encoded files, or the LMDB values, as stored; each preceded by its length). Any image changed, added,
        removed or paired differently changes it; a copy of the same data elsewhere does not. Costs one read (no
        decoding) of every image."""
        digest = hashlib.sha256(repr(tuple(extra)).encode())
        for key in self.keys:
            sides = [('gt', self.gt[self.gt_key[key] if self.gt_key else key], self.gt_client)]
            if self.lq is not None:
                sides.append(('lq', self.lq[key], self.lq_client))
            digest.update(f'\0{key}'.encode())
            for side, path, client in sides:
                content = bytes(self.reader.read_bytes(path, client))
                digest.update(f'\0{side}{len(content)}\0'.encode())
                digest.update(content)
        return 'sha256:' + digest.hexdigest()[:32]

    def read(self, key):
        gt_path = self.gt[self.gt_key[key] if self.gt_key else key]
        img_gt = self.reader.read(gt_path, self.gt_client)
        if self.lq is None:
            return None, img_gt, noisy_name(gt_path, self.sigma), gt_path
        lq_path = self.lq[key]
        img_lq = self.reader.read(lq_path, self.lq_client)
        if img_lq.shape != img_gt.shape:
            raise ValueError(f'LQ {lq_path} {img_lq.shape[:2]} and GT {gt_path} {img_gt.shape[:2]} differ in size '
                             f'({self.owner})')
        return img_lq, img_gt, lq_path, gt_path


@DATASET_REGISTRY.register()
class MixedDegradationDataset(data.Dataset):
    """Training set mixing several restoration tasks (e.g. denoise σ15/25/50, derain, dehaze).

    Each task is a GT source plus either an LQ source (pairs matched by key) or a noise level (the LQ is the GT plus
    Gaussian noise, added on the fly after cropping). Every task's samples appear ``repeat`` times in the index.
    A sample is randomly cropped to ``gt_size`` and flipped / rotated (same transform for LQ and GT).

    Args:
        opt (dict): Config for train datasets (it is not modified). It contains the following keys:
            name (str): Dataset name (used in error messages).
            degradation_classes (list[str]): Degradation classes; the class index of a task is the position of its
                ``degradation`` here. Default: ['noise', 'rain', 'haze', 'blur', 'lowlight'].
            tasks (list[dict]): One dict per task with keys:
                name (str): Task name, returned as ``task``. Default: ``task<i>``.
                degradation (str): Degradation class name (required).
                dataroot_gt (str): GT source, LMDB (``*.lmdb``) or image folder (required).
                dataroot_lq (str): LQ source with the same keys. Give this or ``noise_sigma``.
                noise_sigma (float): Gaussian noise σ (0-255 scale) added to the GT to make the LQ.
                repeat (int): How many times the task's images appear in the index. Default: 1.
                meta_info_file (str): Optional list of images (first token per line) for both sources (for the
                    LQ source only with ``gt_key_map``). Default: the LMDB's meta_info.txt, or every image of the
                    folder.
                gt_key_map (str): Optional text file, ``lq_key gt_key`` per line, for LQ sources whose images
                    share GT images (RESIDE: several hazy versions of one clean photo, which
                    ``prepare_3task.py`` stores once). Default: LQ and GT hold the same keys.
            gt_size (int): Size of the square training patches. Default: 128.
            use_hflip (bool): Random horizontal flips. Default: True.
            use_rot (bool): Random vertical flips and transposes (rot90). Default: True.
            phase (str): Set by BasicSR ('train'); only used in error messages.

    Returns (per item):
        dict: ``lq``, ``gt`` (3xgt_sizexgt_size float32 RGB in [0, 1]), ``lq_path``, ``gt_path`` (LMDB key or file
        path; for noise tasks ``lq_path`` is the GT's with a ``_sigma<σ>`` suffix), ``degradation`` (int class
        index), ``task`` (task name).
    """

    def __init__(self, opt):
        super(MixedDegradationDataset, self).__init__()
        self.opt = copy.deepcopy(opt)
        where = dataset_where(opt, 'train')
        check_option_keys(opt, ('degradation_classes', 'tasks', 'gt_size', 'use_hflip', 'use_rot'), where)
        self.degradation_classes = list(opt.get('degradation_classes') or DEFAULT_DEGRADATION_CLASSES)
        self.gt_size = int(opt.get('gt_size', 128))
        self.use_hflip = bool(opt.get('use_hflip', True))
        self.use_rot = bool(opt.get('use_rot', True))
        tasks = opt.get('tasks')
        if not tasks or not isinstance(tasks, (list, tuple)):
            raise ValueError(f'{where}: tasks: expected a non-empty list of task dicts, got {tasks!r}')

        self.reader = SourceReader()
        self.tasks = []  # dicts: name, degradation (index), repeat, source (TaskSource), keys
        self.offsets = []  # first global index of each task
        total = 0
        for i, task in enumerate(tasks):
            tw = f'{where}: tasks[{i}]'
            if not isinstance(task, dict):
                raise ValueError(f'{tw}: expected a dict, got {task!r}')
            unknown = sorted(set(task) - set(TASK_KEYS))
            if unknown:
                raise ValueError(f'{tw}: unknown option(s) {unknown}; valid: {sorted(TASK_KEYS)}')
            name = str(task.get('name', f'task{i}'))
            label = _degradation_index(tw, task.get('degradation'), self.degradation_classes)
            repeat = task.get('repeat', 1)
            if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
                raise ValueError(f'{tw}.repeat: expected an integer >= 1, got {repeat!r}')
            source = TaskSource(task, f'{tw}.', self.reader, f"task '{name}'")
            entry = dict(name=name, degradation=label, repeat=repeat, source=source, keys=source.keys)
            self.tasks.append(entry)
            self.offsets.append(total)
            total += len(entry['keys']) * repeat
        self.length = total

    def __len__(self):
        return self.length

    def locate(self, index):
        """Global index -> (task dict, image key)."""
        if not 0 <= index < self.length:
            raise IndexError(f'index {index} out of range for {self.length} samples')
        t = bisect.bisect_right(self.offsets, index) - 1
        task = self.tasks[t]
        return task, task['keys'][(index - self.offsets[t]) % len(task['keys'])]

    def __getitem__(self, index):
        task, key = self.locate(index)
        source = task['source']
        img_lq, img_gt, lq_path, gt_path = source.read(key)
        if img_lq is None:
            img_lq = img_gt

        h, w = img_gt.shape[:2]
        if h < self.gt_size or w < self.gt_size:
            raise ValueError(f'image {gt_path} ({h}x{w}) is smaller than gt_size {self.gt_size} '
                             f"(task '{task['name']}'): remove it or lower gt_size")
        img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.gt_size, 1, gt_path)
        # own contiguous copies of the crops (augment flips in place; raw entries are read-only views)
        img_gt, img_lq = np.array(img_gt, order='C'), np.array(img_lq, order='C')
        if source.sigma is not None:
            img_lq = add_gaussian_noise(img_gt, source.sigma)  # numpy's global RNG (seeded per sample in training)
        img_gt, img_lq = augment([img_gt, img_lq], self.use_hflip, self.use_rot)

        return {
            'lq': to_tensor(img_lq),
            'gt': to_tensor(img_gt),
            'lq_path': lq_path,
            'gt_path': gt_path,
            'degradation': task['degradation'],
            'task': task['name'],
        }


@DATASET_REGISTRY.register()
class AllInOneTestDataset(data.Dataset):
    """Validation / test set of one task, deterministic: the same LQ images in every run, process and method.

    Args:
        opt (dict): Config for val/test datasets (it is not modified). It contains the following keys:
            name (str): Dataset name.
            degradation (str): Degradation class name (required).
            degradation_classes (list[str]): As in ``MixedDegradationDataset``.
                Default: ['noise', 'rain', 'haze', 'blur', 'lowlight'].
            task (str): Task name returned as ``task``. Default: ``name``.
            dataroot_gt (str): GT source, LMDB (``*.lmdb``) or image folder (required).
            dataroot_lq (str): LQ source with the same keys. Give this or ``noise_sigma``.
            noise_sigma (float): Gaussian noise σ (0-255 scale); the noise comes from ``noise_rng(key, σ)``.
            meta_info_file (str): Optional list of images (first token per line). Default: all.
            crop_to_multiple (int | None): Centre crop GT and LQ to multiples of this, before adding noise (the
                official BSD68 protocol uses 16). Default: None (no crop).
            phase (str): Set by BasicSR; only used in error messages.

    Returns (per item):
        dict: ``lq``, ``gt`` (3xHxW float32 RGB in [0, 1]), ``lq_path``, ``gt_path`` (LMDB key or file path; for
        noise ``lq_path`` gets a ``_sigma<σ>`` suffix, so its basename is unique per image), ``degradation`` (int
        class index), ``task``. Items are sorted by key.
    """

    def __init__(self, opt):
        super(AllInOneTestDataset, self).__init__()
        self.opt = copy.deepcopy(opt)
        where = dataset_where(opt, 'val')
        check_option_keys(opt, ('task', 'degradation', 'degradation_classes', 'dataroot_gt', 'dataroot_lq',
                                'noise_sigma', 'crop_to_multiple', 'meta_info_file'), where)
        self.degradation_classes = list(opt.get('degradation_classes') or DEFAULT_DEGRADATION_CLASSES)
        self.label = _degradation_index(where, opt.get('degradation'), self.degradation_classes)
        self.task = str(opt.get('task', opt.get('name', 'test')))
        # the option files' rule for it (utils.option_types), for sets built without the option check too
        self.crop_to_multiple = to_int(opt.get('crop_to_multiple'), f'{where}: crop_to_multiple', minimum=1, null=True)
        self.where = where
        self.reader = SourceReader()
        self.source = TaskSource(opt, f'{where}: ', self.reader, f"dataset '{opt.get('name')}'")
        self.keys = self.source.keys

    def __len__(self):
        return len(self.keys)

    def fingerprint(self):
        """The set's identity in test results (``metrics.csv``, checked by ``tools/compare``): ``TaskSource.
        fingerprint`` over every image, with ``noise_sigma`` and ``crop_to_multiple``; computed once per dataset."""
        if getattr(self, '_fingerprint', None) is None:
            self._fingerprint = self.source.fingerprint((('noise_sigma', self.source.sigma),
                                                         ('crop_to_multiple', self.crop_to_multiple)))
        return self._fingerprint

    def __getitem__(self, index):
        key = self.keys[index]
        img_lq, img_gt, lq_path, gt_path = self.source.read(key)
        if self.crop_to_multiple:
            for side, img in (('GT', img_gt), ('LQ', img_lq)):
                if img is not None and min(img.shape[:2]) < self.crop_to_multiple:
                    raise ValueError(f'{self.where}: crop_to_multiple {self.crop_to_multiple} is larger than the '
                                     f'{side} image {key!r} ({img.shape[0]}x{img.shape[1]}): the crop would leave '
                                     'nothing; lower crop_to_multiple (or ~ for no crop)')
            img_gt = center_crop_to_multiple(img_gt, self.crop_to_multiple)
            if img_lq is not None:
                img_lq = center_crop_to_multiple(img_lq, self.crop_to_multiple)
        if img_lq is None:
            img_lq = add_gaussian_noise(img_gt, self.source.sigma, noise_rng(key, self.source.sigma))
        return {
            'lq': to_tensor(img_lq),
            'gt': to_tensor(img_gt),
            'lq_path': lq_path,
            'gt_path': gt_path,
            'degradation': self.label,
            'task': self.task,
        }
