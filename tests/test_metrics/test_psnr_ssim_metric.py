import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from basicsr.metrics import calculate_metric
from basicsr.utils.registry import METRIC_REGISTRY


def photo_pair(sigma=0.08, seed=0):
    gt = data.astronaut()[100:228, 150:310].astype(np.float64) / 255
    noisy = np.clip(gt + np.random.default_rng(seed).normal(0, sigma, gt.shape), 0, 1)
    return noisy, gt


def to_tensor(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None].float()


@pytest.mark.parametrize('sigma', [0.02, 0.1])
def test_psnr_equals_skimage_on_rgb_tensors(sigma):
    noisy, gt = photo_pair(sigma)
    ours = METRIC_REGISTRY.get('calculate_psnr_aio')(to_tensor(noisy), to_tensor(gt))
    ref = peak_signal_noise_ratio(gt.astype(np.float32), noisy.astype(np.float32), data_range=1)
    assert abs(ours - ref) < 1e-4


@pytest.mark.parametrize('sigma', [0.02, 0.1])
def test_ssim_equals_skimage_on_rgb_tensors(sigma):
    noisy, gt = photo_pair(sigma)
    ours = METRIC_REGISTRY.get('calculate_ssim_aio')(to_tensor(noisy), to_tensor(gt))
    ref = structural_similarity(gt.astype(np.float32), noisy.astype(np.float32), data_range=1, channel_axis=2)
    assert abs(ours - ref) < 1e-4


def test_metrics_are_rgb_not_luma():
    """A colour shift that keeps luma roughly equal must still cost PSNR (no Y-channel conversion)."""
    _, gt = photo_pair()
    shifted = gt.copy()
    shifted[..., 0] = np.clip(shifted[..., 0] + 0.05, 0, 1)
    shifted[..., 2] = np.clip(shifted[..., 2] - 0.05, 0, 1)
    psnr = METRIC_REGISTRY.get('calculate_psnr_aio')(to_tensor(shifted), to_tensor(gt))
    assert psnr == pytest.approx(peak_signal_noise_ratio(gt, shifted, data_range=1), abs=1e-3)
    assert psnr < 35


def test_called_through_basicsr_calculate_metric_with_extra_keys():
    noisy, gt = photo_pair()
    opt = {'type': 'calculate_psnr_aio', 'crop_border': 0, 'better': 'higher'}
    value = calculate_metric({'img': to_tensor(noisy), 'img2': to_tensor(gt)}, opt)
    assert value == pytest.approx(peak_signal_noise_ratio(gt, noisy, data_range=1), abs=1e-4)
    assert opt['type'] == 'calculate_psnr_aio'  # the option dict is not consumed


def test_identical_images_and_shape_mismatch():
    _, gt = photo_pair()
    assert METRIC_REGISTRY.get('calculate_ssim_aio')(to_tensor(gt), to_tensor(gt)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match='shapes differ'):
        METRIC_REGISTRY.get('calculate_psnr_aio')(to_tensor(gt), to_tensor(gt[:-1]))
