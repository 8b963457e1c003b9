"""Types of an option file, checked before anything is built.

BasicSR reads options where it uses them, so a wrong type surfaces late and far from the option file: ``width:
'sixteen'`` inside torch, ``total_iter: '20'`` at the first log line (minutes in), ``lr: 2e-3`` (YAML 1.1 reads a
number in exponent form without a dot as the *string* '2e-3') inside the optimizer, ``prefetch_mode: cuda`` without
CUDA as a driver error. :func:`check_options` validates every key the plugin reads and the BasicSR keys its
pipelines rely on, right after the options are parsed; an error names the key path (``train.optim_g.lr``), the
value, its type and what was expected.

Values are read by the converters of :mod:`.option_types` (numbers written as strings, integral floats).

Unknown keys are errors (:mod:`.option_keys`, run first: the closest valid key is suggested; datasets and archs
reject unknown keys of their own). :func:`check_option_file` is the check of the train / test entry points: its
errors are one :class:`OptionError` naming the file. :func:`check_training_state` checks the content of a training
state before resuming from it.
"""
import numbers
from collections import OrderedDict

import yaml

from .arch_options import check_arch_kwargs
from .option_keys import check_keys
from .option_types import OptionNotes, expectation, fail, to_bool, to_int, to_list, to_number, to_str

__all__ = ['COMPILE_KEYS', 'PRECISIONS', 'OptionError', 'OptionFileError', 'OptionFileLoader', 'SafeOrderedLoader',
           'check_option_file', 'check_options', 'check_training_state', 'load_options', 'not_a_mapping', 'plain',
           'read_yaml']


# ---------------------------------------------------------------------------------------------------- reading
class OptionError(ValueError):
    """An option file the programs refuse (its message names the file and the key): the train / test entry points
    print it as one line and exit with status 2."""


class OptionFileError(OptionError):
    """An option file that cannot be read as data: missing, not YAML, not a mapping, or asking for Python objects."""


class SafeOrderedLoader(yaml.SafeLoader):
    """BasicSR's option loader (mappings as ``OrderedDict``, so ``dict2str`` and the copied option file keep the
    file's order) that builds data only: a ``!!python/...`` tag (``!!python/object/apply:os.system [...]``) is an
    error naming the file and line, never a call. Binary content (not UTF-8 text, or control characters) is an
    :class:`OptionFileError` naming the file, not a decoding traceback."""

    def __init__(self, stream):
        try:
            super().__init__(stream)
        except (UnicodeDecodeError, yaml.reader.ReaderError) as err:
            self._binary(stream, err)

    def _binary(self, stream, err):
        name = getattr(stream, 'name', '<string>')
        raise OptionFileError(f'{name}: is not a YAML mapping (binary data, not YAML text: {err})') from None

    def get_single_data(self):
        try:
            return super().get_single_data()
        except (UnicodeDecodeError, yaml.reader.ReaderError) as err:
            self._binary(self, err)

    def construct_undefined(self, node):
        mark = node.start_mark
        raise OptionFileError(f'{mark.name} line {mark.line + 1}: the tag {node.tag!r} asks for a Python object; an '
                              'option file holds data only (numbers, strings, lists, mappings), so it is refused')


SafeOrderedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                  lambda loader, node: OrderedDict(loader.construct_pairs(node)))
SafeOrderedLoader.add_constructor(None, SafeOrderedLoader.construct_undefined)


def not_a_mapping(data):
    """Why ``data`` (a loaded YAML document) is no option file, or None when it is a mapping."""
    if data is None:
        return 'is empty (expected a YAML mapping: key: value lines)'
    if not isinstance(data, dict):
        return f'is not a YAML mapping (it holds a {type(data).__name__}; expected key: value lines)'
    return None


class OptionFileLoader(SafeOrderedLoader):
    """:class:`SafeOrderedLoader` for whole option files (``_compat`` gives it to BasicSR's ``parse_options``): an
    empty file or one that holds no mapping is an :class:`OptionFileError` naming the file, not a ``TypeError``
    inside BasicSR."""

    def get_single_data(self):
        data = super().get_single_data()
        reason = not_a_mapping(data)
        if reason:
            raise OptionFileError(f'{self.name}: {reason}')
        return data


def read_yaml(path, what='option file', mapping=False):
    """The data of a YAML file (:class:`SafeOrderedLoader`; a mapping with ``mapping``); an :class:`OptionFileError`
    names the file (and the line) when it is missing, empty (``mapping``), not a mapping (``mapping``), binary, not
    YAML or builds Python objects."""
    try:
        with open(path) as f:
            return yaml.load(f, Loader=OptionFileLoader if mapping else SafeOrderedLoader)
    except FileNotFoundError:
        raise OptionFileError(f'{what} {path}: no such file') from None
    except OSError as err:
        raise OptionFileError(f'{what} {path}: cannot read it ({err.strerror or err})') from None
    except yaml.YAMLError as err:
        raise OptionFileError(f'{what} {path}: not valid YAML ({err})') from None


def plain(value):
    """Options (OrderedDicts) -> plain dicts and lists, for ``yaml.safe_dump``."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def load_options(path, is_train=True, check=True, logger=None):
    """An option file as the tools read it: :func:`read_yaml` (a mapping, or an :class:`OptionFileError`), then
    :func:`check_options` unless ``check`` is False (types converted in place, errors naming the key)."""
    opt = read_yaml(path, mapping=True)
    if check:
        check_options(opt, logger=logger, is_train=is_train)
    return opt


def check_option_file(opt, path, is_train=True, logger=None):
    """:func:`check_options` of the options parsed from the file ``path``, its errors as one :class:`OptionError`
    that names the file (the train and test entry points)."""
    try:
        return check_options(opt, logger=logger, is_train=is_train)
    except (TypeError, ValueError) as err:
        raise OptionError(f'option file {path}: {err}') from None


# the values of train.amp / val.amp (models/precision.py; ~ is fp32)
PRECISIONS = ('bf16', 'fp16', 'fp32')
# torch.compile's keywords that a compile option (train.compile / val.compile) may give
COMPILE_KEYS = ('backend', 'mode', 'fullgraph', 'dynamic', 'options')


# ---------------------------------------------------------------------------------------------------- the walker
class _Section:
    """One dict of the options and its key path: ``check(key, function, required, **kwargs)`` replaces the value by
    the checked (converted) one."""

    def __init__(self, values, path, notes):
        self.values, self.path, self.notes = values, path, notes

    def key(self, key):
        return f'{self.path}.{key}' if self.path else str(key)

    def has(self, key):
        return key in self.values

    def check(self, key, function, required=False, **kwargs):
        if key not in self.values:
            if required:
                raise ValueError(f'{self.key(key)}: missing ({_describe_expected(function, kwargs)})')
            return None
        if function in (to_number, to_int):
            kwargs.setdefault('note', self.notes)
        value = function(self.values[key], self.key(key), **kwargs)
        if value is not self.values[key]:
            self.values[key] = value
        return value

    def section(self, key, required=False, null=True):
        """The sub-dict at ``key`` as a _Section, or None when absent (or null, if allowed)."""
        if key not in self.values or (null and self.values[key] is None):
            if required:
                raise ValueError(f'{self.key(key)}: missing (expected a mapping of options)')
            return None
        value = self.values[key]
        if not isinstance(value, dict):
            fail(self.key(key), value, 'a mapping of options' + (' or null' if null else ''))
        return _Section(value, self.key(key), self.notes)


def _describe_expected(function, kwargs):
    if kwargs.get('expected'):
        return f"expected {kwargs['expected']}"
    if function in (to_number, to_int):
        kind = 'an int' if function is to_int or kwargs.get('integer') else 'a number'
        return 'expected ' + expectation(kind, kwargs.get('minimum'), kwargs.get('maximum'), kwargs.get('above'),
                                         kwargs.get('below'))
    if function is to_bool:
        return 'expected a bool (true or false)'
    if function is to_str:
        return f"expected one of {list(kwargs['choices'])}" if kwargs.get('choices') else 'expected a string'
    return 'required'


def _int_list(minimum=None):
    return lambda v, k, note: to_list(v, k, lambda x, kx: to_int(x, kx, minimum=minimum, note=note),
                                      expected=f"a list of {expectation('ints', minimum)}")


def _number_list(minimum=None):
    return lambda v, k, note: to_list(v, k, lambda x, kx: to_number(x, kx, minimum=minimum, note=note),
                                      expected=f"a list of {expectation('numbers', minimum)}")


def _check_list(section, key, make, required=False):
    if section.has(key):
        section.values[key] = make(section.values[key], section.key(key), section.notes)
    elif required:
        raise ValueError(f'{section.key(key)}: missing')


def _check_top(top):
    name = top.check('name', to_str, required=True)
    if '/' in name or '\\' in name or name in ('', '.', '..'):
        raise ValueError(f'name: {name!r} is a path, not a name: the run writes to experiments/<name> (results/<name> '
                         'for tests), so a name holds no path separator and is not empty, "." or ".."')
    top.check('model_type', to_str, required=True)
    num_gpu = top.values.get('num_gpu')
    if num_gpu != 'auto':
        top.check('num_gpu', to_int, required=True, minimum=0, expected="an int >= 0 or 'auto'")
    top.check('manual_seed', to_int, minimum=0, maximum=2**32 - 1, null=True)
    top.check('scale', to_int, minimum=1)
    top.check('find_unused_parameters', to_bool)
    top.check('deterministic', to_bool)
    top.check('lock_lease', to_number, above=0)  # seconds (utils/experiment.py)
    dist_params = top.section('dist_params')
    if dist_params is not None:
        dist_params.check('timeout', to_number, above=0)  # seconds (utils/heartbeat.py)


def _num_gpu(opt):
    num_gpu = opt.get('num_gpu')
    if num_gpu == 'auto':
        import torch
        return torch.cuda.device_count()
    return num_gpu


def _check_dataset(data, key, opt, is_train):
    phase = data.values.get('phase') or str(key).split('_')[0]
    training = phase == 'train'
    data.check('name', to_str, required=True)
    data.check('type', to_str, required=True)
    data.check('phase', to_str)
    data.check('batch_size_per_gpu', to_int, required=training and is_train, minimum=1)
    data.check('num_worker_per_gpu', to_int, required=training and is_train, minimum=0)
    data.check('dataset_enlarge_ratio', to_number, above=0)
    data.check('num_prefetch_queue', to_int, minimum=1)
    data.check('gt_size', to_int, minimum=1)
    data.check('scale', to_int, minimum=1)
    for flag in ('use_hflip', 'use_rot', 'use_shuffle', 'persistent_workers', 'pin_memory'):
        data.check(flag, to_bool)
    if data.values.get('persistent_workers'):  # else torch's DataLoader: "persistent_workers option needs ..."
        if not training:
            raise ValueError(f"{data.key('persistent_workers')}: true needs loader workers, and BasicSR loads {phase} "
                             'sets without (num_workers 0): remove it or set it to false')
        if data.values.get('num_worker_per_gpu') == 0:
            raise ValueError(f"{data.key('persistent_workers')}: true needs loader workers, but "
                             f"{data.key('num_worker_per_gpu')} is 0: set persistent_workers: false or "
                             'num_worker_per_gpu > 0')
    mode = data.check('prefetch_mode', to_str, null=True, choices=('cpu', 'cuda'))
    if mode == 'cuda':
        import torch
        where = data.key('prefetch_mode')
        if not torch.cuda.is_available():
            raise ValueError(f"{where}: 'cuda' needs CUDA, and torch.cuda.is_available() is False on this machine: "
                             "use prefetch_mode: cpu (or ~)")
        if _num_gpu(opt) == 0:
            raise ValueError(f"{where}: 'cuda' needs num_gpu > 0 (num_gpu: 0 runs on the CPU): use prefetch_mode: "
                             "cpu (or ~), or set num_gpu")
        if training and data.values.get('pin_memory') is not True:
            raise ValueError(f"{where}: 'cuda' needs {data.key('pin_memory')}: true")
    for path_key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl'):
        data.check(path_key, to_str, null=True)
    data.check('degradation', to_str)
    _check_list(data, 'degradation_classes',
                lambda v, k, note: None if v is None else to_list(v, k, to_str, expected='a list of strings'))
    data.check('noise_sigma', to_number, minimum=0, null=True)
    data.check('crop_to_multiple', to_int, minimum=1, null=True)
    io_backend = data.section('io_backend')
    if io_backend is not None:
        io_backend.check('type', to_str)
    tasks = data.values.get('tasks')
    if isinstance(tasks, (list, tuple)):  # the dataset reports a missing or malformed list itself
        for i, task in enumerate(tasks):
            if isinstance(task, dict):
                section = _Section(task, data.key(f'tasks[{i}]'), data.notes)
                section.check('name', to_str)
                section.check('degradation', to_str)
                for path_key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'gt_key_map'):
                    section.check(path_key, to_str, null=True)
                section.check('noise_sigma', to_number, minimum=0, null=True)
                section.check('repeat', to_int, minimum=1)


def _check_network(net, notes):
    arch = net.check('type', to_str, required=True)
    from basicsr.utils.registry import ARCH_REGISTRY
    try:
        cls = ARCH_REGISTRY.get(arch)
    except KeyError:
        raise ValueError(f'{net.key("type")}: {arch!r} is not a registered arch; registered: '
                         f'{sorted(ARCH_REGISTRY.keys())}') from None
    if 'arch_option_spec' not in vars(cls):
        return  # not decorated with check_arch_options (BasicSR's own archs): nothing describes its options
    options = {k: v for k, v in net.values.items() if k != 'type'}
    checked = check_arch_kwargs(cls, options, prefix=net.path, note=notes)
    for k, v in checked.items():
        if v is not net.values[k]:
            net.values[k] = v


# numeric fields of the schedulers (BasicSR's, ours, torch's): key -> (check, kwargs)
_SCHEDULER_INT_LISTS = {'periods': 1, 'milestones': 0, 'restarts': 0}
_SCHEDULER_NUMBER_LISTS = {'restart_weights': 0}
_SCHEDULER_INTS = {'warmup_iter': 0, 'max_iter': 1, 'T_max': 1, 'T_0': 1, 'T_mult': 1, 'step_size': 1,
                   'total_iters': 0, 'last_epoch': -1}
_SCHEDULER_NUMBERS = {'eta_min': dict(minimum=0), 'warmup_start_lr': dict(minimum=0), 'gamma': dict(above=0),
                      'factor': dict(above=0), 'start_factor': dict(above=0), 'end_factor': dict(minimum=0)}


def _check_train(train):
    train.check('total_iter', to_int, required=True, minimum=1)
    train.check('warmup_iter', to_int)
    optim = train.section('optim_g', required=True, null=False)
    optim.check('type', to_str, required=True)
    optim.check('lr', to_number, required=True, above=0)
    optim.check('weight_decay', to_number, minimum=0)
    optim.check('eps', to_number, above=0)
    optim.check('momentum', to_number, minimum=0)
    _check_list(optim, 'betas', lambda v, k, note: to_list(
        v, k, lambda x, kx: to_number(x, kx, minimum=0, below=1, note=note), length=2,
        expected='a list of 2 numbers >= 0 and < 1'))
    scheduler = train.section('scheduler', required=True, null=False)
    scheduler.check('type', to_str, required=True)
    for key, minimum in _SCHEDULER_INT_LISTS.items():
        _check_list(scheduler, key, _int_list(minimum))
    for key, minimum in _SCHEDULER_NUMBER_LISTS.items():
        _check_list(scheduler, key, _number_list(minimum))
    for key, minimum in _SCHEDULER_INTS.items():
        scheduler.check(key, to_int, minimum=minimum)
    for key, bounds in _SCHEDULER_NUMBERS.items():
        scheduler.check(key, to_number, **bounds)
    periods, weights = scheduler.values.get('periods'), scheduler.values.get('restart_weights')
    if isinstance(periods, list) and isinstance(weights, list) and len(periods) != len(weights):
        raise ValueError(f'{scheduler.key("restart_weights")}: {weights} needs one weight per period '
                         f'({scheduler.key("periods")}: {periods})')
    for key in list(train.values):
        if str(key).endswith('_opt'):
            loss = train.section(key)
            if loss is not None:
                loss.check('type', to_str, required=True)
                loss.check('loss_weight', to_number, minimum=0)
                loss.check('reduction', to_str)
    train.check('ema_decay', to_number, minimum=0, below=1)
    clip = train.values.get('grad_clip')
    if isinstance(clip, dict):
        clip = train.section('grad_clip')
        clip.check('max_norm', to_number, required=True, above=0)
        clip.check('norm_type', to_number, above=0, allow_inf=True)
        clip.check('error_if_nonfinite', to_bool)
    else:
        train.check('grad_clip', to_number, above=0, null=True,
                    expected='a number > 0, {max_norm, norm_type} or null')
    train.check('teacher_forcing_iter', to_int, minimum=0)
    train.check('max_nonfinite_steps', to_int, minimum=1)
    train.check('spike_factor', to_number, above=1, null=True)  # models/loss_guard.py
    _check_precision(train)


def _check_precision(section):
    """``amp`` (bf16 | fp16 | ~) and ``compile`` (bool) of ``train`` / ``val`` (models/precision.py)."""
    section.check('amp', to_str, null=True, choices=PRECISIONS)
    compile_opt = section.values.get('compile')
    if isinstance(compile_opt, dict):
        unknown = sorted(set(compile_opt) - set(COMPILE_KEYS))
        if unknown:
            raise ValueError(f'{section.key("compile")}: unknown torch.compile keyword(s) {unknown}; valid: '
                             f'{list(COMPILE_KEYS)}')
        keywords = section.section('compile')
        for key in ('backend', 'mode'):
            keywords.check(key, to_str, null=True)
        for key in ('fullgraph', 'dynamic'):
            keywords.check(key, to_bool, null=True)
    else:
        section.check('compile', to_bool, expected='a bool (true or false) or a mapping of torch.compile keywords')


def _check_val(val, is_train):
    val.check('val_freq', to_int, required=is_train, minimum=1)
    val.check('save_img', to_bool, required=True)
    for flag in ('pbar', 'clamp', 'input_metrics'):
        val.check(flag, to_bool)
    _check_precision(val)
    metrics = val.section('metrics')
    if metrics is None:
        return
    for name in list(metrics.values):
        metric = metrics.section(name, null=False)
        metric.check('type', to_str, required=True)
        metric.check('crop_border', to_int, minimum=0)
        metric.check('test_y_channel', to_bool)
        metric.check('data_range', to_number, above=0)
        metric.check('better', to_str, choices=('higher', 'lower'))
        metric.check('input_order', to_str, choices=('HWC', 'CHW'))


def _check_logger(logger, is_train):
    logger.check('print_freq', to_int, required=is_train, minimum=1)
    logger.check('save_checkpoint_freq', to_int, required=is_train, minimum=1)
    logger.check('use_tb_logger', to_bool, required=is_train)


def _check_path(path):
    for key in list(path.values):
        name = str(key)
        if name.startswith('pretrain_network_') or name == 'resume_state':
            path.check(key, to_str, null=True)
        elif name.startswith('strict_load_'):
            path.check(key, to_bool)
        elif name.startswith('param_key_'):
            path.check(key, to_str, null=True)


def check_options(opt, logger=None, is_train=True):
    """Check (and where YAML wrote a number as a string, convert in place) the option types.

    Call it once the options are parsed, before datasets and the model are built. Checked: the top level
    (``name``, ``model_type``, ``num_gpu``, ``manual_seed``, ``scale``), every dataset (BasicSR's loader keys,
    ``prefetch_mode`` against the machine, the plugin datasets' numbers), ``network_g`` against the arch's
    defaults (plugin archs: :func:`allinone_basicsr.archs.arch_util.check_arch_kwargs`), ``path``, ``train``
    (iterations, optimizer, scheduler, losses, EMA, clipping, the plugin's keys), ``val`` and ``logger``.

    Args:
        opt (dict): Options (BasicSR's parsed options, or a loaded YAML file).
        logger (logging.Logger | None): Conversions are reported with ``logger.warning``; without a logger with
            ``warnings.warn`` (:class:`OptionConversionWarning`). Each key is reported once.
        is_train (bool): Training options (``train``, ``logger`` and ``val.val_freq`` are required); False for
            test option files (``val.save_img`` required, ``train`` / ``logger`` checked if present).

    Returns:
        list[str]: The conversion messages (also reported as above), e.g. to repeat them in a log file.

    Raises:
        TypeError: A value of the wrong type. ValueError: A value out of range, a missing required key, or
        ``prefetch_mode: cuda`` on a machine without CUDA or with ``num_gpu: 0``. The message names the key path,
        the value, its type and the expected type.
    """
    if not isinstance(opt, dict):
        raise TypeError(f'options: expected a mapping, got {type(opt).__name__}')
    check_keys(opt)  # first: a misspelt section (trainn) is named as such, not as a missing train
    notes = OptionNotes(logger)
    top = _Section(opt, '', notes)
    _check_top(top)
    datasets = top.section('datasets', required=True, null=False)
    for key in list(datasets.values):
        _check_dataset(datasets.section(key, null=False), key, opt, is_train)
    _check_network(top.section('network_g', required=True, null=False), notes)
    path = top.section('path', required=True, null=False)
    _check_path(path)
    train = top.section('train', required=is_train)
    if train is not None:
        _check_train(train)
    val = top.section('val', required=not is_train)
    if val is not None:
        _check_val(val, is_train)
    logger_opt = top.section('logger', required=is_train)
    if logger_opt is not None:
        _check_logger(logger_opt, is_train)
    return notes.messages


# ---------------------------------------------------------------------------------------------------- resume
TRAINING_STATE_KEYS = ('iter', 'epoch', 'optimizers', 'schedulers')


def check_training_state(state, path):
    """Check a loaded training state (``training_states/<iter>.state``) before resuming from it.

    Args:
        state: What ``torch.load`` returned.
        path (str): The file, named in the error.

    Returns:
        dict: ``state``.

    Raises:
        ValueError: ``state`` is not a dict with ``iter`` and ``epoch`` (ints >= 0) and ``optimizers`` and
            ``schedulers`` (lists); the message names the file and what it holds instead.
    """
    where = f'training state {path}'
    if not isinstance(state, dict):
        raise ValueError(f'{where}: holds a {type(state).__name__}, not a training state (a dict with '
                         f'{list(TRAINING_STATE_KEYS)}, written by the training as training_states/<iter>.state)')
    missing = [key for key in TRAINING_STATE_KEYS if key not in state]
    if missing:
        found = sorted(map(str, state))
        hint = ''
        if any(key in state for key in ('params', 'params_ema', 'state_dict')):
            hint = ('; it looks like network weights (give such a file as path.pretrain_network_g, not as a '
                    'training state)')
        raise ValueError(f'{where}: not a training state: missing {missing} (keys found: {found[:20]}){hint}')
    for key in ('iter', 'epoch'):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f'{where}: {key!r} is {value!r} ({type(value).__name__}), expected an int >= 0')
    for key in ('optimizers', 'schedulers'):
        value = state[key]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'{where}: {key!r} is a {type(value).__name__}, expected a list of state dicts')
    return state
