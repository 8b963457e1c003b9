import importlib.util
import os
from os import path as osp

import lmdb
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

import allinone_basicsr  # noqa: F401  (import before basicsr)
from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset, MixedDegradationDataset

from basicsr.utils import imfrombytes

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _load_module():
    script = osp.join(ROOT, 'datasets_prep', 'make_demo_data.py')
    spec = importlib.util.spec_from_file_location('make_demo_data', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mdd = _load_module()


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('demo') / 'demo')
    written = mdd.build_demo_data(out, seed=0, verbose=False)
    return out, written


def _keys(lmdb_path):
    with open(osp.join(lmdb_path, 'meta_info.txt')) as f:
        return [line.split()[0] for line in f if line.strip()]


def _read_all(lmdb_path):
    env = lmdb.open(lmdb_path, readonly=True, lock=False)
    with env.begin() as txn:
        imgs = {k: imfrombytes(bytes(v)) for k, v in txn.cursor()}
    env.close()
    return {k.decode(): v for k, v in imgs.items()}


def test_layout_keys_and_sizes(demo):
    out, written = demo
    assert len(written) == 10
    for split in ('train', 'test'):
        clean = _keys(osp.join(out, split, 'clean.lmdb'))
        for name in ('clean', 'rain_lq', 'rain_gt', 'haze_lq', 'haze_gt'):
            path = osp.join(out, split, f'{name}.lmdb')
            assert osp.isfile(osp.join(path, 'data.mdb')) and osp.isfile(osp.join(path, 'meta_info.txt'))
            assert _keys(path) == clean  # lq and gt (and clean) share keys
            assert written[f'{split}/{name}.lmdb'] == len(clean)
    train, test = _keys(osp.join(out, 'train', 'clean.lmdb')), _keys(osp.join(out, 'test', 'clean.lmdb'))
    assert 20 <= len(train) <= 60 and 2 <= len(test) <= 5
    assert train[0] == 'astronaut_000.png' and 'coffee_000.png' in test
    photos = {split: {k.rsplit('_', 1)[0] for k in keys} for split, keys in (('train', train), ('test', test))}
    assert not photos['train'] & photos['test']  # train and test photos are disjoint
    assert not {'cat', 'chelsea'} <= photos['train'] | photos['test']  # the same photo under two names
    for img in _read_all(osp.join(out, 'train', 'clean.lmdb')).values():
        assert img.shape == (256, 256, 3)
    for img in _read_all(osp.join(out, 'test', 'clean.lmdb')).values():
        assert 128 <= min(img.shape[:2]) <= 192 and img.shape[0] % 16 == 0 and img.shape[1] % 16 == 0


def test_test_pairs_are_plausibly_degraded(demo):
    out, _ = demo
    for task, (low, high) in (('rain', (15, 24)), ('haze', (13, 23))):
        lq = _read_all(osp.join(out, 'test', f'{task}_lq.lmdb'))
        gt = _read_all(osp.join(out, 'test', f'{task}_gt.lmdb'))
        psnr = [peak_signal_noise_ratio(gt[k], lq[k]) for k in gt]
        assert low < np.mean(psnr) < high, (task, psnr)
        assert min(psnr) > low - 2
    train_lq, train_gt = (_read_all(osp.join(out, 'train', f'rain_{v}.lmdb')) for v in ('lq', 'gt'))
    assert all(not np.array_equal(train_lq[k], train_gt[k]) for k in train_gt)


def test_datasets_read_the_demo(demo):
    out, _ = demo
    classes = ['noise', 'rain', 'haze']
    ds = MixedDegradationDataset({
        'name': 'demo', 'degradation_classes': classes, 'gt_size': 64,
        'tasks': [{'name': 'denoise_25', 'degradation': 'noise', 'dataroot_gt': f'{out}/train/clean.lmdb',
                   'noise_sigma': 25},
                  {'name': 'derain', 'degradation': 'rain', 'dataroot_lq': f'{out}/train/rain_lq.lmdb',
                   'dataroot_gt': f'{out}/train/rain_gt.lmdb', 'repeat': 2}]})
    assert ds[len(ds) - 1]['degradation'] == 1 and ds[0]['lq'].shape == (3, 64, 64)
    test = AllInOneTestDataset({'name': 'haze', 'degradation': 'haze', 'degradation_classes': classes,
                                'dataroot_gt': f'{out}/test/haze_gt.lmdb', 'dataroot_lq': f'{out}/test/haze_lq.lmdb'})
    assert test[0]['degradation'] == 2 and test[0]['lq'].shape[0] == 3


def test_skip_force_and_determinism(demo, tmp_path, capsys):
    out, _ = demo
    stamp = os.path.getmtime(osp.join(out, 'test', 'rain_lq.lmdb', 'data.mdb'))
    assert mdd.build_demo_data(out, seed=0) == {}  # complete: skipped
    assert 'already' in capsys.readouterr().out
    assert os.path.getmtime(osp.join(out, 'test', 'rain_lq.lmdb', 'data.mdb')) == stamp
    # the images are a pure function of the seed
    again, other = mdd.make_images(0, splits=('test', ))['test'], mdd.make_images(1, splits=('test', ))['test']
    first = _read_all(osp.join(out, 'test', 'rain_lq.lmdb'))
    for key, img in again['rain_lq'].items():
        np.testing.assert_array_equal(first[key], img[..., ::-1])  # LMDB stores BGR PNGs
        assert not np.array_equal(img, other['rain_lq'][key])
    np.testing.assert_array_equal(again['clean']['coffee_000'], other['clean']['coffee_000'])
    # force rebuilds, via the command line too
    mdd.main(['--out', out, '--seed', '0', '--force'])
    assert 'wrote' in capsys.readouterr().out
    for key, img in _read_all(osp.join(out, 'test', 'rain_lq.lmdb')).items():
        np.testing.assert_array_equal(first[key], img)
    assert not [v for v in os.listdir(out) if v.startswith('.build_')]
