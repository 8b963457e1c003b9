"""The training step's guards (non-finite losses: ``train.max_nonfinite_steps``; labels out of range) and its loss
log, turned into numbers only when the logger reads it."""
import os
from collections import OrderedDict

import torch

from basicsr.utils import get_root_logger


class NonFiniteGuard:
    """Decides, once per step, whether the step may be taken: a NaN/Inf loss on any rank skips it on every rank
    (alone, DDP would hang), and ``limit`` such steps in a row stop the run with what to try. ``streak`` (the
    current run of skipped steps) travels in the training state."""

    def __init__(self, limit, distributed):
        self.limit, self.distributed, self.streak = int(limit), distributed, 0

    def allows(self, finite, loss_dict, current_iter, lq_paths):
        """``finite``: the loss's ``isfinite`` (a device tensor). Reading it is the step's one host sync."""
        bad = (~finite).float()
        if self.distributed:
            torch.distributed.all_reduce(bad)  # every rank skips together
        if bad.item() == 0:
            self.streak = 0
            return True
        self.streak += 1
        self.values = values = {k: float(v.detach()) for k, v in loss_dict.items()}  # what the step logs
        keys = [os.path.basename(str(p)) for p in (lq_paths or [])]
        get_root_logger().warning(f'Non-finite loss at iteration {current_iter} ({values}); step skipped '
                                  f'({self.streak} in a row). Batch: {keys}')
        if self.streak >= self.limit:
            raise RuntimeError(f'{self.streak} consecutive non-finite losses (train.max_nonfinite_steps: '
                               f'{self.limit}), last at iteration {current_iter}: stopping. Lower the learning rate, '
                               f'enable train.grad_clip, or check the data (batch {keys}).')
        return False


def check_labels(labels, num_classes, arch):
    """The batch's degradation ``labels`` (the loader's CPU list: no device sync) fit the arch's ``num_classes``."""
    if labels and not all(0 <= label < num_classes for label in labels):
        raise ValueError(f'degradation label {max(labels)} out of range for the {num_classes} classes of {arch}: '
                         'datasets.train.degradation_classes and the arch (num_experts / num_classes) disagree')


class DeferredLog:
    """The model's ``log_dict``: the last step's losses (and ``route_acc``) as numbers, averaged over the ranks
    (BasicSR's ``reduce_loss_dict``). The step stores device tensors in ``model._pending_log``; they are read when
    ``log_dict`` is -- the training loop reads it every ``print_freq`` iterations, on every rank -- so the training
    step itself never waits for the device. Assigning ``log_dict`` (plain numbers) drops what is pending."""

    def __get__(self, model, owner=None):
        if model is None:
            return self
        pending = model.__dict__.pop('_pending_log', None)
        if pending is not None:
            model.__dict__['_log_values'] = model.reduce_loss_dict(pending)
        return model.__dict__.get('_log_values', OrderedDict())

    def __set__(self, model, values):
        model.__dict__.pop('_pending_log', None)
        model.__dict__['_log_values'] = values
