"""Shared engine of prepare_3task.py / prepare_5task.py: raw folders -> checked pairs -> BasicSR LMDBs.

A *job* writes one LMDB (a clean-only set) or two LMDBs of one task (``<name>_lq.lmdb`` and ``<name>_gt.lmdb``).
Its *units* are decoded, checked and PNG-encoded (or, with ``--format raw``, stored as ``.npy`` arrays of the RGB
image, which the training loader reads without decoding) in worker processes and written by BasicSR's ``LmdbMaker``
in the main process. Each LMDB is written under a temporary name and renamed into place only once complete, with a
``prepare_info.json`` beside its ``meta_info.txt``; a re-run skips LMDBs that are complete (``--force`` rebuilds)
unless the raw tree changed (other sources or keys than the LMDB's): those are rebuilt, with a warning naming them.
"""
import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from multiprocessing import Pool
from os import path as osp

import cv2
import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a source checkout

import allinone_basicsr  # noqa: E402,F401  (patches basicsr before it is imported)
from allinone_basicsr.data.image_io import IMG_EXTENSIONS, to_bgr8  # noqa: E402

from basicsr.utils.lmdb_util import LmdbMaker  # noqa: E402

INFO_FILE = 'prepare_info.json'


class PrepError(Exception):
    """A problem with the raw data: the message says what, where, and by which rule."""


@dataclass
class Unit:
    """One source image, or an LQ/GT pair, to write.

    sources: image paths (LQ first for pairs); outs: LMDB index per source (None = read only, e.g. to check the
    size of a GT image written by another unit); keys: LMDB key per source; crop: (size, step) sub-crops.
    """
    sources: tuple
    outs: tuple
    keys: tuple
    crop: tuple = None


@dataclass
class Job:
    """LMDBs of one task: ``lmdbs`` are paths relative to --out without ``.lmdb``; ``extra`` = {file: text}."""
    title: str
    lmdbs: tuple
    units: list
    expected: int = None
    found: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> list of names
    extra: dict = field(default_factory=dict)
    written: int = 0
    status: str = ''


def natural_key(text):
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', text)]


def require_dir(raw, rel, what):
    """``raw/rel`` must be a folder; the error names the --raw argument, the path and what belongs there."""
    path = osp.join(raw, rel)
    if not osp.isdir(path):
        raise PrepError(f'--raw {raw}: missing folder {path} ({what}); see docs/data.md "Raw layout"')
    return path


def list_images(folder):
    """Image files of a folder, natural order; other files are ignored."""
    return sorted((f for f in os.listdir(folder) if osp.splitext(f)[1].lower() in IMG_EXTENSIONS), key=natural_key)


def read_list_file(raw, candidates):
    """First existing list file among ``raw/<candidate>``: (path, entries) or (None, None)."""
    for rel in candidates:
        path = osp.join(raw, rel)
        if osp.isfile(path):
            with open(path) as f:
                return path, [line.strip() for line in f if line.strip()]
    return None, None


def select_listed(job, list_path, listed, available, folder, resolve=None):
    """Keep the entries of an official list file (in its order); record the rest in ``job.skipped``.

    ``available``: names found on disk; ``resolve(listed name)`` -> a name of ``available`` or None (default: the
    same name). Listed names not found, and names found but not listed, are skipped with that reason.
    """
    available = set(available)
    resolve = resolve or (lambda name: name if name in available else None)
    chosen, missing = [], []
    for name in listed:
        found = resolve(name)
        (chosen.append(found) if found else missing.append(name))
    list_name = osp.basename(list_path)
    if missing:
        job.skipped[f'listed in {list_name} but not in {folder}'] = missing
    unlisted = sorted(available - set(chosen), key=natural_key)
    if unlisted:
        job.skipped[f'not listed in {list_name}'] = unlisted
    return chosen


def fail_unpaired(unpaired, rule, folder):
    if unpaired:
        shown = ', '.join(unpaired[:5]) + (f' ... ({len(unpaired)} in all)' if len(unpaired) > 5 else '')
        raise PrepError(f'{folder}: no ground truth for {shown}; rule: {rule}')


def add_singles(job, folder, files, key_of=None):
    """Append a unit per clean image (one LMDB); returns the job (``found`` updated)."""
    for file in files:
        key = key_of(file) if key_of else osp.splitext(file)[0]
        job.units.append(Unit((osp.join(folder, file),), (0,), (key,)))
    job.found = len(job.units)
    return job


def add_pairs(job, lq_dir, files, gt_of, rule, key_of=None, crop=None):
    """Append an LQ/GT unit per file of ``lq_dir`` (``gt_of(file)``: its GT path or None; both get one key).

    Stops, listing the first few, when an LQ image has no GT file. Returns the job (``found`` updated).
    """
    unpaired = []
    for file in files:
        gt = gt_of(file)
        if gt is None or not osp.isfile(gt):
            unpaired.append(file)
            continue
        key = key_of(file) if key_of else osp.splitext(file)[0]
        job.units.append(Unit((osp.join(lq_dir, file), gt), (0, 1), (key, key), crop))
    fail_unpaired(unpaired, rule, lq_dir)
    job.found = len(job.units)
    return job


def check_keys(job):
    """Keys must be ASCII (LMDB) and unique per LMDB."""
    seen = [dict() for _ in job.lmdbs]
    for unit in job.units:
        for out, key, src in zip(unit.outs, unit.keys, unit.sources):
            if out is None:
                continue
            if not key.isascii() or ' ' in key:
                raise PrepError(f'{src}: key {key!r} must be ASCII without spaces')
            if key in seen[out] and unit.crop is None:
                raise PrepError(f'two images give the key {key!r}: {seen[out][key]} and {src}')
            seen[out][key] = src


# ---------------------------------------------------------------------------------------------------------- workers

def read_image(path):
    """Image file -> HxWx3 uint8 BGR; grey and alpha converted, 16-bit scaled to 8-bit with a warning."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PrepError(f'cannot read image {path} (missing, corrupt or an unsupported format)')
    try:
        return to_bgr8(img, path)
    except ValueError as error:
        raise PrepError(str(error)) from error


def crop_boxes(h, w, size, step):
    """NAFNet's GoPro sub-crops: a grid with ``step`` plus a last crop flush with the border; whole if smaller."""
    def starts(n):
        if n <= size:
            return [0]
        s = list(range(0, n - size + 1, step))
        if n - (s[-1] + size) > 0:
            s.append(n - size)
        return s
    return [(y, x, min(size, h), min(size, w)) for y in starts(h) for x in starts(w)]


def encode_unit(args):
    """Worker: decode the unit's images, check sizes, crop, encode. Returns [(out, key, bytes, shape), ...]."""
    unit, params = args
    imgs = [read_image(p) for p in unit.sources]
    if len(imgs) == 2 and imgs[0].shape != imgs[1].shape:
        raise PrepError(f'LQ {unit.sources[0]} {imgs[0].shape[:2]} and GT {unit.sources[1]} {imgs[1].shape[:2]} '
                        f'differ in size')
    h, w = imgs[0].shape[:2]
    boxes = crop_boxes(h, w, *unit.crop) if unit.crop else [None]
    results = []
    for index, box in enumerate(boxes, 1):
        for img, src, out, key in zip(imgs, unit.sources, unit.outs, unit.keys):
            if out is None:
                continue
            if box is not None:
                y, x, ch, cw = box
                img, key = img[y:y + ch, x:x + cw], f'{key}_s{index:03d}'
            if params['format'] == 'source' and box is None and _is_plain_8bit(src):
                with open(src, 'rb') as f:
                    data = f.read()
            elif params['format'] == 'raw':
                data = encode_raw(img)
            else:
                ok, buf = cv2.imencode('.png', img, [cv2.IMWRITE_PNG_COMPRESSION, params['compress_level']])
                if not ok:
                    raise PrepError(f'{src}: PNG encoding failed')
                data = buf.tobytes()
            results.append((out, key, data, img.shape))
    return results


def encode_raw(img):
    """HxWx3 uint8 BGR -> ``.npy`` bytes of the RGB image (what ``decode_image`` of the PNG returns): the loader
    reads it as a view, no decoding. Size: H·W·3 bytes + a 128-byte header."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(img[..., ::-1]), allow_pickle=False)
    return buf.getvalue()


def _is_plain_8bit(path):
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    return img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


# ------------------------------------------------------------------------------------------------------- the writer

def _complete(path):
    return osp.isfile(osp.join(path, INFO_FILE)) and osp.isfile(osp.join(path, 'meta_info.txt'))


def _meta_keys(path):
    """The keys of a complete LMDB's meta_info.txt (``<key>.png (h,w,c) level`` per line)."""
    with open(osp.join(path, 'meta_info.txt')) as f:
        return {re.sub(r'\.png$', '', line.split()[0]) for line in f if line.strip()}


def stale_lmdb(job, index, path):
    """Why the complete LMDB ``path`` (``job.lmdbs[index]``) no longer matches the raw tree, or None: the sources
    found now differ in number from those it was built from (``prepare_info.json``), or the keys the job gives now
    differ from its meta_info's (sub-crop suffixes ``_sNNN`` aside). Reads two small text files."""
    with open(osp.join(path, INFO_FILE)) as f:
        built_from = json.load(f).get('sources_found')
    cropped = any(unit.crop for unit in job.units)
    now = {key for unit in job.units for out, key in zip(unit.outs, unit.keys) if out == index}
    held = {re.sub(r'_s\d{3}$', '', k) for k in _meta_keys(path)} if cropped else _meta_keys(path)
    new, gone = sorted(now - held, key=natural_key), sorted(held - now, key=natural_key)
    if not new and not gone and built_from in (None, job.found):
        return None
    parts = [f'the raw tree gives {job.found} source(s), it was built from {built_from}'] \
        if built_from not in (None, job.found) else []
    parts += [f'{len(new)} key(s) not in it (e.g. {new[0]})'] if new else []
    parts += [f'{len(gone)} of its key(s) no longer in the raw tree (e.g. {gone[0]})'] if gone else []
    return '; '.join(parts)


def run_job(job, out_root, workers=1, compress_level=1, fmt='png', force=False):
    """Write the job's LMDBs atomically (skipped when complete unless ``force``, or when stale: rebuilt, with a
    warning naming each stale LMDB and why, :func:`stale_lmdb`); fills job.written/status."""
    from tqdm import tqdm

    finals = [osp.join(out_root, f'{name}.lmdb') for name in job.lmdbs]
    if not force and all(_complete(p) for p in finals):
        stale = [(p, stale_lmdb(job, i, p)) for i, p in enumerate(finals)]
        stale = [(p, why) for p, why in stale if why]
        if not stale:
            with open(osp.join(finals[0], INFO_FILE)) as f:
                job.written = json.load(f)['entries']
            job.status = 'exists, skipped'
            return job
        for path, why in stale:
            print(f'WARNING: {path} is stale: {why}. Rebuilding {", ".join(finals)} from the raw tree.',
                  file=sys.stderr)
        force = 'stale'
    check_keys(job)
    temps = [osp.join(osp.dirname(p), f'.partial-{osp.basename(p)}') for p in finals]
    for tmp in temps:
        os.makedirs(osp.dirname(tmp), exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
    makers = [LmdbMaker(tmp, compress_level=compress_level) for tmp in temps]
    counts = [0] * len(finals)
    params = {'compress_level': compress_level, 'format': fmt}
    tasks = ((unit, params) for unit in job.units)
    try:
        if workers > 1:
            pool = Pool(workers)
            results = pool.imap(encode_unit, tasks, chunksize=4)
        else:
            pool, results = None, map(encode_unit, tasks)
        for batch in tqdm(results, total=len(job.units), desc=job.title, unit='img', dynamic_ncols=True):
            for out, key, data, shape in batch:
                makers[out].put(data, key, shape)
                counts[out] += 1
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        if workers > 1 and pool is not None:
            pool.terminate()
        for maker in makers:
            maker.close()
        for tmp in temps:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for maker in makers:
        maker.close()
    for i, (tmp, final) in enumerate(zip(temps, finals)):
        for name, text in job.extra.get(i, {}).items():
            with open(osp.join(tmp, name), 'w') as f:
                f.write(text)
        with open(osp.join(tmp, INFO_FILE), 'w') as f:
            json.dump({'task': job.title, 'entries': counts[i], 'sources_found': job.found,
                       'format': fmt, 'compress_level': compress_level}, f, indent=1)
        old = None
        if osp.exists(final):
            old = f'{tmp}.old'
            os.replace(final, old)
        os.replace(tmp, final)  # the complete LMDB appears under its name in one step
        if old:
            shutil.rmtree(old, ignore_errors=True)
    job.written = counts[0]
    job.status = 'stale, rebuilt' if force == 'stale' else 'written'
    return job


def summary_table(jobs):
    """Markdown: found vs expected per task, entries written, skipped with reasons."""
    rows = ['| task | LMDB | found | expected | entries | skipped | status |', '|---|---|---|---|---|---|---|']
    for job in jobs:
        expected = '' if job.expected is None else f'{job.expected:,}'
        mark = ' ⚠' if job.expected is not None and job.found != job.expected else ''
        skipped = '; '.join(f'{len(names)} {reason} (e.g. {names[0]})' for reason, names in job.skipped.items())
        rows.append(f'| {job.title} | {", ".join(n + ".lmdb" for n in job.lmdbs)} | {job.found:,}{mark} | '
                    f'{expected} | {job.written:,} | {skipped or 0} | {job.status} |')
    return '\n'.join(rows)


def run_all(jobs, args, script):
    """Run every job, print and write the summary (``<out>/<script>_summary.md``)."""
    for job in jobs:
        run_job(job, args.out, workers=args.workers, compress_level=args.compress_level, fmt=args.format,
                force=args.force)
    table = summary_table(jobs)
    print(f'\n{table}\n\n⚠ = found differs from the count of the official data (a subset, or a different release).')
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, f'{script}_summary.md'), 'w') as f:
        f.write(table + '\n')
    return table


def add_arguments(parser):
    parser.add_argument('--raw', required=True,
                        help='folder with the unpacked downloads (layout: docs/data.md "Raw layout")')
    parser.add_argument('--out', default='datasets', help='output folder (default: datasets, as options/*.yml)')
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='processes decoding and encoding images (default: min(4, CPUs))')
    parser.add_argument('--compress-level', type=int, default=1, choices=range(10), metavar='0-9',
                        help='PNG compression level (default 1, as BasicSR)')
    parser.add_argument('--format', choices=('png', 'source', 'raw'), default='png',
                        help='png: decode and store as PNG (default); source: store 8-bit RGB source files '
                             'byte for byte (JPEG stays JPEG, smaller) when not cropped; raw: store the decoded '
                             'RGB pixels as .npy, H*W*3 bytes per image (more disk than PNG, far more than JPEG '
                             'sources), read without decoding: the fastest training loader (docs/benchmarks.md)')
    parser.add_argument('--force', action='store_true', help='rebuild LMDBs that are already complete')
    return parser


def main_guard(fn):
    """Run ``fn``; a PrepError ends the program with its message and exit status 2 (no traceback)."""
    try:
        return fn()
    except PrepError as error:
        print(f'error: {error}', file=sys.stderr)
        sys.exit(2)
