"""The training step's guards (non-finite losses: ``train.max_nonfinite_steps``; loss spikes: ``train.spike_factor``;
labels out of range) and its loss log, turned into numbers only when the logger reads it."""
import os
from collections import OrderedDict

import torch

from basicsr.utils import get_root_logger

SPIKE_FACTOR = 20.0  # train.spike_factor's default
SPIKE_DECAY = 0.99  # the running mean's decay: about the last 100 accepted steps


class NonFiniteGuard:
    """Decides, once per step, whether the step may be taken, and whether weights are healthy enough to save.

    A step is skipped (no optimizer step, no EMA) when its loss is NaN/Inf on any rank, or -- the loss-spike rule,
    ``train.spike_factor`` (default 20; null: off) -- when the largest loss over the ranks exceeds ``spike_factor``
    times the running mean of the accepted steps' losses (an exponential mean, decay 0.99, bias-corrected: it
    applies from the second step on). A wrecked network's loss is orders of magnitude above normal, so its first
    step is refused before ``optimizer.step`` can apply it; the recipes' normal batch-to-batch, warm-up and restart
    changes stay far below 20x. Cost: the loss and a non-finite flag travel in one two-number tensor (one
    ``all_reduce`` (max) when distributed, then the step's one host read, as the non-finite check alone had); the
    running mean is a host number updated from that read. Every rank reads the same numbers, so every rank takes
    the same decision (alone, DDP would hang). ``limit`` skipped steps in a row stop the run with what to try.

    ``streak`` (the current run of skipped steps) travels in the training state, the running mean too
    (``state_dict``). A float16 step that the GradScaler skips (overflowing gradients, a finite loss) counts as
    accepted here: the scaler adapts its scale and the loss was normal."""

    def __init__(self, limit, distributed, spike_factor=SPIKE_FACTOR):
        self.limit, self.distributed, self.streak = int(limit), distributed, 0
        self.spike_factor = None if spike_factor is None else float(spike_factor)
        self.spikes = 0  # loss spikes in the current streak
        self.loss_ema, self.loss_count = 0.0, 0

    @property
    def loss_mean(self):
        """The running mean of the accepted steps' losses, or None before the first."""
        return self.loss_ema / (1 - SPIKE_DECAY**self.loss_count) if self.loss_count else None

    def _read(self, loss):
        """(any rank's loss non-finite, the largest finite loss over the ranks) of a device scalar: one host sync."""
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        flags = torch.stack([(~finite).float(), torch.where(finite, loss, torch.zeros_like(loss))])
        if self.distributed:
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)  # every rank decides alike
        nonfinite, value = flags.tolist()
        return nonfinite > 0, value

    def _problem(self, nonfinite, value):
        """Why a loss is refused ('non-finite', 'spike'), or None."""
        if nonfinite:
            return 'non-finite'
        mean = self.loss_mean
        if self.spike_factor is not None and mean is not None and mean > 0 and value > self.spike_factor * mean:
            return 'spike'
        return None

    def _spike_text(self, value):
        return (f'{value:.4g} > train.spike_factor {self.spike_factor:g} x the running mean {self.loss_mean:.4g} of '
                'the accepted losses')

    def allows(self, loss, loss_dict, current_iter, lq_paths):
        """Whether the step of total ``loss`` (a device scalar) may be taken; reading it is the step's one host sync.
        An accepted loss joins the running mean; a refused one is logged with the batch's image keys."""
        nonfinite, value = self._read(loss)
        problem = self._problem(nonfinite, value)
        if problem is None:
            self.streak, self.spikes = 0, 0
            self.loss_ema = SPIKE_DECAY * self.loss_ema + (1 - SPIKE_DECAY) * value
            self.loss_count += 1
            return True
        self.streak += 1
        self.spikes += problem == 'spike'
        self.values = values = {k: float(v.detach()) for k, v in loss_dict.items()}  # what the step logs
        keys = [os.path.basename(str(p)) for p in (lq_paths or [])]
        what = 'Non-finite loss' if problem == 'non-finite' else f'Loss spike ({self._spike_text(value)})'
        get_root_logger().warning(f'{what} at iteration {current_iter} ({values}); step skipped '
                                  f'({self.streak} in a row). Batch: {keys}')
        if self.streak >= self.limit:
            kinds = ('non-finite losses' if not self.spikes else
                     f'skipped steps ({self.spikes} loss spikes over train.spike_factor {self.spike_factor:g} x the '
                     'running mean, the others non-finite losses)')
            advice = ('' if not self.spikes else
                      ', or, if the loss rose for a known reason, raise train.spike_factor (null: off)')
            raise RuntimeError(f'{self.streak} consecutive {kinds} (train.max_nonfinite_steps: {self.limit}), last at '
                               f'iteration {current_iter}: stopping. Lower the learning rate, enable train.grad_clip, '
                               f'or check the data (batch {keys}){advice}.')
        return False

    def judge(self, loss):
        """Why weights whose total ``loss`` (a device scalar, e.g. on the last training batch) is this are not fit
        to be saved (a non-finite loss, or a spike by the rule above), or None when they are. One host sync; every
        rank gets the same answer. Changes no state."""
        nonfinite, value = self._read(loss)
        problem = self._problem(nonfinite, value)
        if problem == 'non-finite':
            return 'their loss on the last training batch is not finite'
        if problem == 'spike':
            return f'their loss on the last training batch spiked ({self._spike_text(value)})'
        return None

    def state_dict(self):
        return {'loss_ema': self.loss_ema, 'loss_count': self.loss_count}

    def load_state_dict(self, state):
        if state:
            self.loss_ema, self.loss_count = float(state['loss_ema']), int(state['loss_count'])


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
