"""The demo data set: photos bundled with scikit-image (no download), synthetic rain and haze, as BasicSR LMDBs.

Train and test use different photos. Train images are 256x256 crops of photos downscaled to a short side of at most
384 px; test images are 160x240 (short side 160, centre-cropped to multiples of 16). Rain and haze are synthesised
with :mod:`.degradations` from a generator seeded by (seed, split, degradation, key), so the output is identical for
a given seed. Noise is not stored: datasets add it on the fly (train) or from a seed derived from the image key
(test).

Output of :func:`build_demo_data` (BasicSR LMDBs, each with meta_info.txt; LQ and GT LMDBs of a task hold the same
keys):
    <out>/train/clean.lmdb, rain_lq.lmdb, rain_gt.lmdb, haze_lq.lmdb, haze_gt.lmdb
    <out>/test/clean.lmdb, rain_lq.lmdb, rain_gt.lmdb, haze_lq.lmdb, haze_gt.lmdb

Used by ``datasets_prep/make_demo_data.py`` (``make demo``), the table smoke runs and the GPU check.
"""
import contextlib
import io
import json
import os
import shutil
import tempfile
from os import path as osp

import cv2
import numpy as np

from allinone_basicsr.utils.seeds import stable_seed

from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from .degradations import add_haze, add_rain

# skimage.data photos that ship with the wheel (others need pooch downloads). chelsea == cat: use one of them.
TRAIN_PHOTOS = ('astronaut', 'immunohistochemistry', 'hubble_deep_field', 'retina', 'camera', 'coins', 'clock',
                'brick', 'grass')
TEST_PHOTOS = ('coffee', 'chelsea', 'rocket')
TRAIN_MAX_SHORT, TRAIN_CROP, TRAIN_STRIDE = 384, 256, 128
TEST_SHORT, TEST_MULTIPLE = 160, 16
SPLITS = ('train', 'test')
LMDB_NAMES = ('clean', 'rain_lq', 'rain_gt', 'haze_lq', 'haze_gt')


def load_photo(name):
    """An skimage.data photo as HxWx3 uint8 RGB (grey replicated, alpha dropped)."""
    from skimage import data
    img = np.asarray(getattr(data, name)())
    if img.dtype != np.uint8:
        raise ValueError(f'skimage.data.{name} is {img.dtype}, expected uint8')
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def resize_short(img, short):
    """Resize (area interpolation) so that the short side is ``short``."""
    h, w = img.shape[:2]
    f = short / min(h, w)
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _starts(size, crop, stride):
    n = max(1, int(np.ceil((size - crop) / stride)) + 1)
    return sorted(set(np.linspace(0, size - crop, n).round().astype(int).tolist()))


def train_crops(img):
    """Photo -> list of TRAIN_CROP x TRAIN_CROP crops on a grid (stride ~TRAIN_STRIDE) of the downscaled photo."""
    if min(img.shape[:2]) > TRAIN_MAX_SHORT:
        img = resize_short(img, TRAIN_MAX_SHORT)
    h, w = img.shape[:2]
    return [img[y:y + TRAIN_CROP, x:x + TRAIN_CROP] for y in _starts(h, TRAIN_CROP, TRAIN_STRIDE)
            for x in _starts(w, TRAIN_CROP, TRAIN_STRIDE)]


def test_image(img):
    """Photo -> short side TEST_SHORT, centre crop to multiples of TEST_MULTIPLE."""
    img = resize_short(img, TEST_SHORT)
    h, w = img.shape[:2]
    ch, cw = h % TEST_MULTIPLE, w % TEST_MULTIPLE
    return np.ascontiguousarray(img[ch // 2:h - ch + ch // 2, cw // 2:w - cw + cw // 2])


def make_images(seed=0, splits=SPLITS):
    """All demo images in memory.

    Args:
        seed (int): Seed of the synthetic rain / haze.
        splits (tuple[str]): Splits to make. Default: ('train', 'test').

    Returns:
        dict: {split: {lmdb name: {key: HxWx3 uint8 RGB}}}.
    """
    out = {}
    for split in splits:
        photos = {'train': TRAIN_PHOTOS, 'test': TEST_PHOTOS}[split]
        clean = {}
        for name in photos:
            photo = load_photo(name)
            crops = train_crops(photo) if split == 'train' else [test_image(photo)]
            for i, crop in enumerate(crops):
                clean[f'{name}_{i:03d}'] = np.ascontiguousarray(crop)
        rain, haze = {}, {}
        for key, img in clean.items():
            rain[key] = add_rain(img, np.random.default_rng([seed, stable_seed(f'{split}/rain/{key}')]))
            haze[key] = add_haze(img, np.random.default_rng([seed, stable_seed(f'{split}/haze/{key}')]))
        out[split] = {'clean': clean, 'rain_lq': rain, 'rain_gt': clean, 'haze_lq': haze, 'haze_gt': clean}
    return out


def lmdb_paths(out):
    """{(split, name): path} of the 10 output LMDBs."""
    return {(s, n): osp.join(out, s, f'{n}.lmdb') for s in SPLITS for n in LMDB_NAMES}


def is_complete(out):
    """True when all 10 LMDBs exist with data.mdb and meta_info.txt."""
    return all(
        osp.isfile(osp.join(p, 'data.mdb')) and osp.isfile(osp.join(p, 'meta_info.txt'))
        for p in lmdb_paths(out).values())


def _write_lmdb(images, lmdb_path, png_dir):
    """Write {key: RGB uint8} as PNGs into png_dir, then into an LMDB with BasicSR's make_lmdb_from_imgs."""
    os.makedirs(png_dir, exist_ok=True)
    os.makedirs(osp.dirname(lmdb_path), exist_ok=True)
    keys = sorted(images)
    for key in keys:
        if not cv2.imwrite(osp.join(png_dir, f'{key}.png'), images[key][..., ::-1]):
            raise OSError(f'cannot write {osp.join(png_dir, key)}.png')
    names = [f'{k}.png' for k in keys]
    map_size = sum(osp.getsize(osp.join(png_dir, v)) for v in names) * 4 + (1 << 20)
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):  # quiet progress bars
        make_lmdb_from_imgs(png_dir, lmdb_path, names, keys, compress_level=1, map_size=map_size)


def build_demo_data(out, seed=0, force=False, verbose=True):
    """Build the demo LMDBs under ``out`` (skipped when they exist, unless ``force``).

    Args:
        out (str): Output folder, e.g. ``datasets/demo``.
        seed (int): Seed of the synthetic rain / haze. Default: 0.
        force (bool): Rebuild even if all outputs exist. Default: False.
        verbose (bool): Print what was written. Default: True.

    Returns:
        dict: {'<split>/<name>.lmdb': number of images}, or {} when skipped.
    """
    say = print if verbose else (lambda *a, **k: None)
    paths = lmdb_paths(out)
    if is_complete(out) and not force:
        say(f'Demo data already in {out} (use --force to rebuild).')
        return {}
    images = make_images(seed)
    os.makedirs(out, exist_ok=True)
    written = {}
    with tempfile.TemporaryDirectory(dir=out, prefix='.build_') as tmp:
        for (split, name), path in paths.items():  # build everything first, then move into place
            _write_lmdb(images[split][name], osp.join(tmp, split, f'{name}.lmdb'), osp.join(tmp, 'png', split, name))
        for (split, name), path in paths.items():
            if osp.exists(path):
                shutil.rmtree(path)
            os.makedirs(osp.dirname(path), exist_ok=True)
            os.replace(osp.join(tmp, split, f'{name}.lmdb'), path)
            written[f'{split}/{name}.lmdb'] = len(images[split][name])
    info = {
        'seed': seed,
        'train_photos': list(TRAIN_PHOTOS),
        'test_photos': list(TEST_PHOTOS),
        'keys': {split: sorted(images[split]['clean']) for split in SPLITS},
        'shapes': {split: sorted({'x'.join(map(str, v.shape)) for v in images[split]['clean'].values()})
                   for split in SPLITS},
    }
    with open(osp.join(out, 'demo_info.json'), 'w') as f:
        json.dump(info, f, indent=1)
    for rel, n in written.items():
        shape = info['shapes'][rel.split('/')[0]]
        say(f'wrote {osp.join(out, rel)}: {n} images {", ".join(shape)}')
    return written
