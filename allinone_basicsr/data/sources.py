"""Where a dataset's images come from and how their bytes become images: the sources (an LMDB made by BasicSR's
``make_lmdb_from_imgs``, keys from its ``meta_info.txt``, or a folder of image files, key = file stem), their pairing
by key, and the decoding of an entry (an encoded image, or a raw ``.npy`` HxWx3 uint8 RGB array read as a view of
its bytes) into uint8 RGB. Used by the datasets of ``mixed_degradation_dataset`` and by the recipe report."""
import functools
import io
import os
from os import path as osp

import cv2
import lmdb
import numpy as np
import torch

from allinone_basicsr.utils.lmdb import check_records, checked_lmdb, damaged_record

from basicsr.utils import FileClient
from .degradations import format_sigma
from .image_io import IMG_EXTENSIONS, to_bgr8


def dataset_where(opt, phase):
    """Prefix of error messages: which dataset of the option file the problem is in."""
    return f"datasets.{opt.get('phase', phase)} (name '{opt.get('name', '?')}')"


def _read_meta_info(meta_file, where):
    """First token of every non-empty line of a meta_info file."""
    if not osp.isfile(meta_file):
        raise FileNotFoundError(f'{where}: not found: {meta_file}')
    with open(meta_file) as f:
        return [line.split()[0] for line in f if line.strip()]


def strip_image_extension(name):
    """``'0025_0.8_0.04.png'`` -> ``'0025_0.8_0.04'``; a name without an image extension is kept whole."""
    stem, ext = osp.splitext(name)
    return stem if ext.lower() in IMG_EXTENSIONS else name


def list_source(root, where, meta_info_file=None):
    """List the images of one data source.

    Args:
        root (str): LMDB folder (name ends in ``.lmdb``) or image folder.
        where (str): Option name for error messages, e.g. ``"datasets.train (name 'x'): tasks[0].dataroot_gt"``.
        meta_info_file (str | None): Optional list of the images to use (first token per line: an LMDB key or file
            name, with or without extension). Default for LMDB: ``<root>/meta_info.txt``; for folders: all images.

    Returns:
        tuple[bool, dict]: (is_lmdb, {key: LMDB key or file path}), keys sorted.

    An LMDB is checked first (``lmdb_check``: missing, empty or truncated ``data.mdb`` -> an error naming ``where``).
    The first image is decoded here, so a source of 16-bit images is announced once, by this process, rather than by
    every DataLoader worker.
    """
    root = str(root)
    if not osp.isdir(root):
        raise FileNotFoundError(f'{where}: not found: {root}')
    is_lmdb = root.rstrip('/\\').endswith('.lmdb')
    entries = {}
    if is_lmdb:
        with checked_lmdb(root, where) as env:
            meta = meta_info_file or osp.join(root, 'meta_info.txt')
            for name in _read_meta_info(meta, f'{where}: meta_info of the LMDB'):
                key = strip_image_extension(name)  # keys may hold dots (RESIDE: 0025_0.8_0.04)
                entries[key] = key
            check_records(env, root, entries, where)  # every listed key present, the tree readable
            if entries:
                first = min(entries)
                with env.begin() as txn:
                    _probe_bit_depth(txn.get(first.encode()), f'{first!r} of LMDB {osp.realpath(root)}',
                                     osp.realpath(root))
    elif meta_info_file:
        files = {osp.splitext(v)[0]: v for v in os.listdir(root)}
        for name in _read_meta_info(meta_info_file, f'{where}: meta_info_file'):
            file = name if osp.isfile(osp.join(root, name)) else files.get(name)
            if file is None:
                raise FileNotFoundError(f'{where}: {name!r} listed in {meta_info_file} is not in {root}')
            entries[osp.splitext(file)[0]] = osp.join(root, file)
    else:
        for file in sorted(os.listdir(root)):
            key, ext = osp.splitext(file)
            if ext.lower() not in IMG_EXTENSIONS:
                continue
            if key in entries:
                raise ValueError(f'{where}: two images with the key {key!r} in {root}')
            entries[key] = osp.join(root, file)
    if not entries:
        raise ValueError(f'{where}: no images in {root}')
    entries = dict(sorted(entries.items()))
    if not is_lmdb:
        first = next(iter(entries.values()))
        with open(first, 'rb') as f:
            _probe_bit_depth(f.read(), first, osp.dirname(first))
    return is_lmdb, entries


def _probe_bit_depth(content, name, source):
    """Decode one image only for ``to_bgr8``'s once-per-source 16-bit warning; errors are left to the real read."""
    try:
        decode_image(content, name, source)
    except (KeyError, ValueError):
        pass


def pair_sources(lq, gt, where_lq, where_gt):
    """Check that two {key: path} listings hold the same keys; name the first key missing on either side."""
    for key in lq:
        if key not in gt:
            raise ValueError(f'{where_lq}: key {key!r} has no GT image in {where_gt}')
    for key in gt:
        if key not in lq:
            raise ValueError(f'{where_gt}: key {key!r} has no LQ image in {where_lq}')


def read_gt_key_map(map_file, lq, gt, where):
    """``lq_key gt_key`` per line -> {lq key: gt key}; every LQ key must be mapped onto an existing GT key."""
    if not osp.isfile(map_file):
        raise FileNotFoundError(f'{where}: not found: {map_file}')
    mapping = {}
    with open(map_file) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f'{where}: {map_file} line {number}: expected "lq_key gt_key", got {line!r}')
                mapping[parts[0]] = parts[1]
    for key in lq:
        if key not in mapping:
            raise ValueError(f'{where}: LQ key {key!r} is not in {map_file}')
        if mapping[key] not in gt:
            raise ValueError(f'{where}: LQ key {key!r} maps to GT key {mapping[key]!r}, which the GT source lacks')
    return {key: mapping[key] for key in lq}


NPY_MAGIC = b'\x93NUMPY'


@functools.lru_cache(maxsize=256)
def _npy_layout(prefix):
    """(shape, dtype, element count) of a ``.npy`` header (the magic up to the data; entries of one size share it, so
    it is parsed once). Raises ValueError for a header numpy does not read, Fortran order, or data that is not an
    image."""
    fp = io.BytesIO(prefix)
    version = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(fp)
    if fortran_order or dtype not in (np.uint8, np.uint16) or len(shape) not in (2, 3):
        raise ValueError(f'a .npy of {"Fortran" if fortran_order else "C"} order, {dtype}, shape {shape} '
                         '(expected an HxW or HxWxC uint8 / uint16 image in C order)')
    return tuple(shape), dtype, int(np.prod(shape))


def decode_npy(content, name):
    """``.npy`` bytes -> the array, a read-only view of ``content`` (no copy); errors name the image."""
    try:
        if len(content) < 12 or content[6] not in (1, 2, 3):
            raise ValueError('unsupported .npy version')
        start = 10 + int.from_bytes(content[8:10], 'little') if content[6] == 1 else \
            12 + int.from_bytes(content[8:12], 'little')
        shape, dtype, count = _npy_layout(bytes(content[:start]))
        if len(content) - start != count * dtype.itemsize:
            raise ValueError(f'{len(content) - start} data bytes for shape {shape} of {dtype}')
        return np.frombuffer(content, dtype, count, start).reshape(shape)
    except ValueError as err:
        raise ValueError(f'cannot decode image {name}: {err}') from None


def decode_image(content, name, source=None):
    """Bytes -> HxWx3 uint8 RGB (grey -> 3 channels, alpha dropped, 16-bit scaled to 8-bit with a warning once per
    ``source``, the LMDB or folder: ``image_io.to_bgr8``); errors name the image.

    Encoded images (PNG, JPEG, ...) are decoded whole; ``.npy`` bytes hold the RGB image itself (``--format raw`` of
    the preparation scripts) and give a read-only view of ``content``: copy what you modify."""
    if content is None:
        raise KeyError(f'image {name} not found')
    if content[:6] == NPY_MAGIC:  # already RGB: to_bgr8 only normalises channels and depth, never swaps them
        return to_bgr8(decode_npy(content, name), name, source)
    try:  # colour (and EXIF orientation) as BasicSR's imfrombytes, but 16-bit kept for to_bgr8
        img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    except cv2.error as err:
        raise ValueError(f'cannot decode image {name}: {err}') from None
    if img is None:
        raise ValueError(f'cannot decode image {name} ({len(content)} bytes)')
    return cv2.cvtColor(to_bgr8(img, name, source), cv2.COLOR_BGR2RGB)


def center_crop_to_multiple(img, base):
    """Centre crop H and W down to multiples of ``base`` (the official BSD68 / PromptIR ``crop_img``)."""
    h, w = img.shape[:2]
    ch, cw = h % base, w % base
    return img[ch // 2:h - ch + ch // 2, cw // 2:w - cw + cw // 2, ...]


def to_tensor(img):
    """HxWx3 uint8 RGB (any strides) -> 3xHxW float32 tensor in [0, 1]: ``float32(x) / 255`` in one pass, as BasicSR's
    ``img2tensor(img.astype(np.float32) / 255.)`` gives it (same values, same CHW view of an HWC array)."""
    if not img.flags.c_contiguous and img.transpose(1, 0, 2).flags.c_contiguous:  # augment's rot90: a transposed view
        img = cv2.transpose(img.transpose(1, 0, 2))  # numpy's transposed copy, by OpenCV's faster 3-channel kernel
    out = np.empty(img.shape, np.float32)
    np.divide(img, np.float32(255.), out=out)
    return torch.from_numpy(out.transpose(2, 0, 1))


def noisy_name(path, sigma):
    """``/a/b.png`` -> ``/a/b_sigma25.png``; LMDB key ``b`` -> ``b_sigma25`` (basename stays unique per image)."""
    root, ext = osp.splitext(path)
    if ext.lower() not in IMG_EXTENSIONS:
        root, ext = path, ''
    return f'{root}_sigma{format_sigma(sigma)}{ext}'


class SourceReader:
    """Reads images from several LMDBs / folders; FileClients are created lazily (in each worker)."""

    def __init__(self):
        self.lmdb_paths = []  # client key of an LMDB = 'db<index>'
        self.file_client = None
        self.lmdb_client = None

    def register(self, root, is_lmdb):
        """Returns the client key for an LMDB root (shared by equal paths), None for a folder."""
        if not is_lmdb:
            return None
        root = osp.realpath(str(root))
        if root not in self.lmdb_paths:
            self.lmdb_paths.append(root)
        return f'db{self.lmdb_paths.index(root)}'

    def read_bytes(self, path, client_key):
        """The encoded bytes at ``path`` (LMDB key if ``client_key`` is set, else file path)."""
        if client_key is None:
            if self.file_client is None:
                self.file_client = FileClient('disk')
            try:
                return self.file_client.get(path)
            except FileNotFoundError:
                raise FileNotFoundError(f'image file not found: {path}') from None
        if self.lmdb_client is None:
            self.lmdb_client = FileClient('lmdb', db_paths=list(self.lmdb_paths),
                                          client_keys=[f'db{i}' for i in range(len(self.lmdb_paths))])
        try:
            content = self.lmdb_client.get(path, client_key)
        except lmdb.Error as err:
            raise damaged_record(self.lmdb_path(client_key), path, f'{type(err).__name__}: {err}') from None
        if content is None:
            raise KeyError(f'key {path!r} (listed in meta_info) not found in LMDB {self.lmdb_path(client_key)}')
        return content

    def lmdb_path(self, client_key):
        return self.lmdb_paths[int(client_key[2:])]

    def read(self, path, client_key):
        """Returns the image at ``path`` (LMDB key if ``client_key`` is set, else file path) as uint8 RGB."""
        content = self.read_bytes(path, client_key)
        if client_key is None:
            return decode_image(content, path, osp.dirname(path))
        db_path = self.lmdb_path(client_key)
        try:
            return decode_image(content, f'{path!r} of LMDB {db_path}', db_path)
        except ValueError as err:
            if str(err).startswith('cannot decode'):  # an LMDB record that does not decode: the LMDB is damaged
                raise damaged_record(db_path, path, err) from None
            raise

    def __getstate__(self):  # never pickle open clients into workers
        state = self.__dict__.copy()
        state['file_client'] = state['lmdb_client'] = None
        return state
