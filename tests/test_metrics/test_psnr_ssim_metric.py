import numpy as np
import pytest
import torch
from log_capture import BasicsrLog
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


def srmodel_images(sigma=0.08):
    """What BasicSR's ``SRModel.nondist_validation`` hands a metric: ``tensor2img`` of the output and the GT
    (uint8, H×W×C, BGR)."""
    from basicsr.utils import tensor2img
    noisy, gt = photo_pair(sigma)
    return tensor2img([to_tensor(noisy)]), tensor2img([to_tensor(gt)])


def test_uint8_images_of_srmodel_score_as_basicsr_calculate_psnr(monkeypatch):
    """Under stock SRModel the metric gets uint8 BGR images: it scores them on the 0..255 scale mapped to [0, 1],
    equal to BasicSR's own calculate_psnr on the same images (not -31 dB), and says so once in BasicSR's log."""
    from allinone_basicsr.metrics import psnr_ssim_metric
    monkeypatch.setattr(psnr_ssim_metric, '_uint8_noticed', set())
    img, gt = srmodel_images()
    assert img.dtype == np.uint8 and img.ndim == 3
    stock = calculate_metric({'img': img, 'img2': gt}, {'type': 'calculate_psnr', 'crop_border': 0})
    assert 15 < stock < 30
    with BasicsrLog() as records:
        ours = [calculate_metric({'img': img, 'img2': gt}, {'type': 'calculate_psnr_aio', 'crop_border': 0})
                for _ in range(2)]
    assert ours[0] == ours[1] and abs(ours[0] - stock) < 1e-6
    notices = [m for m in records if 'calculate_psnr_aio: got uint8' in m]
    assert len(notices) == 1 and 'SRModel' in notices[0] and 'AllInOneModel' in notices[0]
    # SSIM: the same as on the float images the uint8 ones encode (BGR or RGB: the same mean over channels)
    ssim = METRIC_REGISTRY.get('calculate_ssim_aio')(img, gt)
    ref = structural_similarity(gt[..., ::-1] / 255.0, img[..., ::-1] / 255.0, data_range=1, channel_axis=2)
    assert ssim == pytest.approx(ref, abs=1e-12) and 0 < ssim < 1
    # a uint8 tensor too, and data_range=255 keeps the 0..255 scale
    t_img, t_gt = (torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1) for a in (img, gt))
    assert METRIC_REGISTRY.get('calculate_psnr_aio')(t_img, t_gt) == pytest.approx(stock, abs=1e-6)
    assert METRIC_REGISTRY.get('calculate_psnr_aio')(img, gt, data_range=255) == pytest.approx(stock, abs=1e-6)


@pytest.mark.parametrize('name', ['calculate_psnr_aio', 'calculate_ssim_aio'])
def test_float_images_on_another_scale_are_refused(name):
    """Float images in [0, 255] (SRModel's tensor2img with out_type float, a user's own caller) are a clear error
    naming the metric, not a number; data_range: 255 scores them."""
    img, gt = (a.astype(np.float64) for a in srmodel_images())
    with pytest.raises(ValueError, match=rf'{name}: the ground truth \(float\) has values in .*outside \[0, 1\]'):
        METRIC_REGISTRY.get(name)(img, gt)
    with pytest.raises(ValueError, match=rf'{name}: the ground truth \(float\) .*data_range: 255'):
        METRIC_REGISTRY.get(name)(to_tensor(img / 255), to_tensor(gt))
    assert METRIC_REGISTRY.get(name)(img, gt, data_range=255) == pytest.approx(
        METRIC_REGISTRY.get(name)(img / 255, gt / 255), abs=1e-9)


def test_an_unclamped_output_is_scored_as_it_is():
    """``val.clamp: false`` (the SymUNet protocol) scores the output unclamped: overshoot is data, not an error."""
    noisy, gt = photo_pair()
    over = noisy * 4 - 1.5  # in [-1.5, 2.5]: an untrained network's
    ours = METRIC_REGISTRY.get('calculate_psnr_aio')(to_tensor(over), to_tensor(gt))
    assert ours == pytest.approx(peak_signal_noise_ratio(gt, over, data_range=1), abs=1e-4)


class _OneImageLoader(list):
    """What ``SRModel.nondist_validation`` iterates: batches with ``lq``/``gt``/``lq_path``, and a dataset with
    ``opt['name']``."""

    class dataset:
        opt = {'name': 'one'}


def test_stock_srmodel_validation_scores_psnr_aio_as_calculate_psnr(tmp_path):
    """BasicSR's own SRModel validation with ``calculate_psnr_aio`` beside ``calculate_psnr``: the same number
    (before: -33.44 dB next to 14.69 dB on these images), and ``calculate_ssim_aio`` in (0, 1]."""
    from basicsr.models import build_model
    noisy, gt = photo_pair(0.1)
    opt = {'name': 'stock', 'model_type': 'SRModel', 'num_gpu': 0, 'is_train': False, 'dist': False, 'rank': 0,
           'scale': 1, 'path': {'pretrain_network_g': None, 'visualization': str(tmp_path)},
           'network_g': {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1], 'middle_blk_num': 1,
                         'dec_blk_nums': [1], 'restormer_heads': [1], 'restormer_middle_heads': 2},
           'val': {'save_img': False, 'pbar': False,
                   'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False},
                               'psnr_aio': {'type': 'calculate_psnr_aio'},
                               'ssim_aio': {'type': 'calculate_ssim_aio'}}}}
    model = build_model(opt)
    loader = _OneImageLoader([{'lq': to_tensor(noisy), 'gt': to_tensor(gt), 'lq_path': ['img_000.png']}])
    model.nondist_validation(loader, 0, None, False)
    scores = model.metric_results
    assert 5 < scores['psnr'] < 40 and abs(scores['psnr_aio'] - scores['psnr']) < 1e-6, scores
    assert 0 < scores['ssim_aio'] <= 1
