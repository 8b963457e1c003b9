"""PSNR / SSIM of the all-in-one protocol: RGB in [0, 1], no Y channel, no border crop (skimage's definitions).

Both official codes (PromptIR, SymUNet) score with ``skimage.metrics`` on float RGB images; these functions call
the same skimage functions, so numbers are comparable with the papers. ``AllInOneModel`` passes the float
output (clamped to [0, 1] unless ``val.clamp: false``) and the float ground truth, not BasicSR's uint8 images.
"""
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from basicsr.utils.registry import METRIC_REGISTRY


def to_hwc_array(img):
    """A B×C×H×W (B=1) or C×H×W tensor, or an H×W×C / H×W array -> float64 H×W×C numpy array."""
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu()
        if img.dim() == 4:
            if img.shape[0] != 1:
                raise ValueError(f'expected one image, got a batch of {img.shape[0]}')
            img = img[0]
        img = img.permute(1, 2, 0).numpy()
    img = np.asarray(img, dtype=np.float64)
    return img[..., None] if img.ndim == 2 else img


def _prepare(img, img2, crop_border):
    img, img2 = to_hwc_array(img), to_hwc_array(img2)
    if img.shape != img2.shape:
        raise ValueError(f'image shapes differ: {img.shape} vs {img2.shape}')
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border]
    return img, img2


@METRIC_REGISTRY.register()
def calculate_psnr_aio(img, img2, crop_border=0, data_range=1.0, **kwargs):
    """PSNR (dB) over all RGB channels, ``skimage.metrics.peak_signal_noise_ratio``.

    Args:
        img, img2 (Tensor | ndarray): Images in [0, data_range], tensors as (1, C, H, W) or (C, H, W).
        crop_border (int): Pixels cut from each border. Default: 0 (the all-in-one protocol).
        data_range (float): Default: 1.0.
    """
    img, img2 = _prepare(img, img2, crop_border)
    return float(peak_signal_noise_ratio(img2, img, data_range=data_range))


@METRIC_REGISTRY.register()
def calculate_ssim_aio(img, img2, crop_border=0, data_range=1.0, **kwargs):
    """SSIM over RGB (``skimage.metrics.structural_similarity`` with ``channel_axis``; 7×7 uniform window).

    Args: as :func:`calculate_psnr_aio`.
    """
    img, img2 = _prepare(img, img2, crop_border)
    return float(structural_similarity(img2, img, data_range=data_range, channel_axis=2))
