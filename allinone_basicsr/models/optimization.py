"""Optimizers and learning-rate schedules: lookup by the names the option files give (``train.optim_g.type``,
``train.scheduler.type``), the closed form of every schedule (:class:`LearningRateCurve`), and the resume of a run
whose option file changed its schedule. Used by ``AllInOneModel`` and the recipe report, so both accept exactly the
same names and compute the same learning rates."""
from copy import deepcopy

import torch

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


def schedule_changes(saved, train_opt):
    """What differs between a state's saved schedule (its ``run`` record) and the option file's ``train`` (empty
    for states without the record)."""
    if 'scheduler' not in saved:
        return []
    changes = []
    if saved.get('total_iter') != train_opt['total_iter']:
        changes.append(f'train.total_iter {saved.get("total_iter")} -> {train_opt["total_iter"]}')
    old, new = dict(saved['scheduler']), dict(train_opt['scheduler'])
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append(f'train.scheduler.{key} {old.get(key)} -> {new.get(key)}')
    return changes


def position_scheduler(scheduler, step, train_opt):
    """Set a freshly built scheduler to ``step`` steps taken, with the learning rate its schedule (``train_opt``'s
    ``optim_g`` and ``scheduler``) gives there."""
    optim_opt = dict(train_opt['optim_g'], type=type(scheduler.optimizer).__name__)  # BasicSR popped 'type'
    curve = LearningRateCurve({'optim_g': optim_opt, 'scheduler': train_opt['scheduler']})
    lr = curve.scheduled(step)
    if lr is None:
        raise ValueError(f'train.scheduler.type {curve.scheduler_type}: the schedule changed since the state was '
                         'saved and this scheduler has no closed form to continue from; keep its settings')
    scheduler.last_epoch = step
    for group in scheduler.optimizer.param_groups:
        group['lr'] = lr / curve.base_lr * group['initial_lr']
    scheduler._last_lr = [group['lr'] for group in scheduler.optimizer.param_groups]


def resume_with_changed_schedule(model, state):
    """When the option file changed the schedule since ``state`` was saved (``train.total_iter`` raised, new
    ``scheduler`` settings such as ``periods``): load the optimizers and set the schedulers to the saved step with the
    learning rate the new schedule gives there (BasicSR would restore the old schedule and fail past its end), log
    what changed and return True. False (nothing done) when the schedule is unchanged."""
    changes = schedule_changes(state.get('run') or {}, model.opt['train'])
    if not changes:
        return False
    for optimizer, optimizer_state in zip(model.optimizers, state['optimizers']):
        optimizer.load_state_dict(optimizer_state)
    step = state['schedulers'][0]['last_epoch']
    for scheduler in model.schedulers:
        position_scheduler(scheduler, step, model.opt['train'])
    get_root_logger().info(f'Resuming with a changed schedule ({"; ".join(changes)}): the schedule continues from '
                           f'step {step} as the option file now gives it (learning rate '
                           f'{model.get_current_learning_rate()[0]:.4g}).')
    return True
