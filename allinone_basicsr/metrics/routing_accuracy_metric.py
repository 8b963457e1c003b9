"""Routing accuracy: does the network's degradation vote match the true class (archs with task logits)."""
import torch

from basicsr.utils.registry import METRIC_REGISTRY


def routing_vote(task_logits):
    """The vote of every router: mean of their softmax probabilities, argmax (one class per image)."""
    logits = [task_logits] if torch.is_tensor(task_logits) else list(task_logits)
    return torch.stack([lg.float().softmax(dim=-1) for lg in logits]).mean(dim=0).argmax(dim=-1)


@METRIC_REGISTRY.register()
def calculate_routing_accuracy(task_logits, degradation, **kwargs):
    """Share of images (of the batch) whose router vote equals ``degradation`` (class indices), in [0, 1].

    Used in ``val.metrics`` like PSNR (``type: calculate_routing_accuracy``); the table shows it per test set.
    """
    label = torch.as_tensor(degradation).reshape(-1).to(torch.long).cpu()
    return (routing_vote(task_logits).cpu() == label).float().mean().item()
