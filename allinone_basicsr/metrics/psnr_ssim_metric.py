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
- float images: the ground truth must lie in [0, ``data_range``] (tolerance :data:`GT_TOLERANCE`); the output may
  overshoot (``val.clamp: false`` scores it unclamped) but not beyond [-``data_range``, 2 ``data_range``], which
  only an image on another scale (e.g. [0, 255] with ``data_range: 1``) reaches. Either is a ValueError naming
  the metric.
"""
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from basicsr.utils import get_root_logger
from basicsr.utils.registry import METRIC_REGISTRY

GT_TOLERANCE = 1e-3  # of data_range: rounding in a float ground truth, never a scale error
_uint8_noticed = set()  # metrics that have logged their uint8 notice


def _in_unit_scale(img, metric, which, data_range):
    """``img`` (tensor or array) as float64 on the [0, ``data_range``] scale: uint8 mapped from 0..255 (noticed
    once per metric), floats checked against the range (see the module docstring)."""
    uint8 = img.dtype == (torch.uint8 if isinstance(img, torch.Tensor) else np.uint8)
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
    lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
    if which == 'ground truth':
        bounds, what = (-GT_TOLERANCE * data_range, (1 + GT_TOLERANCE) * data_range), f'[0, {data_range:g}]'
    else:
        bounds, what = (-data_range, 2 * data_range), f'[{-data_range:g}, {2 * data_range:g}] (an unclamped output)'
    if lo < bounds[0] or hi > bounds[1]:
        raise ValueError(
            f'{metric}: the {which} (float) has values in [{lo:.4g}, {hi:.4g}], outside {what}: it is not on the '
            f'[0, {data_range:g}] scale the metric scores (data_range={data_range:g}). AllInOneModel passes float '
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
    img2 = _in_unit_scale(img2, metric, 'ground truth', data_range)  # first: its range is the stricter check
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
