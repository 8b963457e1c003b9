import pytest
import torch

from basicsr.losses import build_loss


def official_fft_loss(pred, target):
    """The official SymUNet definition, written out: stack real/imag of fft2, L1, mean."""
    p = torch.fft.fft2(pred, dim=(-2, -1))
    t = torch.fft.fft2(target, dim=(-2, -1))
    p = torch.stack([p.real, p.imag], dim=-1)
    t = torch.stack([t.real, t.imag], dim=-1)
    return (p - t).abs().mean()


def test_fft_loss_matches_official_definition_and_weight():
    torch.manual_seed(0)
    pred, target = torch.rand(2, 3, 16, 20), torch.rand(2, 3, 16, 20)
    loss = build_loss({'type': 'FFTLoss', 'loss_weight': 0.1})
    assert loss(pred, target).item() == pytest.approx(0.1 * official_fft_loss(pred, target).item(), rel=1e-6)


def test_fft_loss_zero_for_equal_images_and_differentiable():
    pred = torch.rand(1, 3, 8, 8, requires_grad=True)
    loss = build_loss({'type': 'FFTLoss'})
    assert loss(pred.detach(), pred.detach()).item() == 0
    loss(pred, torch.zeros_like(pred)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_fft_loss_rejects_unknown_reduction():
    with pytest.raises(ValueError, match='reduction'):
        build_loss({'type': 'FFTLoss', 'reduction': 'max'})
