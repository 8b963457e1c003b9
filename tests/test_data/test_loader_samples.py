"""Training samples are a fixed function of the per-sample seed, whatever the LMDB storage format (issue 20).

The loader was sped up (raw ``.npy`` LMDB entries, copies of the crops only, in-place noise arithmetic). The digests
below were computed with the loader *before* those changes, on the same deterministic fake data (PNG LMDBs made by
prepare_3task.py), through ``SeededDataset`` as training uses it: the same (index, seed) must still give the same
bytes of ``lq`` and ``gt`` (crop, flips, transposes and noise), from PNG LMDBs and from raw ones.
"""
import hashlib
import io
import os
import shutil
from os import path as osp

import cv2
import lmdb
import numpy as np
import prepare_3task
import pytest
import yaml

from allinone_basicsr.data.mixed_degradation_dataset import MixedDegradationDataset
from allinone_basicsr.data.sources import decode_image
from allinone_basicsr.utils.resume import SeededDataset
from allinone_basicsr.utils.seeds import sample_seed

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# sha256 (first 16 hex digits) of lq bytes + gt bytes + paths + label per sample of SAMPLES, and of all of them,
# computed with the loader of commit ee17939 (before issue 20) on PNG LMDBs of _raw_tree().
EXPECTED = ['ed9dbbe3d2b48cc2', '6f260d0a727ad6c0', '1bde5977cda56b89', 'e4d905ba3c35d8f7', 'fc8cc6ea9c877d16',
            '93963d6c963654e9', '2aa1b1f3d09f25ab', '2840f92c28ecb46b', '2a556c44836d2d3e', 'a05580f7422c629d',
            '23c2efbf0dd8b9a9', 'bcf50feab0f137f1']
EXPECTED_ALL = 'a36ccad9d0ec897a'


def _img(path, rng, shape):
    os.makedirs(osp.dirname(path), exist_ok=True)
    h, w = shape
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR)
    img = np.clip(img.astype(int) + rng.integers(-8, 9, size=img.shape), 0, 255).astype(np.uint8)
    assert cv2.imwrite(path, img)


def _raw_tree(raw):
    """A 3-task raw tree of PNG images (lossless, so the same pixels on every machine), >= 128² for the recipe."""
    rng = np.random.default_rng(20)
    for i in range(3):
        _img(osp.join(raw, f'Train/Denoise/{i:05d}.png'), rng, (130 + 7 * i, 150 + 5 * i))
        _img(osp.join(raw, f'Train/Derain/rainy/rain-{i}.png'), rng, (140, 161 + i))
        _img(osp.join(raw, f'Train/Derain/gt/norain-{i}.png'), rng, (140, 161 + i))
        _img(osp.join(raw, f'Train/Dehaze/synthetic/part1/000{i}_0.8_0.1.png'), rng, (133, 129 + 9 * i))
        _img(osp.join(raw, f'Train/Dehaze/original/000{i}.png'), rng, (133, 129 + 9 * i))
    _img(osp.join(raw, 'test/denoise/bsd68/0.png'), rng, (32, 48))
    _img(osp.join(raw, 'test/derain/Rain100L/input/rain-0.png'), rng, (32, 48))
    _img(osp.join(raw, 'test/derain/Rain100L/target/norain-0.png'), rng, (32, 48))
    _img(osp.join(raw, 'test/dehaze/input/0000_0.8_0.2.png'), rng, (32, 48))
    _img(osp.join(raw, 'test/dehaze/target/0000.png'), rng, (32, 48))
    return raw


def _train_opt(datasets):
    """The train set of options/train_symunet.yml (tasks, repeats, 128² patches, flips) on ``datasets``."""
    with open(osp.join(REPO, 'options', 'train_symunet.yml')) as f:
        opt = yaml.safe_load(f)['datasets']['train']
    for task in opt['tasks']:
        for key in ('dataroot_gt', 'dataroot_lq', 'gt_key_map'):
            if task.get(key):
                task[key] = osp.join(datasets, osp.relpath(task[key], 'datasets'))
    return dict(opt, phase='train')


def _samples(length):
    """(index, seed) pairs: the first and last sample of every task of the recipe, and a few in between."""
    indices = [0, 1, 8, 9, 17, 18, 26, 27, 100, 387, 388, 389]
    assert max(indices) < length
    return [(i, sample_seed(42, 0, 0, p)) for p, i in enumerate(indices)]


def _digests(datasets):
    dataset = SeededDataset(MixedDegradationDataset(_train_opt(datasets)))
    digests, total = [], hashlib.sha256()
    for sample in _samples(len(dataset)):
        item = dataset[sample]
        h = hashlib.sha256()
        for key in ('lq', 'gt'):
            h.update(item[key].numpy().tobytes())
        h.update(f"{item['lq_path']}|{item['gt_path']}|{item['degradation']}|{item['task']}".encode())
        digests.append(h.hexdigest()[:16])
        total.update(h.digest())
    return digests, total.hexdigest()[:16]


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp('loader_samples')
    raw = _raw_tree(str(root / 'raw'))
    out = {}
    for fmt in ('png', 'raw'):
        out[fmt] = str(root / f'datasets_{fmt}')
        prepare_3task.main(['--raw', raw, '--out', out[fmt], '--workers', '1', '--format', fmt])
    return out


@pytest.mark.parametrize('fmt', ['png', 'raw'])
def test_samples_are_those_of_the_loader_before_issue_20(prepared, fmt):
    digests, total = _digests(prepared[fmt])
    assert digests == EXPECTED
    assert total == EXPECTED_ALL


def test_raw_entries_decode_to_the_png_pixels(prepared, tmp_path):
    """Every entry of every raw LMDB is the ``.npy`` of the image the PNG entry decodes to (RGB uint8)."""
    # copies: the datasets of the tests above may hold the LMDBs open, and lmdb opens a path once per process
    copies = {f: shutil.copytree(prepared[f], tmp_path / f) for f in ('png', 'raw')}
    checked = 0
    for sub in ('train', 'test'):
        for name in sorted(os.listdir(osp.join(copies['png'], sub))):
            envs = [lmdb.open(osp.join(copies[f], sub, name), readonly=True, lock=False) for f in ('png', 'raw')]
            with envs[0].begin() as png, envs[1].begin() as raw:
                keys = [k for k, _ in png.cursor()]
                assert keys == [k for k, _ in raw.cursor()]
                for key in keys:
                    data = raw.get(key)
                    assert data[:6] == b'\x93NUMPY'
                    a, b = decode_image(png.get(key), key), decode_image(data, key)
                    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape and np.array_equal(a, b)
                    checked += 1
            for env in envs:
                env.close()
    assert checked == 3 + 3 * 2 + 3 * 2 + 1 + 2 + 2


def _npy(arr, fortran=False):
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran else arr, allow_pickle=False)
    return buf.getvalue()


def test_npy_entries_are_views_normalised_like_decoded_images():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    content = _npy(rgb)
    img = decode_image(content, 'k')
    assert np.array_equal(img, rgb) and not img.flags.writeable and img.base is not None  # a view, no copy
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    assert np.array_equal(decode_image(_npy(grey), 'g'), np.repeat(grey[..., None], 3, axis=2))
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    assert np.array_equal(decode_image(_npy(rgba), 'a'), rgba[..., :3])
    deep = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    with pytest.warns(UserWarning, match='16-bit'):
        assert np.array_equal(decode_image(_npy(deep), 'd'), (deep / 257.0).round().astype(np.uint8))


@pytest.mark.parametrize('content, message', [
    (_npy(np.zeros((4, 4, 3), np.float32)), 'float32'),
    (_npy(np.zeros((4, 5, 3), np.uint8), fortran=True), 'Fortran'),
    (_npy(np.zeros((4, 4, 3), np.uint8))[:-1], 'data bytes'),
    (_npy(np.zeros((2, 4, 4, 3), np.uint8)), 'shape'),
    (b'\x93NUMPY\x09\x00', 'version'),
])
def test_bad_npy_entries_are_errors_naming_the_image(content, message):
    with pytest.raises(ValueError, match=f"cannot decode image 'key7' of LMDB x: .*{message}"):
        decode_image(content, "'key7' of LMDB x")
