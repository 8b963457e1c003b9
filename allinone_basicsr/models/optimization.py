"""Optimizer and learning-rate scheduler lookup by the names the option files give (``train.optim_g.type``,
``train.scheduler.type``); used by ``AllInOneModel`` and the recipe report, so both accept exactly the same names."""
import torch

from basicsr.models import lr_scheduler as basicsr_lr_scheduler
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
