"""A truncated or damaged LMDB is an error naming it (and the option key), never a SIGBUS: checked when our datasets
list an LMDB source and when BasicSR's LMDB backend opens one (stock datasets), with or without loader workers."""
import os
import re
import shutil
from os import path as osp

import cv2
import lmdb
import numpy as np
import pytest
from pipeline_util import run_python

import allinone_basicsr  # noqa: F401  (import before basicsr)
from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset, MixedDegradationDataset

from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils import FileClient
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

KEYS = [f'im{i}' for i in range(6)]


def _make_lmdb(root, name, seed):
    """6 random 64x64 PNGs (about 3 pages each) -> ``<root>/<name>.lmdb`` with BasicSR's make_lmdb_from_imgs."""
    folder = root / name
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for key in KEYS:
        cv2.imwrite(str(folder / f'{key}.png'), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    make_lmdb_from_imgs(str(folder), str(root / f'{name}.lmdb'), [f'{k}.png' for k in KEYS], KEYS)
    return str(root / f'{name}.lmdb')


@pytest.fixture(scope='module')
def lmdbs(tmp_path_factory):
    """An intact GT LMDB and a copy of an LQ LMDB whose data.mdb lost its second half (meta pages kept)."""
    root = tmp_path_factory.mktemp('lmdb_check')
    gt, lq = _make_lmdb(root, 'gt', 0), _make_lmdb(root, 'lq', 1)
    env = lmdb.open(lq, readonly=True, lock=False)
    psize, need = env.stat()['psize'], (env.info()['last_pgno'] + 1) * env.stat()['psize']
    env.close()
    size = osp.getsize(osp.join(lq, 'data.mdb'))
    assert size >= need >= 20 * psize  # several pages of data
    truncated = str(root / 'lq_cut.lmdb')
    shutil.copytree(lq, truncated)
    keep = size // 2 // psize * psize
    os.truncate(osp.join(truncated, 'data.mdb'), keep)
    return {'root': root, 'gt': gt, 'lq': lq, 'truncated': truncated, 'psize': psize, 'need': need, 'keep': keep}


def _train_opt(lq, gt):
    return {'name': 'x', 'phase': 'train', 'type': 'MixedDegradationDataset', 'degradation_classes': ['noise', 'rain'],
            'gt_size': 32, 'tasks': [{'name': 'denoise', 'degradation': 'noise', 'dataroot_gt': gt, 'noise_sigma': 25},
                                     {'name': 'derain', 'degradation': 'rain', 'dataroot_lq': lq, 'dataroot_gt': gt}]}


def _paired_opt(lq, gt):
    return {'name': 'stock', 'phase': 'train', 'type': 'PairedImageDataset', 'scale': 1, 'gt_size': 32,
            'dataroot_lq': lq, 'dataroot_gt': gt, 'io_backend': {'type': 'lmdb'}, 'filename_tmpl': '{}',
            'use_hflip': False, 'use_rot': False}


def test_our_datasets_name_the_truncated_lmdb_and_the_option_key(lmdbs):
    cut, keep, need = lmdbs['truncated'], lmdbs['keep'], lmdbs['need']
    with pytest.raises(ValueError) as err:
        MixedDegradationDataset(_train_opt(cut, lmdbs['gt']))
    assert str(err.value).startswith(f"datasets.train (name 'x'): tasks[1].dataroot_lq: LMDB {cut} is truncated: "
                                     f'data.mdb has {keep} bytes, its pages need {need}')
    with pytest.raises(ValueError, match=r"^datasets.val \(name 't'\): dataroot_gt: LMDB .*lq_cut.lmdb is truncated"):
        AllInOneTestDataset({'name': 't', 'degradation': 'noise', 'dataroot_gt': cut, 'noise_sigma': 15})
    # the intact LMDBs pass, and the check leaves no environment open (lmdb refuses a second open per process)
    assert len(MixedDegradationDataset(_train_opt(lmdbs['lq'], lmdbs['gt']))) == 12
    lmdb.open(lmdbs['lq'], readonly=True, lock=False).close()


def test_stock_basicsr_dataset_gets_the_error_when_the_backend_opens_the_lmdb(lmdbs):
    cut = lmdbs['truncated']
    message = '^' + re.escape(f'LMDB {cut} is truncated: data.mdb has {lmdbs["keep"]} bytes, its pages need '
                              f'{lmdbs["need"]}')
    with pytest.raises(ValueError, match=message):
        FileClient('lmdb', db_paths=[cut, lmdbs['gt']], client_keys=['lq', 'gt'])
    dataset = PairedImageDataset(_paired_opt(cut, lmdbs['gt']))  # lists meta_info.txt only, opens lazily
    with pytest.raises(ValueError, match=message):
        dataset[0]
    assert PairedImageDataset(_paired_opt(lmdbs['lq'], lmdbs['gt']))[0]['gt'].shape == (3, 32, 32)


@pytest.mark.parametrize('damage', ['missing', 'empty', 'not an LMDB', 'half a meta page', 'meta pages only'])
def test_damaged_data_file_is_named(lmdbs, damage, tmp_path):
    path = str(tmp_path / 'damaged.lmdb')
    shutil.copytree(lmdbs['lq'], path)
    data_file, psize = osp.join(path, 'data.mdb'), lmdbs['psize']
    if damage == 'missing':
        os.remove(data_file)
    elif damage == 'not an LMDB':
        with open(data_file, 'wb') as f:
            f.write(b'x' * 3 * psize)
    else:
        os.truncate(data_file, {'empty': 0, 'half a meta page': psize + 40, 'meta pages only': 2 * psize}[damage])
    expected = {'missing': (FileNotFoundError, 'no data.mdb in the folder'),
                'empty': (ValueError, 'data.mdb is empty'),
                'not an LMDB': (ValueError, 'cannot be opened'),
                'half a meta page': (ValueError, 'cannot be opened'),
                'meta pages only': (ValueError, f'is truncated: data.mdb has {2 * psize} bytes')}[damage]
    with pytest.raises(expected[0]) as err:
        MixedDegradationDataset(_train_opt(lmdbs['lq'], path))
    assert str(err.value).startswith(f"datasets.train (name 'x'): tasks[0].dataroot_gt: LMDB {path}")
    assert expected[1] in str(err.value)
    with pytest.raises(expected[0], match=f'^{re.escape(f"LMDB {path}")}.*{re.escape(expected[1])}'):
        FileClient('lmdb', db_paths=path)
    from allinone_basicsr.utils.lmdb import BrokenLmdbError, check_lmdb
    with pytest.raises(BrokenLmdbError if expected[0] is ValueError else expected[0], match=re.escape(expected[1])):
        check_lmdb(path)


# Builds a training set and its loader as BasicSR's train.py does, and reads every batch.
ITERATE = '''
import sys
import allinone_basicsr  # noqa: F401
from basicsr.data import build_dataloader, build_dataset
kind, lq, gt, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
opt = dict(name='x', phase='train', scale=1, gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=workers,
           dataset_enlarge_ratio=1, use_shuffle=False)
if kind == 'ours':
    opt.update(type='MixedDegradationDataset', degradation_classes=['noise', 'rain'],
               tasks=[{'name': 'derain', 'degradation': 'rain', 'dataroot_lq': lq, 'dataroot_gt': gt}])
else:
    opt.update(type='PairedImageDataset', dataroot_lq=lq, dataroot_gt=gt, io_backend={'type': 'lmdb'},
               filename_tmpl='{}', use_hflip=False, use_rot=False)
for batch in build_dataloader(build_dataset(opt), opt, num_gpu=0, dist=False, sampler=None, seed=0):
    pass
print('read every batch')
'''


@pytest.mark.parametrize('kind, workers', [('ours', 0), ('stock', 2)])
def test_training_loader_exits_with_the_message_not_a_signal(lmdbs, kind, workers):
    """Today's failure: SIGBUS (return code -7) without a message (workers: PyTorch blames shared memory)."""
    cut = lmdbs['truncated']
    proc = run_python(['-c', ITERATE, kind, cut, lmdbs['gt'], str(workers)], lmdbs['root'], check=False, timeout=120)
    assert proc.returncode == 1, f'return code {proc.returncode} (negative: killed by a signal)\n{proc.stderr[-3000:]}'
    assert f'LMDB {cut} is truncated: data.mdb has {lmdbs["keep"]} bytes' in proc.stderr
    if kind == 'ours':
        assert "datasets.train (name 'x'): tasks[0].dataroot_lq: LMDB" in proc.stderr
    assert 'read every batch' not in proc.stdout


def test_a_damaged_record_is_named_with_how_to_repack(lmdbs, tmp_path):
    """A complete LMDB whose record 'im3' was overwritten in the middle (a disk or copy error, not a truncation): the
    training loader stops with the LMDB, the key and how to re-pack it. A meta_info listing keys the LMDB lacks is
    refused when the dataset is built (the cheap start check: every key and its length), not when first drawn."""
    damaged = str(tmp_path / 'damaged.lmdb')
    shutil.copytree(lmdbs['lq'], damaged)
    from allinone_basicsr.utils.lmdb import checked_lmdb
    with checked_lmdb(lmdbs['lq']) as env, env.begin() as txn:
        record = txn.get(b'im3')
    data_file = osp.join(damaged, 'data.mdb')
    with open(data_file, 'rb') as f:
        offset = f.read().index(record)
    with open(data_file, 'r+b') as f:
        f.seek(offset + len(record) // 2)
        f.write(bytes(range(256)) * 4)
    proc = run_python(['-c', ITERATE, 'ours', damaged, lmdbs['gt'], '0'], lmdbs['root'], check=False, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"LMDB {damaged}: record 'im3' is damaged (cannot decode image 'im3'" in proc.stderr, proc.stderr[-3000:]
    assert 'copy it again from its source, or re-pack it from its image folder (datasets_prep/prepare_' in proc.stderr

    stale = str(tmp_path / 'stale.lmdb')
    shutil.copytree(lmdbs['lq'], stale)
    with open(osp.join(stale, 'meta_info.txt'), 'a') as f:
        f.write('im6.png (64,64,3) 1\nim7.png (64,64,3) 1\n')
    with pytest.raises(ValueError) as err:
        MixedDegradationDataset(_train_opt(stale, lmdbs['gt']))
    assert str(err.value).startswith(f"datasets.train (name 'x'): tasks[1].dataroot_lq: LMDB {stale}: 2 key(s) of "
                                     "its meta_info are not in the LMDB ('im6', 'im7'; it holds 6 records)")
