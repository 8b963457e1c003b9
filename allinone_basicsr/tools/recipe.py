"""What a training option file will do, printed before anyone books GPUs.

    python -m allinone_basicsr.tools.recipe options/train_promptir.yml [--world-size N] [--root DIR] [--json]
    allinone-recipe options/train_*.yml          (console script; several files, one report each)

The report gives the world size × batch per GPU = effective batch, the patch size, the samples of every task per
epoch (repeats applied) and the share of every degradation class, the iterations per epoch exactly as our training
loop counts them, the total / warm-up / cosine-end lengths in iterations and epochs, the learning rate at the start,
at the end of the warm-up and at the end, the optimizer, the losses with their weights, EMA, gradient clipping, the
validation sets and frequency, and the checkpoint frequency. Nothing is trained, built or decoded: the learning rates
come from the schedulers' closed forms, and the image counts from the LMDBs' ``meta_info.txt`` (or the image
folders) when the data is on disk, otherwise from the sizes of the public datasets that ``datasets_prep/`` makes.
An inconsistent file fails with a message naming the option key (exit code 1).
"""
import argparse
import inspect
import json
import math
import posixpath
import sys
from dataclasses import dataclass, field
from os import path as osp

from allinone_basicsr.archs.arch_util import missing_task_logits
from allinone_basicsr.data.mixed_degradation_dataset import DEFAULT_DEGRADATION_CLASSES
from allinone_basicsr.data.sources import list_source
from allinone_basicsr.models.optimization import LearningRateCurve, check_schedule  # noqa: F401 (re-exported)
from allinone_basicsr.tools.common import run
from allinone_basicsr.tools.protocols import load_protocols, network_options, protocol_mismatches
from allinone_basicsr.tools.recipe_format import format_report, report_dict
from allinone_basicsr.utils.option_keys import check_keys
from allinone_basicsr.utils.options import OptionFileError, read_yaml

from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY

# Image counts of the public datasets as datasets_prep/prepare_3task.py and prepare_5task.py write them, keyed by the
# relative paths the shipped option files use (an LMDB, or a key list given as a task's meta_info_file).
PUBLIC_SIZES = {
    'datasets/train/denoise_gt.lmdb': 5144,  # BSD400 (400) + WED (4,744)
    'datasets/train/denoise_gt.lmdb/bsd400_keys.txt': 400,  # BSD400 alone (PromptDSANet's protocol)
    'datasets/train/rain_lq.lmdb': 200,  # Rain100L train
    'datasets/train/rain_gt.lmdb': 200,
    'datasets/train/haze_lq.lmdb': 72135,  # RESIDE OTS hazy images (the GT LMDB stores each clean photo once)
    'datasets/train/haze_lq.lmdb/ots800_keys.txt': 800,  # 800 evenly spaced OTS pairs (PromptDSANet's protocol)
    'datasets/train/gopro_lq.lmdb': 16824,  # 2,103 GoPro train frames × 8 crops of 512 with step 256
    'datasets/train/gopro_gt.lmdb': 16824,
    'datasets/train/lol_lq.lmdb': 485,  # LOL-v1 our485
    'datasets/train/lol_gt.lmdb': 485,
    'datasets/test/bsd68.lmdb': 68,
    'datasets/test/rain100l_lq.lmdb': 100,
    'datasets/test/rain100l_gt.lmdb': 100,
    'datasets/test/sots_outdoor_lq.lmdb': 500,
    'datasets/test/sots_outdoor_gt.lmdb': 500,
    'datasets/test/gopro_lq.lmdb': 1111,  # full 1280×720 frames
    'datasets/test/gopro_gt.lmdb': 1111,
    'datasets/test/lol_lq.lmdb': 15,  # LOL-v1 eval15
    'datasets/test/lol_gt.lmdb': 15,
}
DISK, PUBLIC, UNKNOWN = 'disk', 'public size', 'unknown'


class RecipeError(ValueError):
    """An option file that would not train as it says: the message starts with the option key."""


@dataclass
class TaskSamples:
    """One training task: its images (counted from ``source``: disk or the public size) and samples per epoch."""
    name: str
    degradation: str
    images: int
    source: str
    counted: str
    repeat: int
    samples: int


@dataclass
class ValSet:
    """One validation set of the option file (``images`` is None when neither on disk nor a known public set)."""
    key: str
    name: str
    degradation: str
    noise_sigma: float
    crop_to_multiple: int
    images: int
    source: str


@dataclass
class Recipe:
    """The numbers of one training option file (``recipe_report`` makes it, ``format_report`` prints it)."""
    option_file: str
    name: str
    world_size: int
    world_size_from: str
    batch_size_per_gpu: int
    effective_batch: int
    patch: int
    degradation_classes: list
    tasks: list
    class_samples: dict
    samples_per_epoch: int
    dataset_enlarge_ratio: float
    samples_per_rank: int
    iters_per_epoch: int
    total_iter: int
    total_epochs: float
    warmup_iter: int
    warmup_key: str
    warmup_epochs: float
    cosine_end_iter: int
    cosine_end_key: str
    cosine_end_epochs: float
    scheduler: dict
    lr_start: float
    lr_warmup_end: float
    lr_end: float
    optimizer: dict
    losses: dict
    ema_decay: float
    grad_clip: object
    teacher_forcing_iter: int
    find_unused_parameters: bool
    val_sets: list
    val_freq: int
    checkpoint_freq: int
    notes: list = field(default_factory=list)
    network: dict = field(default_factory=dict)
    augment: list = field(default_factory=list)  # the crops' random transforms: hflip; vflip, rot90 (use_rot)

    @property
    def class_shares(self):
        """{class: share of the epoch's samples} in ``degradation_classes`` order."""
        total = sum(self.class_samples.values())
        return {c: n / total for c, n in self.class_samples.items()}

    def epochs(self, iterations):
        """Iterations -> epochs of this recipe (None stays None)."""
        return None if iterations is None else iterations / self.iters_per_epoch


def load_options(option_file):
    """Read an option file as training does (``utils.options.read_yaml``: ``!!float 2e4`` and ``~`` work, no Python
    objects) and check its keys as training does (``utils.option_keys.check_keys``); a missing, unreadable, empty
    or non-mapping file, or an unknown key, is a RecipeError."""
    if not osp.isfile(option_file):
        raise RecipeError(f'{option_file}: no such option file')
    try:
        opt = read_yaml(option_file, mapping=True)
        check_keys(opt)
    except (OptionFileError, ValueError) as err:
        raise RecipeError(str(err)) from None
    return opt


def iterations_per_epoch(num_samples, world_size, batch_size_per_gpu, dataset_enlarge_ratio=1):
    """Iterations of one epoch of our training loop.

    BasicSR's ``EnlargedSampler`` gives every rank ``ceil(num_samples * ratio / world_size)`` samples (padding the
    last ranks with repeats) and the train loader drops the last incomplete batch, so an epoch is
    ``ceil(num_samples * ratio / world_size) // batch_size_per_gpu`` iterations (142,431 samples on 4 ranks at
    batch 8: 4,451, not 142,431 // 32 = 4,450).

    Args:
        num_samples (int): Length of the training set (repeats applied).
        world_size (int): Number of training processes (ranks).
        batch_size_per_gpu (int): ``datasets.train.batch_size_per_gpu``.
        dataset_enlarge_ratio (int | float): ``datasets.train.dataset_enlarge_ratio``. Default: 1.

    Returns:
        int: Iterations per epoch (0 when a rank gets fewer samples than one batch).
    """
    return math.ceil(num_samples * dataset_enlarge_ratio / world_size) // batch_size_per_gpu


def _public_key(path):
    return posixpath.normpath(str(path).replace('\\', '/')) if path else None


def _resolve(root, path):
    return path if osp.isabs(path) else osp.join(root, path)


def count_images(root, data_path, meta_info_file, where):
    """Images of one source without decoding any: ``(count, source, what was counted)``.

    On disk (``root/data_path`` exists): the keys of the LMDB's ``meta_info.txt`` or of ``meta_info_file``, or the
    image files of a folder, read as the datasets read them. Otherwise the public dataset's size for the standard
    relative path (``PUBLIC_SIZES``: the key list if one is given, else the LMDB); else ``(None, 'unknown', path)``.
    """
    full = _resolve(root, data_path)
    if osp.isdir(full):
        try:
            _, entries = list_source(full, where, _resolve(root, meta_info_file) if meta_info_file else None)
        except (OSError, ValueError) as err:
            raise RecipeError(str(err)) from None
        return len(entries), DISK, meta_info_file or data_path
    counted = meta_info_file or data_path
    size = PUBLIC_SIZES.get(_public_key(counted))
    return (size, PUBLIC, counted) if size is not None else (None, UNKNOWN, counted)


def count_task(root, task, where):
    """Images of one ``MixedDegradationDataset`` task: the LQ side if it has one (``meta_info_file`` applies to it),
    else the GT source (``meta_info_file`` applies unless a ``gt_key_map`` maps LQ keys)."""
    meta = task.get('meta_info_file')
    if task.get('dataroot_lq'):
        key, data_path = 'dataroot_lq', task['dataroot_lq']
    else:
        key, data_path = 'dataroot_gt', task.get('dataroot_gt')
        meta = None if task.get('gt_key_map') else meta
    if not data_path:
        raise RecipeError(f'{where}.dataroot_gt: missing')
    images, source, counted = count_images(root, data_path, meta, f'{where}.{key}')
    if images is None:
        raise RecipeError(f"{where}.{key} (task '{task.get('name', '?')}'): no data at "
                          f'{osp.normpath(_resolve(root, data_path))} and no public dataset size known for {counted}; '
                          'prepare the data (datasets_prep/) or fix the path')
    return images, source, counted


def _int_option(value, key):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f'{key}: expected a number, got {value!r}') from None
    if number != int(number):
        raise RecipeError(f'{key}: expected a whole number, got {value!r}')
    return int(number)


def _world_size(opt, world_size):
    if world_size is not None:
        if world_size < 1:
            raise RecipeError(f'--world-size: expected >= 1, got {world_size}')
        return int(world_size), '--world-size'
    num_gpu = opt.get('num_gpu', 1)
    if num_gpu == 'auto':
        raise RecipeError("num_gpu: 'auto' (every visible GPU): give the number of processes with --world-size N")
    num_gpu = _int_option(num_gpu, 'num_gpu')
    return max(1, num_gpu), 'num_gpu'


def _losses(train_opt):
    """{option key: {type, loss_weight}} of every ``train.*_opt`` (an unset weight is the loss class's default)."""
    losses = {}
    for key, loss_opt in train_opt.items():
        if not key.endswith('_opt') or not isinstance(loss_opt, dict):
            continue
        loss_type = loss_opt.get('type')
        weight = loss_opt.get('loss_weight')
        if weight is None and loss_type in LOSS_REGISTRY:
            default = inspect.signature(LOSS_REGISTRY.get(loss_type)).parameters.get('loss_weight')
            weight = None if default is None or default.default is inspect.Parameter.empty else default.default
        losses[key] = {'type': loss_type, 'loss_weight': None if weight is None else float(weight)}
    return losses


def _training_tasks(train_set, root):
    """(degradation classes, [TaskSamples]) of ``datasets.train``; checks every task's class and every class."""
    where = 'datasets.train'
    classes = list(train_set.get('degradation_classes') or DEFAULT_DEGRADATION_CLASSES)
    tasks = []
    for i, task in enumerate(train_set.get('tasks') or []):
        tw = f'{where}.tasks[{i}]'
        name = str(task.get('name', f'task{i}'))
        if task.get('degradation') not in classes:
            raise RecipeError(f"{tw}.degradation: {task.get('degradation')!r} (task '{name}') is not one of "
                              f'{where}.degradation_classes {classes}')
        repeat = task.get('repeat', 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise RecipeError(f'{tw}.repeat: expected an integer >= 1, got {repeat!r}')
        images, source, counted = count_task(root, task, tw)
        tasks.append(TaskSamples(name, task['degradation'], images, source, counted, repeat, images * repeat))
    if not tasks:
        raise RecipeError(f'{where}.tasks: expected a non-empty list of tasks')
    empty = [c for c in classes if not any(t.degradation == c for t in tasks)]
    if empty:
        raise RecipeError(f'{where}.degradation_classes: class(es) {empty} have no task (every class needs one, or '
                          'its index is never trained)')
    return classes, tasks


def _validation_sets(opt, classes, root):
    """[ValSet] of the ``datasets.val*`` entries; each class must be one of the training ``degradation_classes``."""
    val_sets = []
    for key, val in (opt.get('datasets') or {}).items():
        if key.split('_')[0] != 'val':
            continue
        if val.get('degradation') not in classes:
            raise RecipeError(f"datasets.{key}.degradation: {val.get('degradation')!r} (validation set "
                              f"'{val.get('name')}') is not one of datasets.train.degradation_classes {classes}")
        images, source = None, UNKNOWN
        if val.get('dataroot_gt'):
            images, source, _ = count_images(root, val['dataroot_gt'], val.get('meta_info_file'), f'datasets.{key}')
        val_sets.append(ValSet(key, val.get('name', key), val['degradation'], val.get('noise_sigma'),
                               val.get('crop_to_multiple'), images, source))
    return val_sets


def recipe_report(option_file, world_size=None, root=None, opt=None):
    """The numbers of a training option file (see the module docstring); raises ``RecipeError`` if inconsistent.

    Args:
        option_file (str): Path of the option file (only read when ``opt`` is None; named in the report).
        world_size (int | None): Number of training processes. Default: the file's ``num_gpu``.
        root (str | None): Folder the file's relative data paths are read from. Default: the working directory (as
            training reads them).
        opt (dict | None): The parsed options, to report on a modified copy. Default: read ``option_file``.

    Returns:
        Recipe: The report.
    """
    opt = load_options(option_file) if opt is None else opt
    root = root or '.'
    world, world_from = _world_size(opt, world_size)
    train_set = (opt.get('datasets') or {}).get('train')
    if not isinstance(train_set, dict):
        raise RecipeError('datasets.train: missing')
    if train_set.get('type') != 'MixedDegradationDataset':
        raise RecipeError(f"datasets.train.type: {train_set.get('type')!r}: the report reads the tasks of a "
                          'MixedDegradationDataset only')
    where = 'datasets.train'
    classes, tasks = _training_tasks(train_set, root)
    class_samples = {c: sum(t.samples for t in tasks if t.degradation == c) for c in classes}

    batch = _int_option(train_set.get('batch_size_per_gpu'), f'{where}.batch_size_per_gpu')
    ratio = train_set.get('dataset_enlarge_ratio', 1) or 1
    samples = sum(t.samples for t in tasks)
    per_rank = math.ceil(samples * ratio / world)
    iters = iterations_per_epoch(samples, world, batch, ratio)
    if iters == 0:
        raise RecipeError(f'{where}.batch_size_per_gpu: {batch} is more than the {per_rank:,} samples per rank '
                          f'({samples:,} samples on {world} ranks): not one batch per epoch')

    train_opt = opt.get('train') or {}
    if train_opt.get('total_iter') is None:
        raise RecipeError('train.total_iter: missing')
    total = _int_option(train_opt['total_iter'], 'train.total_iter')
    try:
        schedule = check_schedule(dict(train_opt, total_iter=total), strict=True)  # the one check train runs too
    except ValueError as err:
        raise RecipeError(str(err)) from None
    curve, warmup, warmup_key, end, end_key = (schedule.curve, schedule.warmup, schedule.warmup_key, schedule.end,
                                               schedule.end_key)

    notes = []
    if world > 1 and world_from == 'num_gpu':
        notes.append(f'world size {world} = num_gpu: one process per GPU (torchrun --nproc_per_node={world} ... '
                     '--launcher pytorch)')
    notes += schedule.notes
    losses = _losses(train_opt)
    arch_type = (opt.get('network_g') or {}).get('type')
    arch = ARCH_REGISTRY.get(arch_type) if arch_type in ARCH_REGISTRY else None
    network = network_options(opt.get('network_g') or {}, arch)
    missing = missing_task_logits(arch, network) if arch is not None and 'cls_opt' in losses else None
    if missing:
        notes.append(f'train.cls_opt is ignored in training: {arch_type} {missing}')
    switched_off = [name for name, (default, _, _) in (getattr(arch, 'arch_option_spec', None) or {}).items()
                    if default is True and network.get(name) is False]
    if switched_off:  # parts of the arch left out (ablations: DaAIR's controller, PromptDSANet's pim_conv, ...)
        notes.append(f"network_g: {arch_type} without {', '.join(switched_off)} (switched off)")

    val_sets = _validation_sets(opt, classes, root)
    val_opt = opt.get('val') or {}
    val_freq = _int_option(val_opt['val_freq'], 'val.val_freq') if val_opt.get('val_freq') is not None else None
    ckpt = (opt.get('logger') or {}).get('save_checkpoint_freq')
    ckpt = _int_option(ckpt, 'logger.save_checkpoint_freq') if ckpt is not None else None
    teacher = train_opt.get('teacher_forcing_iter')
    settings = curve.optimizer_settings
    optimizer = {'type': curve.optimizer_type, 'lr': curve.base_lr}
    optimizer.update({k: settings[k] for k in ('betas', 'weight_decay', 'momentum') if k in settings})
    if 'betas' in optimizer:
        optimizer['betas'] = [float(b) for b in optimizer['betas']]

    return Recipe(
        option_file=str(option_file),
        name=str(opt.get('name', '')),
        world_size=world,
        world_size_from=world_from,
        batch_size_per_gpu=batch,
        effective_batch=batch * world,
        patch=train_set.get('gt_size', 128),
        degradation_classes=classes,
        tasks=tasks,
        class_samples=class_samples,
        samples_per_epoch=math.ceil(samples * ratio),
        dataset_enlarge_ratio=ratio,
        samples_per_rank=per_rank,
        iters_per_epoch=iters,
        total_iter=total,
        total_epochs=total / iters,
        warmup_iter=warmup,
        warmup_key=warmup_key,
        warmup_epochs=warmup / iters,
        cosine_end_iter=end,
        cosine_end_key=end_key,
        cosine_end_epochs=None if end is None else end / iters,
        scheduler=dict(type=curve.scheduler_type, **curve.scheduler_args),
        lr_start=curve.at(1),
        lr_warmup_end=curve.at(warmup) if warmup > 0 else None,
        lr_end=curve.at(total),
        optimizer=optimizer,
        losses=losses,
        ema_decay=float(train_opt.get('ema_decay', 0) or 0),
        grad_clip=train_opt.get('grad_clip'),
        teacher_forcing_iter=None if teacher is None else _int_option(teacher, 'train.teacher_forcing_iter'),
        find_unused_parameters=bool(opt.get('find_unused_parameters', False)),
        val_sets=val_sets,
        val_freq=val_freq,
        checkpoint_freq=ckpt,
        notes=notes,
        network=network,
        augment=(['hflip'] if train_set.get('use_hflip', True) else [])
        + (['vflip', 'rot90'] if train_set.get('use_rot', True) else []))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='allinone-recipe',
        description='Print what training option files will do (batch, epochs, schedule, losses, data) and check '
        'them.')
    parser.add_argument('option_files', nargs='+', metavar='OPTION_FILE', help='options/train_*.yml')
    parser.add_argument('--world-size', type=int, default=None,
                        help='number of training processes (default: the file\'s num_gpu)')
    parser.add_argument('--root', default=None,
                        help='folder the data paths are relative to (default: the working directory, as training)')
    parser.add_argument('--json', action='store_true', help='print {option file: report} as JSON')
    args = parser.parse_args(argv)
    reports, failed = {}, 0
    protocols = load_protocols()
    for option_file in args.option_files:
        try:
            report = recipe_report(option_file, world_size=args.world_size, root=args.root)
        except RecipeError as err:
            message = str(err) if str(err).startswith(option_file) else f'{option_file}: {err}'
            print(f'error: {message}', file=sys.stderr)
            failed += 1
            continue
        row = protocols.get(osp.basename(option_file))
        if row is not None and args.world_size is None:
            mismatches = protocol_mismatches(report, row)
            report.notes.append(f"protocol table (protocols.yml, {row['method']} row): " + (
                'every number matches' if not mismatches else 'differs in ' + '; '.join(mismatches)))
        if args.json:
            reports[option_file] = report_dict(report)
        else:
            print(format_report(report) + ('\n' if len(args.option_files) > 1 else ''))
    if args.json:
        print(json.dumps(reports, indent=2))
    return 1 if failed else 0


def cli(argv=None):
    run(main, 'recipe', argv)


if __name__ == '__main__':
    cli()
