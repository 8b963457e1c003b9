"""Fake raw download trees in the official layouts (synthetic images), with their quirks.

``make_raw_3task`` / ``make_raw_5task``: a few small images per folder (the tests of the preparation scripts);
``small=True`` makes every image tiny (about 40×48: the CPU smoke runs of the full recipes, 32² patches).
``make_raw_sized``: ``count`` images per training set at the public datasets' typical sizes (benchmarks).
"""
import os
from os import path as osp

import cv2
import numpy as np

SIZE = (136, 144)  # >= gt_size 128 of the option files
SMALL = {'train': (40, 48), 'test': (32, 48)}  # >= the smoke runs' 32² patches; test sizes multiples of 16


def _shape(shape, small, kind):
    """The image size: ``shape``, or with ``small`` the small size of its kind ('train' or 'test')."""
    return SMALL[kind] if small else shape


def _img(path, rng, shape=SIZE, grey=False):
    os.makedirs(osp.dirname(path), exist_ok=True)
    h, w = shape
    base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 1 if grey else 3), dtype=np.uint8)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_LINEAR)  # smooth, so JPEG is not all noise
    img = np.clip(img.astype(int) + rng.integers(-8, 9, size=img.shape), 0, 255).astype(np.uint8)
    assert cv2.imwrite(path, img)
    return path


def _write(path, lines):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def make_raw_3task(raw, seed=0, small=False):
    rng = np.random.default_rng(seed)
    train = _shape(SIZE, small, 'train')
    # denoise: BSD400 named a<id>.jpg (PromptIR's naming) and <id>.jpg (raw BSD400 naming), WED <id>.bmp
    for name in ('a100.jpg', 'a101.jpg', '102.jpg', '00001.bmp', '00002.bmp'):
        _img(osp.join(raw, 'Train/Denoise', name), rng, train)
    _img(osp.join(raw, 'Train/Denoise', '00003.bmp'), rng, train, grey=True)
    _write(osp.join(raw, 'data_dir/noisy/denoise.txt'),
           ['a100.jpg', 'a101.jpg', 'a102.jpg', '00001.bmp', '00003.bmp', 'a999.jpg'])  # 00002 unlisted, a999 absent
    for n in (1, 2, 3):
        _img(osp.join(raw, f'Train/Derain/rainy/rain-{n}.png'), rng, train)
        _img(osp.join(raw, f'Train/Derain/gt/norain-{n}.png'), rng, train)
    _write(osp.join(raw, 'data_dir/rainy/rainTrain.txt'), [f'rainy/rain-{n}.png' for n in (1, 2, 3)])
    hazy = ['synthetic/part1/0001_0.8_0.04.jpg', 'synthetic/part1/0001_0.9_0.08.jpg',
            'synthetic/part2/0002_1_0.1.jpg', 'synthetic/part4/0003_0.8_0.2.jpg']
    for rel in hazy:
        _img(osp.join(raw, 'Train/Dehaze', rel), rng, train)
    for clean_id in ('0001', '0002', '0003'):
        _img(osp.join(raw, f'Train/Dehaze/original/{clean_id}.jpg'), rng, train)
    _write(osp.join(raw, 'data_dir/hazy/hazy_outside.txt'), hazy[:3])  # part4 image unlisted
    for name in ('3096.png', '12084.png'):
        _img(osp.join(raw, 'test/denoise/bsd68', name), rng, shape=(35, 50) if small else (81, 121))
    test = _shape((96, 112), small, 'test')
    _img(osp.join(raw, 'test/derain/Rain100L/input/rain-1.png'), rng, shape=test)
    _img(osp.join(raw, 'test/derain/Rain100L/target/norain-1.png'), rng, shape=test)  # norain-N naming
    _img(osp.join(raw, 'test/derain/Rain100L/input/rain-2.png'), rng, shape=test)
    _img(osp.join(raw, 'test/derain/Rain100L/target/rain-2.png'), rng, shape=test)  # identical naming
    _img(osp.join(raw, 'test/dehaze/input/0005_0.8_0.2.jpg'), rng, shape=test)
    _img(osp.join(raw, 'test/dehaze/target/0005.png'), rng, shape=test)
    return raw


def make_raw_5task(raw, seed=0, small=False):
    make_raw_3task(raw, seed, small)
    rng = np.random.default_rng(seed + 1)
    for seq, shape in (('GOPR0001_11_00', (560, 800)), ('GOPR0002_11_01', (300, 400))):
        for sub in ('blur', 'sharp'):
            _img(osp.join(raw, f'GoPro/train/{seq}/{sub}/000001.png'), rng, shape=_shape(shape, small, 'train'))
    for sub in ('blur', 'sharp'):
        _img(osp.join(raw, f'GoPro/test/GOPR0003_11_00/{sub}/000004.png'), rng, shape=_shape((96, 160), small, 'test'))
    for part, names in (('our485', ('2', '10')), ('eval15', ('1',))):
        for name in names:
            for sub in ('low', 'high'):
                shape = _shape(SIZE, small, 'train') if part == 'our485' else _shape((80, 96), small, 'test')
                _img(osp.join(raw, f'LOL/{part}/{sub}/{name}.png'), rng, shape=shape)
    return raw


def make_raw_sized(raw, count, seed=0):
    """``count`` pairs per 3-task training set at typical sizes (BSD400 180², WED ~500×380, Rain100L 321×481,
    OTS ~413×550) and a few test images; no list files (every image is used)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        _img(osp.join(raw, f'Train/Denoise/{i:05d}.bmp' if i % 2 else f'Train/Denoise/a{i}.jpg'), rng,
             shape=(380, 500) if i % 2 else (180, 180))
        _img(osp.join(raw, f'Train/Derain/rainy/rain-{i}.png'), rng, shape=(321, 481))
        _img(osp.join(raw, f'Train/Derain/gt/norain-{i}.png'), rng, shape=(321, 481))
        _img(osp.join(raw, f'Train/Dehaze/synthetic/part{i % 4 + 1}/{i // 2:04d}_0.8_0.{i % 2 + 1}.jpg'), rng,
             shape=(413, 550))
        if i % 2 == 0:
            _img(osp.join(raw, f'Train/Dehaze/original/{i // 2:04d}.jpg'), rng, shape=(413, 550))
    for i in range(2):
        _img(osp.join(raw, f'test/denoise/bsd68/{i}.png'), rng, shape=(321, 481))
        _img(osp.join(raw, f'test/derain/Rain100L/input/rain-{i}.png'), rng, shape=(321, 481))
        _img(osp.join(raw, f'test/derain/Rain100L/target/norain-{i}.png'), rng, shape=(321, 481))
        _img(osp.join(raw, f'test/dehaze/input/{i:04d}_0.8_0.2.jpg'), rng, shape=(413, 550))
        _img(osp.join(raw, f'test/dehaze/target/{i:04d}.png'), rng, shape=(413, 550))
    return raw
