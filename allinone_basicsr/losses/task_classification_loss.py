"""Auxiliary degradation-classification loss for archs with task logits (DaAIR's routers, PromptDSANet's head)."""
import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class TaskClassificationLoss(nn.Module):
    """Cross-entropy between degradation logits and the batch's class labels, averaged over every logits tensor.

    Archs return one logits tensor per router (DaAIR: one per DaLe) or a single one; each is (B, classes).
    The labels are not range-checked here (reading them would stop the GPU every step): ``AllInOneModel`` checks
    the loader's CPU labels against the logits' width.

    Args:
        loss_weight (float): Weight of the loss. Default: 0.01 (DaAIR, assumption D5 of docs/methods.md
            §daair-sources; PromptDSANet uses 0.1).
        label_smoothing (float): As in ``F.cross_entropy``. Default: 0.
    """

    def __init__(self, loss_weight=0.01, label_smoothing=0.0):
        super().__init__()
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing

    def forward(self, logits, target, **kwargs):
        logits = [logits] if torch.is_tensor(logits) else list(logits)
        if not logits:
            raise ValueError('TaskClassificationLoss: the arch returned no task logits')
        losses = [F.cross_entropy(lg, target, label_smoothing=self.label_smoothing) for lg in logits]
        return self.loss_weight * torch.stack(losses).mean()
