"""Learning-rate schedules not in BasicSR or torch (resolved by name by ``AllInOneModel.setup_schedulers``)."""
import math

from torch.optim.lr_scheduler import LRScheduler


class LinearWarmupCosineLR(LRScheduler):
    """Linear warm-up, then cosine annealing (the official PromptIR schedule, in iterations instead of epochs).

    With ``t`` the number of scheduler steps taken (BasicSR steps once per iteration from iteration 2, so
    ``t = iteration - 1``):
        t < warmup_iter:  lr = warmup_start_lr + (base_lr - warmup_start_lr) * t / (warmup_iter - 1)
        t >= warmup_iter: lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * p)) / 2,
                          p = (t - warmup_iter) / (max_iter - warmup_iter)
    The same closed form as Lightning-Bolts' ``LinearWarmupCosineAnnealingLR`` that PromptIR steps per epoch.
    ``max_iter`` may exceed ``train.total_iter`` (PromptIR anneals over 150 epochs and stops after 120).

    Args:
        optimizer (torch.optim.Optimizer): Optimizer.
        warmup_iter (int): Warm-up length in scheduler steps.
        max_iter (int): Step at which the cosine reaches ``eta_min``.
        warmup_start_lr (float): Learning rate at step 0. Default: 0.
        eta_min (float): Final learning rate. Default: 0.
        last_epoch (int): Index of the last step (for resuming). Default: -1.
    """

    def __init__(self, optimizer, warmup_iter, max_iter, warmup_start_lr=0.0, eta_min=0.0, last_epoch=-1):
        if not 0 <= warmup_iter < max_iter:
            raise ValueError(f'LinearWarmupCosineLR: need 0 <= warmup_iter < max_iter, got {warmup_iter}, {max_iter}')
        self.warmup_iter, self.max_iter = int(warmup_iter), int(max_iter)
        self.warmup_start_lr, self.eta_min = warmup_start_lr, eta_min
        super().__init__(optimizer, last_epoch)

    def lr_at(self, base_lr, t):
        if t < self.warmup_iter:
            return self.warmup_start_lr + (base_lr - self.warmup_start_lr) * t / max(1, self.warmup_iter - 1)
        progress = min(t - self.warmup_iter, self.max_iter - self.warmup_iter) / (self.max_iter - self.warmup_iter)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2

    def get_lr(self):
        return [self.lr_at(base_lr, self.last_epoch) for base_lr in self.base_lrs]


SCHEDULERS = {'LinearWarmupCosineLR': LinearWarmupCosineLR}
