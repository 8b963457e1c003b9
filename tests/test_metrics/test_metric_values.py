"""The metrics give the numbers they gave when their values were stored: PSNR and SSIM of a fixed image pair
(generated arithmetically, no random stream, no file) under this plugin's metrics and BasicSR's, scored the way the
pipeline scores them (``utils.metric_table.score``). A library that moves them (scikit-image computes the all-in-one
metrics; BasicSR's use OpenCV and numpy) fails here, with the versions named: results made with it would not compare
with results made before (setup.py pins scikit-image to the range this was checked with)."""
import numpy as np
import pytest
import torch

from allinone_basicsr.metrics.psnr_ssim_metric import calculate_psnr_aio, calculate_ssim_aio
from allinone_basicsr.utils.metric_table import score
from allinone_basicsr.utils.run_record import versions

STORED_WITH = {'torch': '2.14.1+cu130', 'scikit-image': '0.26.0', 'basicsr': '1.4.2', 'numpy': '2.4.6',
               'scipy': '1.17.1', 'opencv-python': '5.1.0'}
# (metric options, value): computed once with STORED_WITH
STORED = [
    ({'type': 'calculate_psnr_aio'}, 26.578951829488105),
    ({'type': 'calculate_ssim_aio'}, 0.8262461324202963),
    ({'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True}, 28.232363869377537),
    ({'type': 'calculate_ssim', 'crop_border': 4, 'test_y_channel': True}, 0.7320626865921168),
    ({'type': 'calculate_psnr', 'crop_border': 0}, 26.57171305071859),
    ({'type': 'calculate_ssim', 'crop_border': 0}, 0.7544841691800007),
]
TOLERANCE = {'psnr': 1e-4, 'ssim': 1e-5}  # dB / SSIM: far below what a changed algorithm moves


def fixed_pair():
    """(output, gt) float32 48x64 RGB in [0, 1]: smooth waves and a fixed high-frequency perturbation with an
    offset, so that the error has structure (SSIM) and a mean (PSNR)."""
    i, j, c = np.meshgrid(np.arange(48), np.arange(64), np.arange(3), indexing='ij')
    gt = 0.5 + 0.3 * np.sin(0.21 * i + 0.9 * c) * np.cos(0.13 * j) + 0.15 * np.cos(0.05 * (i + 2 * j) + c)
    out = gt + 0.06 * np.sin(1.7 * i + 2.3 * j + 0.5 * c) + 0.02
    return np.clip(out, 0, 1).astype(np.float32), np.clip(gt, 0, 1).astype(np.float32)


def _moved(what, value, stored):
    return (f'{what} = {value!r}, stored {stored!r} (with {STORED_WITH}); now {dict(versions())}: a library '
            'version changed the metric; results scored with it do not compare with older ones')


def _tensor(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None]


@pytest.mark.parametrize('metric_opt, stored', STORED, ids=[f'{o["type"]}-{o.get("crop_border", "")}'
                                                            for o, _ in STORED])
def test_metric_of_the_fixed_pair_is_the_stored_value(metric_opt, stored):
    out, gt = fixed_pair()
    value = score(metric_opt, _tensor(out), _tensor(gt))
    tolerance = TOLERANCE['ssim' if 'ssim' in metric_opt['type'] else 'psnr']
    assert abs(value - stored) <= tolerance, _moved(metric_opt, value, stored)


def test_aio_metrics_on_arrays_are_the_stored_values():
    out, gt = fixed_pair()
    psnr, ssim = calculate_psnr_aio(out, gt), calculate_ssim_aio(out, gt)
    assert abs(psnr - STORED[0][1]) <= TOLERANCE['psnr'], _moved('calculate_psnr_aio(arrays)', psnr, STORED[0][1])
    assert abs(ssim - STORED[1][1]) <= TOLERANCE['ssim'], _moved('calculate_ssim_aio(arrays)', ssim, STORED[1][1])
