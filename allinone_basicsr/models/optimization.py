"""Optimizers and learning-rate schedules: lookup by the names the option files give (``train.optim_g.type``,
``train.scheduler.type``), the closed form of every schedule (:class:`LearningRateCurve`), the schedule's check against
``train.total_iter`` (:func:`check_schedule`), and the resume of a run whose option file changed its schedule or
optimizer settings. Used by ``AllInOneModel``, ``train`` and the recipe report, so all accept exactly the same names,
compute the same learning rates and refuse the same schedules."""
from copy import deepcopy
from dataclasses import dataclass, field

import torch

from allinone_basicsr.utils.option_keys import BUILT_BLOCKS, OPTIMIZER_BLOCKS

from basicsr.models import lr_scheduler as basicsr_lr_scheduler
from basicsr.utils import get_root_logger
from .lr_scheduler import LinearWarmupCosineLR

# resolved before torch.optim.lr_scheduler: BasicSR's schedules (MultiStepLR is BasicSR's name for its restartable
# MultiStepRestartLR) and ours
SCHEDULERS = {
    'MultiStepLR': basicsr_lr_scheduler.MultiStepRestartLR,
    'MultiStepRestartLR': basicsr_lr_scheduler.MultiStepRestartLR,
    'CosineAnnealingRestartLR': basicsr_lr_scheduler.CosineAnnealingRestartLR,
    'LinearWarmupCosineLR': LinearWarmupCosineLR,
}


def optimizer_class(name):
    """The ``torch.optim`` optimizer class called ``name``; a ValueError lists the valid names."""
    optim_cls = getattr(torch.optim, str(name), None)
    if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
        valid = sorted(n for n, c in vars(torch.optim).items()
                       if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and n != 'Optimizer')
        raise ValueError(f'train.optim_g.type {name!r} is not a torch.optim optimizer; valid: {valid}')
    return optim_cls


def scheduler_class(name):
    """The scheduler class called ``name``: BasicSR's or ours (``SCHEDULERS``), else any ``torch.optim.lr_scheduler``
    class (stepped once per iteration); a ValueError lists the valid names."""
    sched_cls = SCHEDULERS.get(name) or getattr(torch.optim.lr_scheduler, str(name), None)
    if not isinstance(sched_cls, type):
        valid = sorted(set(SCHEDULERS) | {
            n for n, c in vars(torch.optim.lr_scheduler).items()
            if isinstance(c, type) and issubclass(c, torch.optim.lr_scheduler.LRScheduler) and not n.startswith('_')
        })
        raise ValueError(f'train.scheduler.type {name!r} is unknown; valid: {valid}')
    return sched_cls


class LearningRateCurve:
    """Learning rate of any iteration of a training run, in closed form (no scheduler is stepped).

    The optimizer and scheduler are built as ``AllInOneModel`` builds them (on one dummy parameter), so unknown
    arguments fail here as they would in training. BasicSR steps the schedulers once per iteration from iteration 2
    (``BaseModel.update_learning_rate``), so iteration ``i`` trains with the scheduler's value at
    ``last_epoch = i - 1``; BasicSR's own warm-up (``train.warmup_iter``) replaces it by ``lr * i / warmup_iter``
    while ``i < warmup_iter``. A chainable scheduler (BasicSR's MultiStepRestartLR, torch's StepLR, ...) continues
    from the learning rate that warm-up left, so after such a warm-up it has no closed form (``at`` gives None).

    Args:
        train_opt (dict): The option file's ``train`` section (not modified).
    """

    def __init__(self, train_opt):
        optim_opt = deepcopy(dict(train_opt.get('optim_g') or {}))
        optim_type = optim_opt.pop('type', None)
        try:
            optim_cls = optimizer_class(optim_type)
        except ValueError as err:
            raise ValueError(str(err)) from None
        try:
            optimizer = optim_cls([torch.nn.Parameter(torch.zeros(1))], **optim_opt)
        except (TypeError, ValueError) as err:
            raise ValueError(f'train.optim_g: {optim_type}: {err}') from None
        self.optimizer_type = optim_type
        self.optimizer_settings = dict(optimizer.defaults)
        self.base_lr = float(optimizer.defaults['lr'])
        sched_opt = deepcopy(dict(train_opt.get('scheduler') or {}))
        self.scheduler_type = sched_opt.pop('type', None)
        self.scheduler_args = sched_opt
        try:
            sched_cls = scheduler_class(self.scheduler_type)
        except ValueError as err:
            raise ValueError(str(err)) from None
        try:
            self.scheduler = sched_cls(optimizer, **sched_opt)
        except (TypeError, ValueError, AssertionError) as err:
            raise ValueError(f'train.scheduler: {self.scheduler_type}: {err}') from None
        self.basicsr_warmup = int(train_opt.get('warmup_iter', -1) or -1)
        self.from_base_lr = hasattr(self.scheduler, 'lr_at') or isinstance(
            self.scheduler, basicsr_lr_scheduler.CosineAnnealingRestartLR)  # computed from the base lr every step

    def scheduled(self, t):
        """The scheduler's learning rate after ``t`` steps (None without a closed form)."""
        sched = self.scheduler
        if hasattr(sched, 'lr_at'):  # LinearWarmupCosineLR
            return sched.lr_at(self.base_lr, t)
        if isinstance(sched, basicsr_lr_scheduler.CosineAnnealingRestartLR):
            sched.last_epoch = t
            return sched.get_lr()[0]
        if isinstance(sched, basicsr_lr_scheduler.MultiStepRestartLR):
            restart = max(r for r in (0, *sched.restarts) if r <= t)
            weight = sched.restart_weights[list(sched.restarts).index(restart)] if restart in sched.restarts else 1
            drops = sum(n for m, n in sched.milestones.items() if restart < m <= t and m not in sched.restarts)
            return self.base_lr * weight * sched.gamma**drops
        if hasattr(sched, '_get_closed_form_lr'):  # torch's StepLR, CosineAnnealingLR, ...
            sched.last_epoch = t
            return sched._get_closed_form_lr()[0]
        return None

    def at(self, iteration):
        """Learning rate of training iteration ``iteration`` (1-based, as BasicSR counts)."""
        if iteration < self.basicsr_warmup:
            return self.base_lr * iteration / self.basicsr_warmup
        if self.basicsr_warmup > 0 and not self.from_base_lr:
            return None
        return self.scheduled(iteration - 1)


class ScheduleError(ValueError):
    """A schedule that does not fit ``train.total_iter``: the message starts with the option key."""


@dataclass
class Schedule:
    """A training schedule checked against ``train.total_iter`` (:func:`check_schedule`): its closed form, the warm-up
    and the end of the annealing in iterations (with the option keys that set them), and the notes on what trains but
    does not fit (logged by ``train``; errors in the recipe report)."""
    curve: LearningRateCurve
    total_iter: int
    warmup: int
    warmup_key: str
    end: int
    end_key: str
    notes: list = field(default_factory=list)


def check_schedule(train_opt, strict=False):
    """The schedule of ``train_opt`` (an option file's ``train``) checked against ``train.total_iter``.

    Always errors (``ScheduleError``, naming the keys and values): an optimizer or scheduler that cannot be built
    (restart weights not one per period, ...), LinearWarmupCosineLR without ``warmup_iter < max_iter``, and a
    ``total_iter`` past the end of CosineAnnealingRestartLR's ``periods`` (BasicSR steps the scheduler
    ``total_iter - 1`` times and fails after the last period with ``TypeError: list indices must be integers``).
    A schedule that trains but does not end where training does (periods summing to more than ``total_iter``, a
    warm-up as long as the run) is a note, or an error with ``strict`` (the recipe report). Used by ``train`` before
    the first step, fresh or resumed, and by ``tools/recipe.py``.
    """
    if train_opt.get('total_iter') is None:
        raise ScheduleError('train.total_iter: missing')
    total = int(train_opt['total_iter'])
    sched = train_opt.get('scheduler') or {}
    if sched.get('type') == 'LinearWarmupCosineLR':
        for key in ('warmup_iter', 'max_iter'):
            if key not in sched:
                raise ScheduleError(f'train.scheduler.{key}: missing (LinearWarmupCosineLR)')
        if not 0 <= sched['warmup_iter'] < sched['max_iter']:
            raise ScheduleError(f"train.scheduler.warmup_iter: {sched['warmup_iter']:,} must be below "
                                f"train.scheduler.max_iter {sched['max_iter']:,} (and >= 0)")
    try:
        curve = LearningRateCurve(train_opt)
    except ValueError as err:
        raise ScheduleError(str(err)) from None
    args, notes = curve.scheduler_args, []

    def misfit(message):
        if strict:
            raise ScheduleError(message)
        notes.append(message)

    warmup, warmup_key, end, end_key = 0, None, None, None
    if curve.scheduler_type == 'LinearWarmupCosineLR':
        warmup, warmup_key = int(args['warmup_iter']), 'train.scheduler.warmup_iter'
        end, end_key = int(args['max_iter']), 'train.scheduler.max_iter'
        if end < total:
            notes.append(f'the cosine reaches eta_min at iteration {end:,}; the last {total - end:,} iterations stay '
                         'there')
    elif curve.scheduler_type == 'CosineAnnealingRestartLR':
        end, end_key = int(sum(args['periods'])), 'train.scheduler.periods'
        misfit_message = (f"train.scheduler.periods: {list(args['periods'])} sum to {end:,}, but train.total_iter is "
                          f"{total:,}: BasicSR's CosineAnnealingRestartLR must end where training does")
        if end != total and strict:
            raise ScheduleError(misfit_message)
        if total - 1 > end:
            raise ScheduleError(f"train.total_iter: {total:,} is beyond the end of train.scheduler.periods "
                                f"{list(args['periods'])} (sum {end:,}): BasicSR's CosineAnnealingRestartLR has no "
                                f'learning rate after its last period and fails there (TypeError) before '
                                f'net_g_latest and the final validation; lengthen the periods to sum to {total:,} or '
                                f'lower train.total_iter')
        if end != total:
            notes.append(misfit_message)
    elif curve.scheduler_type == 'CosineAnnealingLR':
        end, end_key = int(args['T_max']), 'train.scheduler.T_max'
    if curve.basicsr_warmup > 0 and curve.basicsr_warmup > warmup:
        warmup, warmup_key = curve.basicsr_warmup, 'train.warmup_iter'
    if warmup_key and warmup >= total:
        misfit(f'{warmup_key}: the warm-up ({warmup:,} iterations) must be shorter than train.total_iter ({total:,})')
    return Schedule(curve, total, warmup, warmup_key, end, end_key, notes)


def schedule_changes(saved, train_opt):
    """What differs between a state's saved schedule (its ``run`` record) and the option file's ``train`` (empty
    for states without the record)."""
    if 'scheduler' not in saved:
        return []
    changes = []
    if saved.get('total_iter') != train_opt['total_iter']:
        changes.append(f'train.total_iter {saved.get("total_iter")} -> {train_opt["total_iter"]}')
    if 'warmup_iter' in saved and saved['warmup_iter'] != train_opt.get('warmup_iter', -1):
        changes.append(f'train.warmup_iter {saved["warmup_iter"]} -> {train_opt.get("warmup_iter", -1)}')
    old, new = dict(saved['scheduler']), dict(train_opt['scheduler'])
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f'train.scheduler.{key} {old.get(key)} -> {new.get(key)}')
    return changes


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def optimizer_changes(saved_run, saved_optimizer, optimizer):
    """What differs between a state's optimizer (its ``run`` record's type; its saved param groups' hyperparameters,
    base learning rate included) and ``optimizer``, freshly built from the option file: ``[(key, old, new)]``.
    A changed type is an error (its saved state fits no other optimizer)."""
    old_type = (saved_run.get('optim_g') or {}).get('type')
    if old_type is not None and old_type != type(optimizer).__name__:
        raise ValueError(f'train.optim_g.type: {old_type} -> {type(optimizer).__name__}: the training state holds '
                         f'the state of {old_type}, which does not fit {type(optimizer).__name__}; keep the type, or '
                         'start a new run from the weights (path.pretrain_network_g)')
    changes = []
    for old_group, group in zip(saved_optimizer['param_groups'], optimizer.param_groups):
        for key, new in group.items():
            if key in ('params', 'lr') or key not in old_group:
                continue
            old = _plain(old_group[key])
            if old != _plain(new):
                name = 'lr' if key == 'initial_lr' else key
                if (name, old, _plain(new)) not in changes:
                    changes.append((name, old, _plain(new)))
    return changes


def position_scheduler(scheduler, step, train_opt):
    """Set a freshly built scheduler to ``step`` steps taken, with the learning rate its schedule (``train_opt``'s
    ``optim_g`` and ``scheduler``) gives there."""
    optim_opt = dict(train_opt['optim_g'], type=type(scheduler.optimizer).__name__)  # BasicSR popped 'type'
    curve = LearningRateCurve({'optim_g': optim_opt, 'scheduler': train_opt['scheduler']})
    lr = curve.scheduled(step)
    if lr is None:
        raise ValueError(f'train.scheduler.type {curve.scheduler_type}: the schedule or the optimizer changed since '
                         'the state was saved and this scheduler has no closed form to continue from; keep their '
                         'settings')
    scheduler.last_epoch = step
    scheduler.base_lrs = [group['initial_lr'] for group in scheduler.optimizer.param_groups]
    for group in scheduler.optimizer.param_groups:
        group['lr'] = lr / curve.base_lr * group['initial_lr']
    scheduler._last_lr = [group['lr'] for group in scheduler.optimizer.param_groups]


def resume_with_changed_settings(model, state):
    """Resume the optimizers and schedulers of ``state`` under the option file's settings when they changed since
    it was saved: a schedule (``train.total_iter`` raised, ``warmup_iter``, new ``scheduler`` settings such as
    ``periods``) or optimizer hyperparameters (``optim_g.lr``, ``betas``, ``weight_decay``, ...). The optimizers'
    saved state (moments, step counts) is loaded, the option file's hyperparameters are put back into their param
    groups, and the schedulers are set to the saved step with the learning rate the option file's schedule and base
    learning rate give there (BasicSR would keep the old settings silently, or fail past the old schedule's end).
    Logs every change and returns True; False (nothing done) when nothing changed. A changed ``optim_g.type`` is
    an error."""
    saved_run = state.get('run') or {}
    optim = []
    for optimizer, optimizer_state in zip(model.optimizers, state['optimizers']):
        optim += [c for c in optimizer_changes(saved_run, optimizer_state, optimizer) if c not in optim]
    changes = schedule_changes(saved_run, model.opt['train'])
    if not changes and not optim:
        return False
    for optimizer, optimizer_state in zip(model.optimizers, state['optimizers']):
        settings = [{k: v for k, v in group.items() if k not in ('params', 'lr')} for group in optimizer.param_groups]
        optimizer.load_state_dict(optimizer_state)
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)
    step = state['schedulers'][0]['last_epoch']
    for scheduler in model.schedulers:
        position_scheduler(scheduler, step, model.opt['train'])
    what = ' and '.join(w for w, c in (('schedule', changes), ('optimizer', optim)) if c)
    listed = changes + [f'train.optim_g.{key} {old} -> {new}' for key, old, new in optim]
    get_root_logger().info(f'Resuming with a changed {what} ({"; ".join(listed)}): the schedule continues from '
                           f'step {step} as the option file now gives it (learning rate '
                           f'{model.get_current_learning_rate()[0]:.4g}).')
    return True


for _block in OPTIMIZER_BLOCKS:  # the option-key check finds these blocks' classes here (utils/option_keys.py)
    BUILT_BLOCKS[_block] = (optimizer_class, ('self', 'params'))
BUILT_BLOCKS['scheduler'] = (scheduler_class, ('self', 'optimizer'))
