"""Frequency-domain L1 loss of the official SymUNet code."""
import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class FFTLoss(nn.Module):
    """L1 distance between the 2-D FFTs of prediction and target.

    ``torch.fft.fft2`` over the last two dims (per channel, unnormalised), real and imaginary parts stacked in a
    last dim, then L1 with the given reduction, as the official SymUNet ``FFTLoss``.

    Args:
        loss_weight (float): Weight of the loss. Default: 1.0.
        reduction (str): 'none' | 'mean' | 'sum'. Default: 'mean'.
    """

    def __init__(self, loss_weight=1.0, reduction='mean'):
        super().__init__()
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f'FFTLoss: unsupported reduction {reduction!r}; valid: none, mean, sum')
        self.loss_weight = loss_weight
        self.reduction = reduction

    def forward(self, pred, target, **kwargs):
        pred_f = torch.view_as_real(torch.fft.fft2(pred, dim=(-2, -1)))
        target_f = torch.view_as_real(torch.fft.fft2(target, dim=(-2, -1)))
        return self.loss_weight * F.l1_loss(pred_f, target_f, reduction=self.reduction)
