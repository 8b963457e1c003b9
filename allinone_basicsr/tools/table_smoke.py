"""``allinone-table --smoke``: every row of the tables trained and tested at demo scale on the CPU.

A tiny data tree in the layout the option files read is built under the smoke folder from the demo photos
(``data/demo_set.py``, with synthetic blur and low light, and the key lists the files name); each row's option files
are rewritten there at smoke size (``utils/smoke.py``: the arch's size keys only, switches, classes and protocol
kept; 32² patches, batch 2, a few iterations; data paths absolute), then trained and tested in this process with the
package's own pipelines, BasicSR's log going to ``smoke.log``.
"""
import contextlib
import io
import logging
import os
import time
import traceback
import warnings
from os import path as osp

import yaml

from allinone_basicsr.data.demo_set import make_images
from allinone_basicsr.tools.table_spec import TableSpecError, read_results
from allinone_basicsr.utils.logs import basicsr_log_to
from allinone_basicsr.utils.metric_table import finite_mean
from allinone_basicsr.utils.smoke import shrink_test_options, shrink_train_options
from allinone_basicsr.utils.smoke import smoke_network as _smoke_network

SMOKE_MACS_SIZE = 64
SMOKE_TRAIN_SHAPE, SMOKE_TEST_SHAPE = (48, 48), (48, 64)  # (h, w): >= the 32² patches; test a multiple of 16
SMOKE_TRAIN_IMAGES, SMOKE_TEST_IMAGES = 6, 1


def _blur(img):
    import cv2
    import numpy as np
    kernel = np.zeros((7, 7), np.float32)
    kernel[3, :] = 1 / 7  # horizontal motion blur
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT)


def _dark(img):
    import numpy as np
    return np.clip(np.round(255 * (img / 255.0)**1.8 * 0.35), 0, 255).astype(np.uint8)


SMOKE_KINDS = (  # (prefix of the LMDB's name, degradation of its LQ side)
    ('denoise', 'clean'), ('bsd68', 'clean'), ('rain', 'rain'), ('haze', 'haze'), ('sots', 'haze'), ('gopro', 'blur'),
    ('lol', 'lowlight'))


def _lmdb_kind(path):
    """(split, kind of images) of a data path the option files use, from its name; None when unknown."""
    parts = path.replace('\\', '/').split('/')
    split = 'train' if 'train' in parts else 'test' if 'test' in parts else None
    name = osp.basename(path)
    if split is None or not name.endswith('.lmdb'):
        return None
    stem = name[:-len('.lmdb')]
    for prefix, kind in SMOKE_KINDS:
        if stem.startswith(prefix):
            return split, kind if stem.endswith('_lq') or kind == 'clean' else 'clean'
    return None


def smoke_data_paths(rows):
    """{data path: (split, kind)} and {list file: (lmdb path, 'pairs' | 'subset')} of every row's option files."""
    lmdbs, lists = {}, {}
    for row in rows:
        for which, opt in (('train', row.train_opt), ('test', row.test_opt)):
            datasets = dict(opt.get('datasets') or {})
            entries = []
            for key, d in datasets.items():
                entries += [(f'datasets.{key}', d)]
                entries += [(f'datasets.{key}.tasks[{i}]', t) for i, t in enumerate(d.get('tasks') or [])]
            for where, d in entries:
                for key in ('dataroot_gt', 'dataroot_lq'):
                    if not d.get(key):
                        continue
                    kind = _lmdb_kind(d[key])
                    if kind is None:
                        raise TableSpecError(f"row '{row.label}': {which} file {getattr(row, which + '_name')}"
                                             f': {where}.{key} = {d[key]}: --smoke knows no demo data for this path '
                                             f'(known: datasets/{{train,test}}/<{"|".join(p for p, _ in SMOKE_KINDS)}'
                                             '>*[_lq|_gt].lmdb)')
                    lmdbs[d[key]] = kind
                if d.get('gt_key_map'):
                    lists[d['gt_key_map']] = (d.get('dataroot_lq'), 'pairs')
                if d.get('meta_info_file'):
                    lists[d['meta_info_file']] = (d.get('dataroot_lq') or d.get('dataroot_gt'), 'subset')
    return lmdbs, lists


def _write_lmdb(images, path):
    import cv2

    from basicsr.utils.lmdb_util import LmdbMaker
    os.makedirs(osp.dirname(path), exist_ok=True)
    maker = LmdbMaker(path, map_size=64 << 20)
    for key in sorted(images):
        img = images[key]
        ok, buf = cv2.imencode('.png', img[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok, key
        maker.put(buf.tobytes(), key, img.shape)
    maker.close()


def build_smoke_data(root, rows, say=print):
    """The data tree every row reads (``root/datasets/...``), from the demo photos; kept when complete."""
    import cv2
    lmdbs, lists = smoke_data_paths(rows)
    todo = [p for p in lmdbs if not osp.isfile(osp.join(root, p, 'meta_info.txt'))]
    todo_lists = [p for p in lists if not osp.isfile(osp.join(root, p))]
    if not todo and not todo_lists:
        say(f'smoke data: {len(lmdbs)} LMDBs already in {osp.join(root, "datasets")}')
        return
    images = make_images(seed=0)
    clean = {}
    for split, shape, count in (('train', SMOKE_TRAIN_SHAPE, SMOKE_TRAIN_IMAGES),
                                ('test', SMOKE_TEST_SHAPE, SMOKE_TEST_IMAGES)):
        keys = sorted(images[split]['clean'])[:count] if split == 'test' else \
            sorted(images[split]['clean'])[::max(1, len(images[split]['clean']) // count)][:count]
        h, w = shape

        def small(img):
            return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)

        clean[split] = {
            'clean': {k: small(images[split]['clean'][k]) for k in keys},
            'rain': {k: small(images[split]['rain_lq'][k]) for k in keys},
            'haze': {k: small(images[split]['haze_lq'][k]) for k in keys},
        }
        clean[split]['blur'] = {k: _blur(v) for k, v in clean[split]['clean'].items()}
        clean[split]['lowlight'] = {k: _dark(v) for k, v in clean[split]['clean'].items()}
    for path in sorted(todo):
        split, kind = lmdbs[path]
        full = osp.join(root, path)
        if osp.exists(full):
            import shutil
            shutil.rmtree(full)
        _write_lmdb(clean[split][kind], full)
    for path in sorted(lists):
        lmdb, mode = lists[path]
        split, _ = lmdbs.get(lmdb, ('train', None))
        keys = sorted(clean[split]['clean'])
        text = ''.join(f'{k} {k}\n' for k in keys) if mode == 'pairs' else ''.join(f'{k}\n' for k in keys[::2])
        os.makedirs(osp.dirname(osp.join(root, path)), exist_ok=True)
        with open(osp.join(root, path), 'w') as f:
            f.write(text)
    say(f'smoke data: {len(todo)} LMDBs and {len(lists)} key lists written under {osp.join(root, "datasets")} '
        f'(train {SMOKE_TRAIN_IMAGES} × {SMOKE_TRAIN_SHAPE[0]}×{SMOKE_TRAIN_SHAPE[1]}, test {SMOKE_TEST_IMAGES} × '
        f'{SMOKE_TEST_SHAPE[0]}×{SMOKE_TEST_SHAPE[1]} per set; demo photos, synthetic rain/haze/blur/low light)')


def smoke_network(network_g):
    """``network_g`` at demo scale (``utils.smoke``), or a TableSpecError naming the arch."""
    try:
        return _smoke_network(network_g)
    except ValueError as err:
        raise TableSpecError(f'--smoke: {err}') from None


def smoke_train_options(opt, iters):
    return shrink_train_options(opt, iters)


def smoke_test_options(opt, train_name):
    return shrink_test_options(opt, f'experiments/{train_name}/models/net_g_latest.pth')


def _run_pipeline(pipeline, option_file, root):
    """``pipeline(root, ['-opt', option_file])`` (our train / test entry); what it prints goes to BasicSR's log."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return pipeline(root, ['-opt', option_file])
    finally:
        if printed.getvalue().strip():
            logging.getLogger('basicsr').info(f'printed: {printed.getvalue().strip()}')


def absolute_paths(opt, root):
    """``opt`` (a smoke option file) with its data, key-list and weight paths under ``root`` (they are relative to
    the folder the run starts in): the runs need no change of working directory."""
    def join(path):
        return path if not path or osp.isabs(path) else osp.join(root, path)

    for dataset in (opt.get('datasets') or {}).values():
        for entry in [dataset] + list(dataset.get('tasks') or []):
            for key in ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'gt_key_map'):
                if entry.get(key):
                    entry[key] = join(entry[key])
    path = opt.get('path') or {}
    if path.get('pretrain_network_g'):
        path['pretrain_network_g'] = join(path['pretrain_network_g'])
    return opt


def run_smoke(specs, smoke_dir, iters=3, say=print):
    """Train and test every distinct row of ``specs`` at demo scale in ``smoke_dir``; returns {(train, test): error
    message or None}."""
    import allinone_basicsr  # noqa: F401  (applies the basicsr fixes, registers everything)
    from allinone_basicsr.test import test_pipeline
    from allinone_basicsr.train import train_pipeline
    rows, owners = {}, {}
    for spec in specs:
        for row in spec.rows:
            rows.setdefault((row.train, row.test), row)
            owners.setdefault((row.train, row.test), []).append(f'{spec.name}: {row.label}')
    os.makedirs(osp.join(smoke_dir, 'options'), exist_ok=True)
    start = time.time()
    build_smoke_data(smoke_dir, list(rows.values()), say=say)
    say(f'smoke data ready in {time.time() - start:.1f} s; {len(rows)} distinct rows of {len(specs)} table(s); '
        f'log: {osp.join(smoke_dir, "smoke.log")}')
    outcome = {}
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is as fast, and does not spin on a busy machine
    with basicsr_log_to(osp.join(smoke_dir, 'smoke.log')), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # random CLIP / ResNet weights, deprecations: the log has what matters
        for i, (key, row) in enumerate(rows.items(), start=1):
            train_file = osp.join(smoke_dir, 'options', osp.basename(row.train))
            test_file = osp.join(smoke_dir, 'options', osp.basename(row.test))
            names = '; '.join(owners[key])
            say(f'[{i}/{len(rows)}] {names}: {row.train_name} + {row.test_name}', end=' ... ')
            t0 = time.time()
            stage = 'train'
            try:
                train_opt = smoke_train_options(row.train_opt, iters)
                with open(train_file, 'w') as f:
                    yaml.safe_dump(absolute_paths(train_opt, smoke_dir), f, sort_keys=False)
                _run_pipeline(train_pipeline, train_file, smoke_dir)
                t1 = time.time()
                stage = 'test'
                with open(test_file, 'w') as f:
                    yaml.safe_dump(absolute_paths(smoke_test_options(row.test_opt, train_opt['name']), smoke_dir), f,
                                   sort_keys=False)
                _run_pipeline(test_pipeline, test_file, smoke_dir)
                results = read_results(osp.join(smoke_dir, 'results', row.test_opt['name']))
                if results is None:
                    raise RuntimeError(f"the test wrote no results/{row.test_opt['name']}/metrics.csv")
                psnr = finite_mean(r.get('psnr') for r in results.values())
                say(f'trained {iters} it. {t1 - t0:.1f} s, tested {len(results)} sets {time.time() - t1:.1f} s'
                    + (f', mean PSNR {psnr:.2f}' if psnr is not None else ''))
                outcome[key] = None
            except Exception as err:  # noqa: BLE001 (one failing row must not hide the others)
                message = f'{stage} failed: {type(err).__name__}: {err}'
                say(f'FAILED ({message.splitlines()[0][:300]})')
                logging.getLogger('basicsr').error(f'{names}: {message}\n{traceback.format_exc()}')
                outcome[key] = message
    torch.set_num_threads(threads)
    return outcome
