"""16-bit training images are reduced to 8 bits with a warning (as ``restore`` warns): once per source, naming the
LMDB or folder and its first 16-bit image, also when DataLoader workers read the images."""
import os
import warnings
from os import path as osp

import cv2
import numpy as np
import torch

import allinone_basicsr  # noqa: F401  (import before basicsr)
from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset, MixedDegradationDataset

from basicsr.utils.lmdb_util import make_lmdb_from_imgs

KEYS = ['a', 'b', 'c']


def _folder(path, images, depth):
    path.mkdir()
    for key, rgb in images.items():
        bgr = rgb[..., ::-1]
        cv2.imwrite(str(path / f'{key}.png'), bgr.astype(np.uint16) * 257 if depth == 16 else bgr)
    return str(path)


def _u8(t):
    return np.round(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


def _warnings_16bit(caught):
    return [str(w.message) for w in caught if '16-bit' in str(w.message)]


def test_16bit_sources_warned_once_each(tmp_path, capfd):
    rng = np.random.default_rng(0)
    images = {k: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for k in KEYS}
    deep = _folder(tmp_path / 'deep', images, 16)
    deep_lmdb = str(tmp_path / 'deep.lmdb')
    make_lmdb_from_imgs(deep, deep_lmdb, [f'{k}.png' for k in KEYS], KEYS)
    plain = _folder(tmp_path / 'plain', images, 8)
    opt = {'name': 'x', 'degradation_classes': ['noise', 'rain', 'haze'], 'gt_size': 32, 'use_hflip': False,
           'use_rot': False,
           'tasks': [{'name': 'n', 'degradation': 'noise', 'dataroot_gt': deep, 'noise_sigma': 0},
                     {'name': 'r', 'degradation': 'rain', 'dataroot_lq': deep_lmdb, 'dataroot_gt': plain},
                     {'name': 'h', 'degradation': 'haze', 'dataroot_lq': plain, 'dataroot_gt': deep, 'repeat': 2}]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        dataset = MixedDegradationDataset(opt)
        items = [dataset[i] for i in range(len(dataset))]
        AllInOneTestDataset({'name': 't', 'degradation': 'noise', 'dataroot_gt': deep, 'noise_sigma': 0})[2]
    said = _warnings_16bit(caught)
    assert len(said) == 2, said  # one per 16-bit source, none for the 8-bit one
    assert said[0].startswith(f'{osp.realpath(deep)}: 16-bit images read as 8-bit') and 'a.png' in said[0]
    assert said[1].startswith(f'{osp.realpath(deep_lmdb)}: 16-bit images read as 8-bit') and "first: 'a'" in said[1]
    for item in items:  # scaled by 1/257 (image_io.to_bgr8, as restore): exactly the 8-bit originals
        key = osp.splitext(osp.basename(item['gt_path']))[0]
        assert np.array_equal(_u8(item['gt']), images[key]) and np.array_equal(_u8(item['lq']), images[key])

    # forked loader workers inherit what was said: no warning from each worker (printed to fd 2, which capfd reads)
    with warnings.catch_warnings():
        warnings.simplefilter('always')
        warnings.showwarning = lambda message, *args, **kwargs: os.write(2, f'warning: {message}\n'.encode())
        capfd.readouterr()
        ctx = torch.multiprocessing.get_context('fork')
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context=ctx)
        assert sum(len(batch['gt']) for batch in loader) == len(dataset)
    assert '16-bit' not in capfd.readouterr().err
