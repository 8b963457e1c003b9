import copy
import os
import pickle
import random
from os import path as osp

import cv2
import lmdb
import numpy as np
import pytest
import torch

import allinone_basicsr  # noqa: F401  (import before basicsr)
from allinone_basicsr.data.degradations import add_gaussian_noise, noise_rng
from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset, MixedDegradationDataset

from basicsr.data import build_dataset
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

CLASSES = ['noise', 'rain', 'haze']
KEYS = ['img_a', 'img_b', 'img_c']


def _write_folder(folder, images):
    """{key: HxWx3 uint8 RGB} -> PNG folder."""
    os.makedirs(folder, exist_ok=True)
    for key, img in images.items():
        cv2.imwrite(osp.join(folder, f'{key}.png'), img[..., ::-1] if img.ndim == 3 else img)
    return str(folder)


def _write_lmdb(folder, lmdb_path):
    """PNG folder -> LMDB with BasicSR's make_lmdb_from_imgs (writes meta_info.txt too)."""
    names = sorted(os.listdir(folder))
    make_lmdb_from_imgs(str(folder), str(lmdb_path), names, [osp.splitext(v)[0] for v in names])
    return str(lmdb_path)


def _images(seed, h=40, w=48):
    rng = np.random.default_rng(seed)
    return {k: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k in KEYS}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """GT / LQ pairs as folders and as LMDBs (same content)."""
    root = tmp_path_factory.mktemp('aio_data')
    gt, lq = _images(0), _images(1)
    d = {'gt_img': gt, 'lq_img': lq, 'root': root}
    d['gt_dir'] = _write_folder(root / 'gt', gt)
    d['lq_dir'] = _write_folder(root / 'lq', lq)
    d['gt_lmdb'] = _write_lmdb(root / 'gt', root / 'gt.lmdb')
    d['lq_lmdb'] = _write_lmdb(root / 'lq', root / 'lq.lmdb')
    return d


def _train_opt(d, backend='lmdb', **kw):
    gt, lq = (d['gt_lmdb'], d['lq_lmdb']) if backend == 'lmdb' else (d['gt_dir'], d['lq_dir'])
    opt = {
        'name': 'allinone', 'phase': 'train', 'type': 'MixedDegradationDataset', 'degradation_classes': CLASSES,
        'gt_size': 32, 'use_hflip': True, 'use_rot': True,
        'tasks': [
            {'name': 'denoise_15', 'degradation': 'noise', 'dataroot_gt': gt, 'noise_sigma': 15, 'repeat': 3},
            {'name': 'denoise_50', 'degradation': 'noise', 'dataroot_gt': gt, 'noise_sigma': 50},
            {'name': 'dehaze', 'degradation': 'haze', 'dataroot_lq': lq, 'dataroot_gt': gt, 'repeat': 2},
        ]
    }
    opt.update(kw)
    return opt


def _test_opt(d, backend='lmdb', **kw):
    opt = {'name': 'test_noise', 'phase': 'val', 'degradation': 'noise', 'degradation_classes': CLASSES,
           'dataroot_gt': d['gt_lmdb'] if backend == 'lmdb' else d['gt_dir'], 'noise_sigma': 25}
    opt.update(kw)
    return opt


def _u8(t):
    """3xHxW float tensor in [0, 1] -> HxWx3 uint8 RGB."""
    return np.round(t.numpy().transpose(1, 2, 0) * 255).astype(np.uint8)


def test_train_items_labels_len_and_crop(data):
    opt = _train_opt(data)
    frozen = copy.deepcopy(opt)
    ds = build_dataset(opt)  # through BasicSR's registry
    assert opt == frozen  # options are not modified
    assert isinstance(ds, MixedDegradationDataset)
    assert len(ds) == 3 * 3 + 3 * 1 + 3 * 2
    tasks = [ds[i]['task'] for i in range(len(ds))]
    assert tasks == ['denoise_15'] * 9 + ['denoise_50'] * 3 + ['dehaze'] * 6
    for i in (0, 9, 12):
        item = ds[i]
        assert set(item) == {'lq', 'gt', 'lq_path', 'gt_path', 'degradation', 'task'}
        for k in ('lq', 'gt'):
            assert item[k].shape == (3, 32, 32) and item[k].dtype == torch.float32
            assert 0 <= item[k].min() and item[k].max() <= 1
    assert ds[0]['degradation'] == 0 and ds[12]['degradation'] == 2
    assert ds[0]['gt_path'] == 'img_a' and ds[0]['lq_path'] == 'img_a_sigma15'
    assert ds[10]['lq_path'] == 'img_b_sigma50'
    assert ds[12]['lq_path'] == 'img_a' and ds[13]['gt_path'] == 'img_b' and ds[15]['gt_path'] == 'img_a'
    # repeat factors change the length
    opt['tasks'][2]['repeat'] = 5
    assert len(MixedDegradationDataset(opt)) == 9 + 3 + 15
    # default degradation classes
    opt.pop('degradation_classes')
    assert MixedDegradationDataset(opt)[12]['degradation'] == 2
    # a batch collates
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch['lq'].shape == (4, 3, 32, 32) and batch['degradation'].tolist() == [0] * 4


def test_train_crop_is_paired_and_noise_after_crop(data):
    ds = MixedDegradationDataset(_train_opt(data, use_hflip=False, use_rot=False))
    random.seed(1)
    np.random.seed(1)
    item = ds[12]  # dehaze, img_a
    gt, lq = _u8(item['gt']), _u8(item['lq'])
    full_gt, full_lq = data['gt_img']['img_a'], data['lq_img']['img_a']
    found = [(y, x) for y in range(40 - 31) for x in range(48 - 31)
             if np.array_equal(full_gt[y:y + 32, x:x + 32], gt)]
    assert len(found) == 1
    y, x = found[0]
    np.testing.assert_array_equal(full_lq[y:y + 32, x:x + 32], lq)
    # noise task: the noise is drawn from numpy's global RNG after the crop, in uint8 space
    random.seed(2)
    np.random.seed(2)
    item = ds[0]
    gt = _u8(item['gt'])
    np.random.seed(2)
    np.testing.assert_array_equal(_u8(item['lq']), add_gaussian_noise(gt, 15))


def test_lmdb_and_folder_backends_agree(data):
    for make, idx in ((lambda b: MixedDegradationDataset(_train_opt(data, b)), (0, 11, 14)),
                      (lambda b: AllInOneTestDataset(_test_opt(data, b)), (0, 2))):
        ds_lmdb, ds_dir = make('lmdb'), make('folder')
        assert len(ds_lmdb) == len(ds_dir)
        for i in idx:
            random.seed(i)
            np.random.seed(i)
            a = ds_lmdb[i]
            random.seed(i)
            np.random.seed(i)
            b = ds_dir[i]
            assert torch.equal(a['lq'], b['lq']) and torch.equal(a['gt'], b['gt'])
            assert a['task'] == b['task'] and a['degradation'] == b['degradation']
            assert osp.basename(b['gt_path']) == a['gt_path'] + '.png'
    np.testing.assert_array_equal(_u8(AllInOneTestDataset(_test_opt(data, 'folder'))[1]['gt']), data['gt_img']['img_b'])


def test_test_noise_is_deterministic(data):
    a, b = AllInOneTestDataset(_test_opt(data)), AllInOneTestDataset(_test_opt(data))
    assert len(a) == 3
    for i in range(3):
        assert torch.equal(a[i]['lq'], b[i]['lq'])
        assert torch.equal(a[i]['lq'], a[i]['lq'])  # no state between calls
    item = a[1]
    gt = data['gt_img']['img_b']
    np.testing.assert_array_equal(_u8(item['lq']), add_gaussian_noise(gt, 25, noise_rng('img_b', 25)))
    assert item['lq_path'] == 'img_b_sigma25' and item['gt_path'] == 'img_b'
    assert item['degradation'] == 0 and item['task'] == 'test_noise'
    other = AllInOneTestDataset(_test_opt(data, noise_sigma=50))[1]
    assert not torch.equal(other['lq'], item['lq'])
    # different images get different noise
    res = [_u8(a[i]['lq']).astype(int) - data['gt_img'][k] for i, k in enumerate(KEYS)]
    assert not np.array_equal(res[0], res[1])
    # folder: unique basenames with the extension kept
    folder_item = AllInOneTestDataset(_test_opt(data, 'folder'))[1]
    assert osp.basename(folder_item['lq_path']) == 'img_b_sigma25.png'
    assert torch.equal(folder_item['lq'], item['lq'])


def test_test_paired_and_crop_to_multiple(data):
    ds = AllInOneTestDataset(_test_opt(data, noise_sigma=None, degradation='haze', dataroot_lq=data['lq_lmdb'],
                                       task='dehaze'))
    item = ds[2]
    assert item['degradation'] == 2 and item['task'] == 'dehaze' and item['lq_path'] == 'img_c'
    np.testing.assert_array_equal(_u8(item['lq']), data['lq_img']['img_c'])
    assert item['lq'].shape == (3, 40, 48)
    # centre crop 40x48 -> 32x48 (rows 4..36), before the noise
    ds = AllInOneTestDataset(_test_opt(data, crop_to_multiple=16))
    item = ds[0]
    gt = data['gt_img']['img_a'][4:36]
    assert item['gt'].shape == (3, 32, 48)
    np.testing.assert_array_equal(_u8(item['gt']), gt)
    np.testing.assert_array_equal(_u8(item['lq']), add_gaussian_noise(gt, 25, noise_rng('img_a', 25)))
    ds = AllInOneTestDataset(_test_opt(data, noise_sigma=None, degradation='haze', dataroot_lq=data['lq_dir'],
                                       dataroot_gt=data['gt_dir'], crop_to_multiple=16))
    np.testing.assert_array_equal(_u8(ds[0]['lq']), data['lq_img']['img_a'][4:36])


def test_noise_residual_std_sigma25(tmp_path):
    folder = _write_folder(tmp_path / 'grey', {f'g{i}': np.full((64, 64, 3), 128, np.uint8) for i in range(2)})
    opt = {'name': 'g', 'degradation_classes': CLASSES, 'gt_size': 64,
           'tasks': [{'name': 'denoise_25', 'degradation': 'noise', 'dataroot_gt': folder, 'noise_sigma': 25,
                      'repeat': 4}]}
    ds = MixedDegradationDataset(opt)
    np.random.seed(0)
    res = torch.stack([ds[i]['lq'] - ds[i]['gt'] for i in range(len(ds))]) * 255
    assert abs(res.std().item() - 25) < 0.6
    assert abs(res.mean().item() + 0.5) < 0.3  # truncation to uint8
    test = AllInOneTestDataset({'name': 't', 'degradation': 'noise', 'dataroot_gt': folder, 'noise_sigma': 25})
    res = (test[0]['lq'] - test[0]['gt']) * 255
    assert abs(res.std().item() - 25) < 1.5


def test_image_formats_are_normalised(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    folder = tmp_path / 'formats'
    folder.mkdir()
    cv2.imwrite(str(folder / 'grey.png'), rgb[..., 0])
    cv2.imwrite(str(folder / 'deep.png'), rgb[..., ::-1].astype(np.uint16) * 257)
    cv2.imwrite(str(folder / 'rgba.png'), np.concatenate([rgb[..., ::-1], rgb[..., :1]], axis=2))
    cv2.imwrite(str(folder / 'photo.jpg'), rgb[..., ::-1])
    (folder / 'notes.txt').write_text('not an image')
    ds = AllInOneTestDataset({'name': 'f', 'degradation': 'noise', 'dataroot_gt': str(folder), 'noise_sigma': 0})
    assert ds.keys == ['deep', 'grey', 'photo', 'rgba']
    items = {osp.splitext(osp.basename(ds[i]['gt_path']))[0]: _u8(ds[i]['gt']) for i in range(len(ds))}
    np.testing.assert_array_equal(items['grey'], np.repeat(rgb[..., :1], 3, axis=2))
    np.testing.assert_array_equal(items['deep'], rgb)
    np.testing.assert_array_equal(items['rgba'], rgb)
    assert items['photo'].shape == (40, 40, 3)
    assert torch.equal(ds[0]['lq'], ds[0]['gt'])  # sigma 0


def test_same_lmdb_in_two_datasets(data):
    train = MixedDegradationDataset(_train_opt(data))
    val = AllInOneTestDataset(_test_opt(data))
    val2 = AllInOneTestDataset(_test_opt(data, noise_sigma=None, degradation='haze', dataroot_lq=data['lq_lmdb']))
    for _ in range(2):
        assert train[13]['gt'].shape == (3, 32, 32)
        assert val[0]['gt'].shape == (3, 40, 48)
        assert val2[2]['lq'].shape == (3, 40, 48)


def test_lazy_clients_pickle_and_workers(tmp_path):
    folder = _write_folder(tmp_path / 'w', _images(5))
    lmdb_path = _write_lmdb(folder, tmp_path / 'w.lmdb')
    opt = {'name': 'w', 'degradation_classes': CLASSES, 'gt_size': 16,
           'tasks': [{'name': 'denoise_25', 'degradation': 'noise', 'dataroot_gt': lmdb_path, 'noise_sigma': 25}]}
    ds = MixedDegradationDataset(opt)
    assert ds.reader.lmdb_client is None  # nothing opened in __init__ (fork / worker safe)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[0]['gt'].shape == (3, 16, 16)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    assert next(iter(loader))['gt'].shape == (3, 3, 16, 16)
    assert ds.reader.lmdb_client is None


def test_forked_workers_after_the_parent_opened_the_same_lmdb(data):
    """BasicSR's case: validation opened the LMDB in the main process, then the next epoch forks new workers
    reading the same LMDB (lmdb refuses a second open in one process; the shared environment is reused)."""
    val = AllInOneTestDataset(_test_opt(data))
    expected = val[0]['gt']
    train = MixedDegradationDataset(_train_opt(data))
    ctx = torch.multiprocessing.get_context('fork')
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=2, multiprocessing_context=ctx)
    for epoch in range(2):
        batches = list(loader)
        assert sum(len(b['gt']) for b in batches) == len(train)
    assert torch.equal(val[0]['gt'], expected)


# ---------------------------------------------------------------- errors


def test_error_missing_paths(data):
    opt = _train_opt(data)
    opt['tasks'][2]['dataroot_lq'] = '/x/y.lmdb'
    with pytest.raises(FileNotFoundError) as err:
        MixedDegradationDataset(opt)
    assert "datasets.train (name 'allinone'): tasks[2].dataroot_lq: not found: /x/y.lmdb" in str(err.value)
    opt = _train_opt(data)
    opt['tasks'][0]['dataroot_gt'] = '/no/folder'
    with pytest.raises(FileNotFoundError, match=r'tasks\[0\]\.dataroot_gt: not found: /no/folder'):
        MixedDegradationDataset(opt)
    with pytest.raises(FileNotFoundError, match=r"datasets.val \(name 'test_noise'\): dataroot_gt: not found: /n.lmdb"):
        AllInOneTestDataset(_test_opt(data, dataroot_gt='/n.lmdb'))
    with pytest.raises(FileNotFoundError, match='meta_info_file: not found'):
        MixedDegradationDataset(_train_opt(data, 'folder', tasks=[
            {'name': 'n', 'degradation': 'noise', 'dataroot_gt': data['gt_dir'], 'noise_sigma': 5,
             'meta_info_file': '/no/meta.txt'}]))


def test_error_unknown_degradation_and_bad_options(data):
    opt = _train_opt(data)
    opt['tasks'][1]['degradation'] = 'snow'
    with pytest.raises(ValueError, match=r"tasks\[1\]: degradation 'snow' is not one of degradation_classes "
                                         r"\['noise', 'rain', 'haze'\]"):
        MixedDegradationDataset(opt)
    with pytest.raises(ValueError, match=r"'blur' is not one of degradation_classes \['noise', 'rain', 'haze'\]"):
        AllInOneTestDataset(_test_opt(data, degradation='blur'))
    opt = _train_opt(data)
    opt['tasks'][0]['dataroot_lq'] = data['lq_lmdb']  # both lq and noise_sigma
    with pytest.raises(ValueError, match='either dataroot_lq or noise_sigma'):
        MixedDegradationDataset(opt)
    opt = _train_opt(data)
    opt['tasks'][0]['repeat'] = 1.5
    with pytest.raises(ValueError, match=r'tasks\[0\]\.repeat'):
        MixedDegradationDataset(opt)
    with pytest.raises(ValueError, match='tasks'):
        MixedDegradationDataset({'name': 'x', 'tasks': []})
    with pytest.raises(ValueError, match='either dataroot_lq or noise_sigma'):
        AllInOneTestDataset(_test_opt(data, noise_sigma=None))


def test_error_key_missing_from_lmdb(data, tmp_path):
    lmdb_path = _write_lmdb(data['root'] / 'gt', tmp_path / 'broken.lmdb')
    with open(osp.join(lmdb_path, 'meta_info.txt'), 'a') as f:
        f.write('ghost_key.png (40,48,3) 1\n')
    with pytest.raises(ValueError) as err:  # found when the set is built (utils.lmdb.check_records), not when read
        AllInOneTestDataset(_test_opt(data, dataroot_gt=lmdb_path))
    assert "'ghost_key'" in str(err.value) and lmdb_path in str(err.value) and 'not in the LMDB' in str(err.value)


def test_error_undecodable_bytes(data, tmp_path):
    lmdb_path = _write_lmdb(data['root'] / 'gt', tmp_path / 'garbage.lmdb')
    env = lmdb.open(lmdb_path, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b'img_b', b'this is not a png')
    env.close()
    ds = AllInOneTestDataset(_test_opt(data, dataroot_gt=lmdb_path))
    with pytest.raises(ValueError, match="cannot decode image 'img_b'"):
        ds[1]
    folder = tmp_path / 'bad_folder'
    folder.mkdir()
    (folder / 'broken.png').write_bytes(b'\x89PNG garbage')
    ds = AllInOneTestDataset(_test_opt(data, dataroot_gt=str(folder)))
    with pytest.raises(ValueError, match='cannot decode image .*broken.png'):
        ds[0]


def test_error_image_smaller_than_gt_size(data):
    ds = MixedDegradationDataset(_train_opt(data, gt_size=44))
    with pytest.raises(ValueError, match=r'image img_a \(40x48\) is smaller than gt_size 44'):
        ds[0]


def test_error_empty_sources(data, tmp_path):
    empty_dir = tmp_path / 'empty'
    empty_dir.mkdir()
    opt = _train_opt(data)
    opt['tasks'][2]['dataroot_lq'] = str(empty_dir)
    with pytest.raises(ValueError, match=r"datasets.train \(name 'allinone'\): tasks\[2\]\.dataroot_lq: no images"):
        MixedDegradationDataset(opt)
    empty_lmdb = tmp_path / 'empty.lmdb'
    lmdb.open(str(empty_lmdb), map_size=1 << 20).close()
    (empty_lmdb / 'meta_info.txt').write_text('')
    with pytest.raises(ValueError, match=r'dataroot_gt: no images'):
        AllInOneTestDataset(_test_opt(data, dataroot_gt=str(empty_lmdb)))
    no_meta = tmp_path / 'no_meta.lmdb'
    lmdb.open(str(no_meta), map_size=1 << 20).close()
    with pytest.raises(FileNotFoundError, match=r'dataroot_gt: meta_info of the LMDB: not found: .*no_meta.lmdb'):
        AllInOneTestDataset(_test_opt(data, dataroot_gt=str(no_meta)))


def test_error_unpaired_keys(data, tmp_path):
    lq_dir = _write_folder(tmp_path / 'lq_extra', dict(data['lq_img'], img_d=data['lq_img']['img_a']))
    opt = _train_opt(data, 'folder')
    opt['tasks'][2]['dataroot_lq'] = lq_dir
    with pytest.raises(ValueError, match=r"tasks\[2\]\.dataroot_lq .*key 'img_d' has no GT image"):
        MixedDegradationDataset(opt)
    gt_dir = _write_folder(tmp_path / 'gt_extra', dict(data['gt_img'], img_e=data['gt_img']['img_a']))
    with pytest.raises(ValueError, match=r"key 'img_e' has no LQ image"):
        AllInOneTestDataset(_test_opt(data, noise_sigma=None, degradation='haze', dataroot_gt=gt_dir,
                                      dataroot_lq=data['lq_dir']))


def test_meta_info_file_selects_images(data, tmp_path):
    meta = tmp_path / 'meta.txt'
    meta.write_text('img_c.png (40,48,3) 1\nimg_a.png (40,48,3) 1\n')
    for backend in ('lmdb', 'folder'):
        ds = AllInOneTestDataset(_test_opt(data, backend, meta_info_file=str(meta)))
        assert ds.keys == ['img_a', 'img_c']


def test_gt_key_map_shares_gt_images(data, tmp_path):
    """Several LQ images of one GT image (RESIDE): LQ keys map onto GT keys through a file."""
    lq = _images(5)
    lq_dir = _write_folder(tmp_path / 'hazy', {'h1': lq['img_a'], 'h2': lq['img_b'], 'h3': lq['img_c']})
    mapping = tmp_path / 'gt_keys.txt'
    mapping.write_text('h1 img_a\nh2 img_a\nh3 img_c\n')
    opt = _train_opt(data, gt_size=40, use_hflip=False, use_rot=False)
    opt['tasks'] = [{'name': 'dehaze', 'degradation': 'haze', 'dataroot_lq': lq_dir,
                     'dataroot_gt': data['gt_lmdb'], 'gt_key_map': str(mapping)}]
    ds = MixedDegradationDataset(opt)
    assert len(ds) == 3
    items = {osp.basename(ds[i]['lq_path']): ds[i] for i in range(3)}
    assert items['h2.png']['gt_path'] == 'img_a' and items['h3.png']['gt_path'] == 'img_c'
    gt, lq_crop = _u8(items['h2.png']['gt']), _u8(items['h2.png']['lq'])  # a 40x40 window of the 40x48 images
    x = next(x for x in range(9) if np.array_equal(gt, data['gt_img']['img_a'][:, x:x + 40]))
    assert np.array_equal(lq_crop, lq['img_b'][:, x:x + 40])
    mapping.write_text('h1 img_a\nh2 img_zz\nh3 img_c\n')
    with pytest.raises(ValueError, match=r"tasks\[0\].gt_key_map: LQ key 'h2' maps to GT key 'img_zz'"):
        MixedDegradationDataset(opt)
    mapping.write_text('h1 img_a\n')
    with pytest.raises(ValueError, match=r"LQ key 'h2' is not in .*gt_keys.txt"):
        MixedDegradationDataset(opt)


def test_meta_info_keys_with_dots_keep_their_dots():
    from allinone_basicsr.data.sources import strip_image_extension
    assert strip_image_extension('0025_0.8_0.04.png') == '0025_0.8_0.04'
    assert strip_image_extension('0025_0.8_0.04') == '0025_0.8_0.04'  # a bare key (subset lists)
    assert strip_image_extension('a.JPG') == 'a'


def test_error_missing_gt_and_lq_gt_size_mismatch_name_the_option_and_task(data, tmp_path):
    """Both dataset classes check their task through the one TaskSource: the same messages, naming where."""
    opt = _train_opt(data)
    del opt['tasks'][1]['dataroot_gt']
    with pytest.raises(ValueError, match=r"^datasets.train \(name 'allinone'\): tasks\[1\].dataroot_gt: missing$"):
        MixedDegradationDataset(opt)
    with pytest.raises(ValueError, match=r"^datasets.val \(name 'test_noise'\): dataroot_gt: missing$"):
        AllInOneTestDataset(_test_opt(data, dataroot_gt=None))
    opt = _train_opt(data)
    opt['tasks'][2]['noise_sigma'] = 5  # both
    with pytest.raises(ValueError, match=r"tasks\[2\].dataroot_lq, noise_sigma \(task 'dehaze'\): give either"):
        MixedDegradationDataset(opt)
    small = _write_folder(tmp_path / 'lq_small', _images(1, h=40, w=40))  # GT is 40x48
    opt = _train_opt(data, 'folder')
    opt['tasks'][2]['dataroot_lq'] = small
    train = MixedDegradationDataset(opt)
    with pytest.raises(ValueError, match=r"LQ .*img_a.png \(40, 40\) and GT .*img_a.png \(40, 48\) differ in size "
                                         r"\(task 'dehaze'\)"):
        train[len(train) - len(KEYS) * 2]  # the dehaze task's first image (3 keys x repeat 2, at the end)
    test = AllInOneTestDataset(_test_opt(data, 'folder', noise_sigma=None, degradation='haze', dataroot_lq=small))
    with pytest.raises(ValueError, match=r"differ in size \(dataset 'test_noise'\)"):
        test[0]


def test_train_and_test_sets_read_a_task_alike(data):
    """The same paired task read by the training set (gt_size = the image, no flips) and the test set: same pixels,
    paths and label."""
    h, w = next(iter(data['gt_img'].values())).shape[:2]
    train = MixedDegradationDataset(_train_opt(data, gt_size=min(h, w), use_hflip=False, use_rot=False, tasks=[
        {'name': 'dehaze', 'degradation': 'haze', 'dataroot_lq': data['lq_lmdb'], 'dataroot_gt': data['gt_lmdb']}]))
    test = AllInOneTestDataset(_test_opt(data, noise_sigma=None, degradation='haze', dataroot_lq=data['lq_lmdb'],
                                         task='dehaze'))
    assert len(train) == len(test) == len(KEYS)
    for i, key in enumerate(KEYS):
        a, b = train[i], test[i]
        assert (a['lq_path'], a['gt_path'], a['degradation'], a['task']) == (b['lq_path'], b['gt_path'], 2, 'dehaze')
        assert a['lq_path'] == key
        # the training crop is a window of the test image (gt_size = the shorter side)
        crop_h, crop_w = a['gt'].shape[1:]
        found = any(torch.equal(b['gt'][:, y:y + crop_h, x:x + crop_w], a['gt']) and
                    torch.equal(b['lq'][:, y:y + crop_h, x:x + crop_w], a['lq'])
                    for y in range(h - crop_h + 1) for x in range(w - crop_w + 1))
        assert found
