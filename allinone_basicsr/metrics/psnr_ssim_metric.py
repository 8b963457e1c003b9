"""PSNR / SSIM of the all-in-one protocol: RGB in [0, 1], no Y channel, no border crop (skimage's definitions).

Both official codes (PromptIR, SymUNet) score with ``skimage.metrics`` on float RGB images; these functions call
the same skimage functions, so numbers are comparable with the papers. ``AllInOneModel`` passes the float
output (clamped to [0, 1] unless ``val.clamp: false``) and the float ground truth, not BasicSR's uint8 images.

Inputs are checked so that a caller with another convention cannot get a silently wrong number:

- uint8 images (what BasicSR's ``SRModel`` passes: ``tensor2img``'s H×W×C BGR arrays) are read as 0..255 mapped onto
  [0, ``data_range``], i.e. divided by 255 at the default ``data_range=1``; a warning says so once per metric. The
  numbers then equal BasicSR's ``calculate_psnr`` on the same images and score the 8-bit quantised output, not the
  float output the papers score (use ``model_type: AllInOneModel`` for those). BGR or RGB does not matter to
  either metric (both average over the channels).
- float images: the ground truth must lie in [0, ``data_range``] (tolerance :data:`GT_TOLERANCE`), else a
  ValueError naming the metric (e.g. [0, 255] images with ``data_range: 1``). The output is scored as it is:
  ``val.clamp: false`` scores it unclamped, and an untrained network's output can lie anywhere.
"""
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from basicsr.utils import get_root_logger
from basicsr.utils.registry import METRIC_REGISTRY

GT_TOLERANCE = 1e-3  # of data_range: rounding in a float ground truth, never a scale error
_uint8_noticed = set()  # metrics that have logged their uint8 notice


def _in_unit_scale(img, metric, which, data_range):
    """``img`` (tensor or array), the ``which`` ('output' or 'ground truth') of ``metric``, as a float64 array on the
    [0, ``data_range``] scale: uint8 mapped from 0..255 (noticed once per metric), a float ground truth checked
    against the range (see the module docstring)."""
    uint8 = getattr(img, 'dtype', None) in (torch.uint8, np.uint8)
    img = to_hwc_array(img)
    if uint8:
        if metric not in _uint8_noticed:
            _uint8_noticed.add(metric)
            get_root_logger().warning(
                f'{metric}: got uint8 images (BasicSR\'s SRModel passes tensor2img\'s uint8 HWC BGR images; '
                f'AllInOneModel passes float RGB in [0, 1]): read as 0..255 -> [0, {data_range:g}], so the score is '
                'that of the 8-bit output and equals BasicSR\'s calculate_psnr on it. For the all-in-one protocol '
                '(float output) use model_type: AllInOneModel.')
        return img * (data_range / 255.0)
    if which == 'ground truth':
        lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
        if lo < -GT_TOLERANCE * data_range or hi > (1 + GT_TOLERANCE) * data_range:
            raise ValueError(
                f'{metric}: the ground truth (float) has values in [{lo:.4g}, {hi:.4g}], outside [0, {data_range:g}]: '
                f'it is not on the scale the metric scores (data_range={data_range:g}). AllInOneModel passes float '
                'images in [0, 1]; pass uint8 images, or floats in [0, data_range] (e.g. data_range: 255 for float '
                'images in [0, 255]).')
    return img


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


def _prepare(img, img2, crop_border, metric, data_range):
    img2 = _in_unit_scale(img2, metric, 'ground truth', data_range)  # first: its range is checked
    img = _in_unit_scale(img, metric, 'output', data_range)
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
        img, img2 (Tensor | ndarray): Float images in [0, data_range] or uint8 images (checked: see the module
            docstring); tensors as (1, C, H, W) or (C, H, W), arrays as H×W×C or H×W.
        crop_border (int): Pixels cut from each border. Default: 0 (the all-in-one protocol).
        data_range (float): Default: 1.0.
    """
    img, img2 = _prepare(img, img2, crop_border, 'calculate_psnr_aio', data_range)
    return float(peak_signal_noise_ratio(img2, img, data_range=data_range))


@METRIC_REGISTRY.register()
def calculate_ssim_aio(img, img2, crop_border=0, data_range=1.0, **kwargs):
    """SSIM over RGB (``skimage.metrics.structural_similarity`` with ``channel_axis``; 7×7 uniform window).

    Args: as :func:`calculate_psnr_aio`.
    """
    img, img2 = _prepare(img, img2, crop_border, 'calculate_ssim_aio', data_range)
    return float(structural_similarity(img2, img, data_range=data_range, channel_axis=2))
