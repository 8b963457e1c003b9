"""The keys an option file may hold, section by section, and the check that refuses any other (:func:`check_keys`).

BasicSR and this plugin read options with ``opt.get(key)``, so a misspelt key (``trainn``, ``vall``,
``train.fft_op``, ``train.ema_decy``, ``train.grad_clipp``) is simply never read: the run goes on without FFT loss,
validation, EMA or clipping. Here every key must be one that something reads; an unknown key is an error naming
its key path with the closest valid key (``train.ema_decy: unknown key (did you mean train.ema_decay?)``), or the
valid keys when none is close.

The lists below are the ONE place to extend: a new option read from ``train`` goes into ``PLUGIN_KEYS['train']``
(and the type check of :mod:`.options`, if it has a type). ``BASICSR_KEYS`` are the keys BasicSR 1.4.2 itself reads
(its train / test pipelines, ``parse_options``, ``BaseModel`` and every model it registers), so stock BasicSR option
files keep working. Blocks whose keys are a class's constructor arguments are checked against that class:
losses (``train.*_opt``: the registered loss's ``__init__``), ``train.optim_g`` / ``optim_d`` (the torch optimizer's),
``train.scheduler`` (the scheduler's, as ``models/optimization.py`` looks them up) and ``val.metrics.<name>`` (the
registered metric function's, ``better`` added). Datasets and ``network_g`` check their own keys (the datasets, and
``arch_options.check_arch_kwargs``).

A ``model_type`` registered by neither BasicSR nor this plugin reads keys this module cannot know: for it the top
level, ``train`` and ``val`` are not checked (the other sections are: BasicSR's pipeline reads them).
"""
import difflib
import inspect

__all__ = ['BASICSR_KEYS', 'BUILT_BLOCKS', 'LOSS_BLOCKS', 'OPTIMIZER_BLOCKS', 'PLUGIN_KEYS', 'RUNTIME_KEYS',
           'check_keys', 'unknown_key_message']

# Keys BasicSR 1.4.2 reads (grep of basicsr/{train,test}.py, utils/{options,misc,logger}.py, models/*.py).
BASICSR_KEYS = {
    '': ('name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'network_g', 'network_d', 'path',
         'train', 'val', 'logger', 'dist_params', 'find_unused_parameters',
         # RealESRGANModel / RealESRNetModel: the on-the-fly degradations are top-level options
         'high_order_degradation', 'gt_size', 'queue_size', 'l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm', 'gt_usm',
         'resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range', 'poisson_scale_range',
         'gray_noise_prob', 'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2',
         'gaussian_noise_prob2', 'noise_range2', 'poisson_scale_range2', 'gray_noise_prob2', 'jpeg_range2'),
    'train': ('total_iter', 'warmup_iter', 'optim_g', 'optim_d', 'scheduler', 'ema_decay', 'pixel_opt',
              'perceptual_opt', 'gan_opt', 'ldl_opt', 'feature_matching_opt', 'net_d_iters', 'net_d_init_iters',
              # StyleGAN2Model
              'r1_reg_weight', 'path_reg_weight', 'net_g_reg_every', 'net_d_reg_every', 'mixing_prob',
              'path_batch_shrink',
              # video models (EDVR, BasicVSR)
              'tsa_iter', 'dcn_lr_mul', 'fix_flow', 'flow_lr_mul', 'lr_flow'),
    'val': ('val_freq', 'save_img', 'suffix', 'metrics', 'pbar', 'center_frame_only', 'flip_seq', 'num_val_samples'),
    'logger': ('print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'),
    'logger.wandb': ('project', 'resume_id'),
    'path': ('pretrain_network_g', 'strict_load_g', 'param_key_g', 'pretrain_network_d', 'strict_load_d',
             'param_key_d', 'resume_state', 'ignore_resume_networks'),
    'dist_params': ('backend', 'port'),
}

# Keys this plugin reads besides BasicSR's (train.py, models/, utils/resume.py).
PLUGIN_KEYS = {
    '': ('deterministic', 'lock_lease'),
    'dist_params': ('timeout',),
    'train': ('fft_opt', 'cls_opt', 'teacher_forcing_iter', 'max_nonfinite_steps', 'spike_factor', 'grad_clip', 'amp',
              'compile'),
    'train.grad_clip': ('max_norm', 'norm_type', 'error_if_nonfinite', 'foreach'),  # clip_grad_norm_'s arguments
    'val': ('clamp', 'input_metrics', 'amp', 'compile'),
    'path': ('force_resume',),
}

# Keys the programs add to the parsed options (BasicSR's parse_options, our train_pipeline): valid when present.
RUNTIME_KEYS = {
    '': ('dist', 'rank', 'world_size', 'auto_resume', 'is_train', 'root_path'),
    'path': ('experiments_root', 'models', 'training_states', 'log', 'visualization', 'results_root'),
}

LOSS_BLOCKS = ('pixel_opt', 'perceptual_opt', 'gan_opt', 'ldl_opt', 'feature_matching_opt', 'fft_opt', 'cls_opt')
OPTIMIZER_BLOCKS = ('optim_g', 'optim_d')
# Blocks built by class name (``{type: Name, <its arguments>}``): block -> (the lookup of the class by name, which
# raises a ValueError naming the valid ones; the constructor arguments the block does not give). The models register
# their lookups here when imported (``models/optimization.py``), as archs and losses register in BasicSR's registries.
BUILT_BLOCKS = {}
# what the models pass to a metric function besides its options (image metrics; the routing metric)
METRIC_DATA = ('img', 'img2', 'task_logits', 'degradation')


def valid_keys(section):
    """The keys the section (``''`` for the top level, ``'train'``, ``'logger.wandb'``, ...) may hold."""
    keys = []
    for table in (BASICSR_KEYS, PLUGIN_KEYS, RUNTIME_KEYS):
        keys += [k for k in table.get(section, ()) if k not in keys]
    return keys


def unknown_key_message(key, valid, where=''):
    """``<where>.<key>: unknown key (did you mean <where>.<close>?)`` (difflib's closest valid key), or the valid
    keys when none is close."""
    path = f'{where}.{key}' if where else str(key)
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1)
    if close:
        return f'{path}: unknown key (did you mean {where + "." if where else ""}{close[0]}?)'
    section = f'of {where}' if where else 'at the top level'
    return f'{path}: unknown key (valid keys {section}: {sorted(map(str, valid))})'


def _constructor_keys(function, skip):
    """The keyword options ``function`` accepts: a class's ``__init__`` arguments (None when it takes ``**kwargs``:
    it passes them on), a function's named arguments (its ``**kwargs`` are ignored: BasicSR's metrics)."""
    target = function.__init__ if inspect.isclass(function) else function
    params = inspect.signature(target).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) and inspect.isclass(function):
        return None
    return [name for name, p in params.items()
            if name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


class _Walk:
    def __init__(self):
        self.problems = []

    def section(self, values, where, valid):
        if not isinstance(values, dict):
            return  # a wrong type is the type check's error
        for key in values:
            if key not in valid:
                self.problems.append(unknown_key_message(key, valid, where))

    def registered(self, values, where, registry, what, skip, extra=()):
        """A block ``{type: <registered name>, <its constructor's arguments>}``."""
        if not isinstance(values, dict) or not isinstance(values.get('type'), str):
            return
        name = values['type']
        if name not in registry:
            close = difflib.get_close_matches(name, list(registry.keys()), n=1)
            hint = f'did you mean {close[0]}?' if close else f'registered: {sorted(registry.keys())}'
            self.problems.append(f'{where}.type: {name!r} is not a registered {what} ({hint})')
            return
        keys = _constructor_keys(registry.get(name), skip)
        if keys is not None:
            self.section(values, where, ['type'] + keys + list(extra))

    def built(self, values, where, lookup, skip):
        """A block ``{type: <class name>, <its constructor's arguments>}``, the class found by ``lookup`` (which
        raises a ValueError naming the valid ones)."""
        if not isinstance(values, dict) or not isinstance(values.get('type'), str):
            return
        try:
            cls = lookup(values['type'])
        except ValueError as err:  # optimization.py's messages say train.optim_g / train.scheduler
            self.problems.append(str(err).replace('train.optim_g.', f'{where}.'))
            return
        keys = _constructor_keys(cls, skip)
        if keys is not None:
            self.section(values, where, ['type'] + keys)


def _known_model(model_type):
    from basicsr.utils.registry import MODEL_REGISTRY
    if not isinstance(model_type, str) or model_type not in MODEL_REGISTRY:
        return True  # building the model reports it
    return MODEL_REGISTRY.get(model_type).__module__.split('.')[0] in ('basicsr', 'allinone_basicsr')


def check_keys(opt):
    """Every key of ``opt`` (an option file, or BasicSR's parsed options) must be one that BasicSR or this plugin
    reads (see the module docstring); ``datasets`` and ``network_g`` are left to their own checks.

    Raises:
        ValueError: One clause per unknown key (``; `` between them), each naming its key path and the closest
            valid key or the valid ones.
    """
    from basicsr.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY
    if not isinstance(opt, dict):
        return
    walk = _Walk()
    known_model = _known_model(opt.get('model_type'))
    if known_model:
        walk.section(opt, '', valid_keys(''))
    for section in ('path', 'logger', 'dist_params') + (('train', 'val') if known_model else ()):
        walk.section(opt.get(section), section, valid_keys(section))
    logger = opt.get('logger')
    if isinstance(logger, dict):
        walk.section(logger.get('wandb'), 'logger.wandb', valid_keys('logger.wandb'))
    train = opt.get('train') if known_model else None
    if isinstance(train, dict):
        if isinstance(train.get('grad_clip'), dict):
            walk.section(train['grad_clip'], 'train.grad_clip', valid_keys('train.grad_clip'))
        for key in LOSS_BLOCKS:
            walk.registered(train.get(key), f'train.{key}', LOSS_REGISTRY, 'loss', skip=('self',))
        for key, (lookup, skip) in BUILT_BLOCKS.items():
            walk.built(train.get(key), f'train.{key}', lookup, skip)
    val = opt.get('val') if known_model else None
    metrics = val.get('metrics') if isinstance(val, dict) else None
    if isinstance(metrics, dict):
        for name, metric in metrics.items():
            walk.registered(metric, f'val.metrics.{name}', METRIC_REGISTRY, 'metric', skip=METRIC_DATA,
                            extra=('better',))  # BaseModel reads it (higher / lower)
    if walk.problems:
        raise ValueError('; '.join(walk.problems))
