"""prepare_3task.py / prepare_5task.py on tiny fake raw trees in the official layouts (with their quirks):
pairing, counts, keys, LMDB pixels equal to the sources, atomic and resumable writes, clear errors, and the
full option files reading the result (tests/test_reliability/test_full_recipes.py trains every one of them on such a
tree)."""
import os
from os import path as osp
from pathlib import Path

import cv2
import lmdb
import numpy as np
import prepare_3task
import prepare_5task
import pytest
import yaml
from fake_raw import make_raw_3task, make_raw_5task
from pipeline_util import run_python
from prep_util import PrepError, crop_boxes

REPO = Path(__file__).resolve().parents[2]


def read_lmdb(path):
    """{key: HxWx3 uint8 BGR} of an LMDB, and its meta_info keys."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        data = {k.decode(): cv2.imdecode(np.frombuffer(v, np.uint8), cv2.IMREAD_UNCHANGED) for k, v in txn.cursor()}
    env.close()
    meta = [line.split()[0].rsplit('.', 1)[0] for line in open(osp.join(path, 'meta_info.txt')) if line.strip()]
    return data, meta


def src(path):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp('prep')
    make_raw_5task(str(root / 'raw'))
    table = prepare_5task.main(['--raw', str(root / 'raw'), '--out', str(root / 'datasets'), '--workers', '2'])
    return root, table


def test_gopro_crop_grid_is_nafnets():
    assert len(crop_boxes(720, 1280, 512, 256)) == 8  # 2103 GoPro frames -> 16,824 crops
    assert [b[:2] for b in crop_boxes(720, 1280, 512, 256)][:4] == [(0, 0), (0, 256), (0, 512), (0, 768)]
    assert crop_boxes(720, 1280, 512, 256)[4][:2] == (208, 0)  # last row flush with the border
    assert crop_boxes(300, 400, 512, 256) == [(0, 0, 300, 400)]  # smaller than the crop: kept whole


def test_denoise_list_and_bsd400_a_prefix(prepared):
    root, table = prepared
    data, meta = read_lmdb(root / 'datasets/train/denoise_gt.lmdb')
    # a100/a101 on disk and a102 listed but stored as 102.jpg all give numeric keys; 00002 is not listed
    assert sorted(data) == sorted(meta) == ['00001', '00003', '100', '101', '102']
    raw = root / 'raw/Train/Denoise'
    assert np.array_equal(data['102'], src(raw / '102.jpg'))
    assert np.array_equal(data['00001'], src(raw / '00001.bmp'))
    assert data['00003'].shape == (136, 144, 3)  # grey stored as 3 channels
    assert 'not listed in denoise.txt (e.g. 00002.bmp)' in table
    assert 'listed in denoise.txt but not in' in table and 'a999.jpg' in table


def test_rain_pairs_and_keys(prepared):
    root, _ = prepared
    lq, _ = read_lmdb(root / 'datasets/train/rain_lq.lmdb')
    gt, _ = read_lmdb(root / 'datasets/train/rain_gt.lmdb')
    assert sorted(lq) == sorted(gt) == ['rain-1', 'rain-2', 'rain-3']
    assert np.array_equal(gt['rain-2'], src(root / 'raw/Train/Derain/gt/norain-2.png'))
    assert np.array_equal(lq['rain-2'], src(root / 'raw/Train/Derain/rainy/rain-2.png'))


def test_haze_pairs_share_clean_images(prepared):
    root, table = prepared
    lq, _ = read_lmdb(root / 'datasets/train/haze_lq.lmdb')
    gt, _ = read_lmdb(root / 'datasets/train/haze_gt.lmdb')
    assert sorted(lq) == ['0001_0.8_0.04', '0001_0.9_0.08', '0002_1_0.1']  # part4 image is not in the list
    assert sorted(gt) == ['0001', '0002']  # stored once, mapped by gt_keys.txt
    mapping = dict(line.split() for line in open(root / 'datasets/train/haze_lq.lmdb/gt_keys.txt'))
    assert mapping == {'0001_0.8_0.04': '0001', '0001_0.9_0.08': '0001', '0002_1_0.1': '0002'}
    assert np.array_equal(lq['0002_1_0.1'], src(root / 'raw/Train/Dehaze/synthetic/part2/0002_1_0.1.jpg'))
    assert np.array_equal(gt['0001'], src(root / 'raw/Train/Dehaze/original/0001.jpg'))
    assert 'not listed in hazy_outside.txt' in table
    # PromptDSANet's protocol lists: BSD400 keys (JPEG sources) and an evenly spaced subset of at most 800 OTS pairs
    assert (root / 'datasets/train/denoise_gt.lmdb/bsd400_keys.txt').read_text().split() == ['100', '101', '102']
    assert (root / 'datasets/train/haze_lq.lmdb/ots800_keys.txt').read_text().split() == sorted(lq)


def test_test_sets(prepared):
    root, _ = prepared
    bsd, _ = read_lmdb(root / 'datasets/test/bsd68.lmdb')
    assert sorted(bsd) == ['12084', '3096']
    lq, _ = read_lmdb(root / 'datasets/test/rain100l_lq.lmdb')
    gt, _ = read_lmdb(root / 'datasets/test/rain100l_gt.lmdb')
    assert sorted(lq) == sorted(gt) == ['rain-1', 'rain-2']  # target norain-1.png and target rain-2.png
    assert np.array_equal(gt['rain-1'], src(root / 'raw/test/derain/Rain100L/target/norain-1.png'))
    lq, _ = read_lmdb(root / 'datasets/test/sots_outdoor_lq.lmdb')
    gt, _ = read_lmdb(root / 'datasets/test/sots_outdoor_gt.lmdb')
    assert list(lq) == list(gt) == ['0005_0.8_0.2']
    assert np.array_equal(gt['0005_0.8_0.2'], src(root / 'raw/test/dehaze/target/0005.png'))


def test_gopro_crops_and_lol(prepared):
    root, table = prepared
    lq, meta = read_lmdb(root / 'datasets/train/gopro_lq.lmdb')
    gt, _ = read_lmdb(root / 'datasets/train/gopro_gt.lmdb')
    assert sorted(lq) == sorted(gt) == sorted(meta)
    assert sorted(lq) == [f'GOPR0001_11_00_000001_s00{i}' for i in range(1, 7)] + ['GOPR0002_11_01_000001_s001']
    blur = src(root / 'raw/GoPro/train/GOPR0001_11_00/blur/000001.png')  # 560x800: rows 0, 48; cols 0, 256, 288
    assert np.array_equal(lq['GOPR0001_11_00_000001_s005'], blur[48:560, 256:768])
    assert gt['GOPR0002_11_01_000001_s001'].shape == (300, 400, 3)
    test_lq, _ = read_lmdb(root / 'datasets/test/gopro_lq.lmdb')
    assert list(test_lq) == ['GOPR0003_11_00_000004'] and test_lq['GOPR0003_11_00_000004'].shape == (96, 160, 3)
    lol, _ = read_lmdb(root / 'datasets/train/lol_gt.lmdb')
    assert sorted(lol) == ['10', '2']
    assert np.array_equal(lol['10'], src(root / 'raw/LOL/our485/high/10.png'))
    summary = (root / 'datasets/prepare_5task_summary.md').read_text()
    assert '| deblur (GoPro train, 512 px crops) | train/gopro_lq.lmdb, train/gopro_gt.lmdb | 2 ⚠ | 2,103 | 7 |' \
        in summary


def test_rerun_skips_complete_lmdbs_and_force_rewrites(tmp_path):
    raw = make_raw_3task(str(tmp_path / 'raw'))
    out = tmp_path / 'datasets'
    prepare_3task.main(['--raw', raw, '--out', str(out), '--workers', '1'])
    data_file = out / 'train/rain_lq.lmdb/data.mdb'
    before = data_file.stat().st_mtime_ns
    table = prepare_3task.main(['--raw', raw, '--out', str(out), '--workers', '1'])
    assert table.count('exists, skipped') == 6 and data_file.stat().st_mtime_ns == before
    table = prepare_3task.main(['--raw', raw, '--out', str(out), '--workers', '1', '--force'])
    assert table.count('| written |') == 6 and data_file.stat().st_mtime_ns != before
    assert not [p for p in out.rglob('.partial-*')]


def test_interrupted_job_leaves_no_lmdb_that_looks_complete(tmp_path):
    raw = make_raw_3task(str(tmp_path / 'raw'))
    with open(osp.join(raw, 'Train/Derain/gt/norain-3.png'), 'wb') as f:
        f.write(b'not a png')  # decoding fails in the middle of the derain job
    out = tmp_path / 'datasets'
    with pytest.raises(PrepError, match=r'cannot read image .*norain-3.png'):
        prepare_3task.main(['--raw', raw, '--out', str(out), '--workers', '2'])
    assert (out / 'train/denoise_gt.lmdb/prepare_info.json').is_file()  # the job before it completed
    assert not (out / 'train/rain_lq.lmdb').exists() and not (out / 'train/rain_gt.lmdb').exists()
    assert not list(out.rglob('.partial-*'))
    # a stale partial LMDB from a killed run is removed, and the run resumes after the completed jobs
    os.makedirs(out / 'train/.partial-rain_lq.lmdb')
    _img = cv2.imread(osp.join(raw, 'Train/Derain/gt/norain-2.png'))
    cv2.imwrite(osp.join(raw, 'Train/Derain/gt/norain-3.png'), _img)
    table = prepare_3task.main(['--raw', raw, '--out', str(out), '--workers', '1'])
    assert '| denoise (BSD400 + WED) |' in table and 'exists, skipped' in table
    assert (out / 'train/rain_lq.lmdb/prepare_info.json').is_file() and not list(out.rglob('.partial-*'))


def test_errors_name_the_argument_file_and_rule(tmp_path):
    raw = make_raw_3task(str(tmp_path / 'raw'))
    out = str(tmp_path / 'datasets')
    os.rename(osp.join(raw, 'Train/Derain/gt'), osp.join(raw, 'Train/Derain/gt_moved'))
    with pytest.raises(PrepError, match=r'--raw .*: missing folder .*Train/Derain/gt \(Rain100L training targets'):
        prepare_3task.main(['--raw', raw, '--out', out])
    os.makedirs(osp.join(raw, 'Train/Derain/gt'))
    with pytest.raises(PrepError, match=r'no ground truth for rain-1.png, rain-2.png, rain-3.png; '
                                        r'rule: rainy/rain-N.png -> gt/norain-N.png'):
        prepare_3task.main(['--raw', raw, '--out', out])
    assert not osp.exists(out)  # every pairing is checked before anything is written
    os.rmdir(osp.join(raw, 'Train/Derain/gt'))
    os.rename(osp.join(raw, 'Train/Derain/gt_moved'), osp.join(raw, 'Train/Derain/gt'))
    small = np.zeros((50, 60, 3), np.uint8)
    cv2.imwrite(osp.join(raw, 'test/dehaze/target/0005.png'), small)
    with pytest.raises(PrepError, match=r'LQ .*0005_0.8_0.2.jpg \(96, 112\) and GT .*0005.png \(50, 60\) differ'):
        prepare_3task.main(['--raw', raw, '--out', out])
    # names are paired before anything is written; sizes are checked while encoding, so the failing job is absent
    assert not osp.exists(osp.join(out, 'test/sots_outdoor_lq.lmdb'))
    assert not osp.exists(osp.join(out, 'test/sots_outdoor_gt.lmdb'))
    proc = run_python([str(REPO / 'datasets_prep/prepare_3task.py'), '--raw', str(tmp_path / 'nowhere')], check=False,
                      timeout=120)
    assert proc.returncode == 2 and 'error: --raw: not a folder' in proc.stderr and 'Traceback' not in proc.stderr


def _load(option_file):
    with open(REPO / 'options' / option_file) as f:
        return yaml.safe_load(f)


def test_full_option_files_read_the_prepared_data(prepared, monkeypatch):
    from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset, MixedDegradationDataset
    root, _ = prepared
    monkeypatch.chdir(root)  # the option files' paths are relative to the working directory
    for option_file in ('train_symunet.yml', 'train_symunet_5task.yml', 'train_promptir_5task.yml',
                        'train_promptdsanet.yml'):  # the last uses the BSD400 and OTS-800 key lists
        opt = _load(option_file)
        train = MixedDegradationDataset(dict(opt['datasets']['train'], phase='train'))
        seen = set()
        for index in range(len(train)):
            task, key = train.locate(index)
            if task['name'] not in seen:
                seen.add(task['name'])
                item = train[index]
                assert item['lq'].shape == item['gt'].shape == (3, 128, 128), (option_file, task['name'], key)
        assert seen == {t['name'] for t in opt['datasets']['train']['tasks']}
        for name, val in opt['datasets'].items():
            if name != 'train':
                item = AllInOneTestDataset(dict(val, phase='val'))[0]
                assert item['lq'].shape == item['gt'].shape


def test_rerun_over_a_raw_tree_that_gained_pairs_rebuilds_the_stale_lmdbs(tmp_path):
    """The real script, re-run after a rain pair was added to the raw tree (and its list): the rain LMDBs are named
    as stale on stderr and rebuilt with the new pair; the others are skipped as before."""
    raw = make_raw_3task(str(tmp_path / 'raw'), small=True)
    out = tmp_path / 'datasets'
    script = [str(REPO / 'datasets_prep/prepare_3task.py'), '--raw', raw, '--out', str(out), '--workers', '1']
    run_python(script, timeout=300)
    pair = cv2.imread(osp.join(raw, 'Train/Derain/gt/norain-1.png'))
    for folder, name in (('rainy', 'rain-4.png'), ('gt', 'norain-4.png')):
        cv2.imwrite(osp.join(raw, 'Train/Derain', folder, name), pair)
    with open(osp.join(raw, 'data_dir/rainy/rainTrain.txt'), 'a') as f:
        f.write('rainy/rain-4.png\n')
    proc = run_python(script, timeout=300)
    for lmdb_name in ('rain_lq', 'rain_gt'):
        assert (f'WARNING: {out}/train/{lmdb_name}.lmdb is stale: the raw tree gives 4 source(s), it was built from 3; '
                '1 key(s) not in it (e.g. rain-4)') in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.count('exists, skipped') == 5 and proc.stdout.count('stale, rebuilt') == 1
    assert sorted(read_lmdb(out / 'train/rain_lq.lmdb')[1]) == ['rain-1', 'rain-2', 'rain-3', 'rain-4']
    again = run_python(script, timeout=300)
    assert again.stdout.count('exists, skipped') == 6 and 'WARNING' not in again.stderr


@pytest.mark.parametrize('script, says, not_says',
                         [('prepare_3task', '3-task', '5-task'), ('prepare_5task', '5-task', '3-task')])
def test_help_describes_its_own_script(tmp_path, script, says, not_says):
    proc = run_python([str(REPO / 'datasets_prep' / f'{script}.py'), '--help'], cwd=tmp_path, timeout=120, threads=1)
    assert proc.stdout.startswith(f'usage: {script}.py ')
    description = proc.stdout.split('\n\n')[1]
    assert says in description and not_says not in description, proc.stdout
