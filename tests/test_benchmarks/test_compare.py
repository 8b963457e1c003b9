"""allinone_basicsr.compare: the table equals the per-run CSVs; sizes from the copied option files; the plot."""
import csv

import cv2
import pytest
import yaml

from allinone_basicsr.compare import main

ROWS = {'run_a': {'set1': 30.5, 'set2': 20.25}, 'run_b': {'set1': 31.0, 'set3': 25.0}}
NET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1, 1]}


def _write_run(folder, values):
    folder.mkdir()
    with open(folder / 'metrics.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['test_set', 'degradation', 'images', 'psnr', 'ssim'])
        for name, value in values.items():
            writer.writerow([name, 'noise', 3, value, 0.5])
        writer.writerow(['Average', '', 6, sum(values.values()) / len(values), 0.5])
    (folder / 'test.yml').write_text(yaml.safe_dump({'name': folder.name, 'network_g': NET}))


def test_table_matches_the_runs_csvs(tmp_path):
    for name, values in ROWS.items():
        _write_run(tmp_path / name, values)
    out = tmp_path / 'cmp'
    main([str(tmp_path / 'run_a'), str(tmp_path / 'run_b'), '--out', str(out)])
    with open(out / 'compare.csv') as f:
        rows = {r['method']: r for r in csv.DictReader(f)}
    assert list(rows) == ['run_a', 'run_b']
    for name, values in ROWS.items():
        for test_set in ('set1', 'set2', 'set3'):
            want = values.get(test_set)
            assert (float(rows[name][test_set]) if rows[name][test_set] else None) == want
        assert float(rows[name]['average']) == pytest.approx(sum(values.values()) / len(values))
        assert float(rows[name]['params (M)']) == pytest.approx(0.11, abs=0.01)  # the tiny SymUNet of the yml
    assert '| run_b | 31.00 | – | 25.00 | 28.00 |' in (out / 'compare.md').read_text()
    plot = cv2.imread(str(out / 'compare_psnr.png'))
    assert plot is not None and plot.shape[0] == 420


def test_missing_metrics_and_unknown_metric_are_clear(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no metrics.csv'):
        main([str(tmp_path / 'empty'), '--out', str(tmp_path / 'o')])
    _write_run(tmp_path / 'run', {'s': 1.0})
    with pytest.raises(ValueError, match=r"no column 'lpips'; columns: \['test_set'"):
        main([str(tmp_path / 'run'), '--metric', 'lpips', '--out', str(tmp_path / 'o')])


def test_visual_grid_lq_methods_gt(tmp_path):
    import numpy as np
    from make_demo_data import build_demo_data

    from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset
    build_demo_data(str(tmp_path / 'demo'), seed=0)
    test_set = {'name': 'demo_rain', 'type': 'AllInOneTestDataset', 'degradation': 'rain',
                'dataroot_lq': str(tmp_path / 'demo/test/rain_lq.lmdb'),
                'dataroot_gt': str(tmp_path / 'demo/test/rain_gt.lmdb')}
    item = AllInOneTestDataset(dict(test_set, phase='test_1'))[0]
    image = item['lq_path'].split('/')[-1].rsplit('.', 1)[0]
    gt = (item['gt'].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8)
    folders = []
    for name, offset in (('method_a', 0), ('method_b', 20)):
        folder = tmp_path / name
        _write_run(folder, {'demo_rain': 30.0})
        (folder / 'test.yml').write_text(yaml.safe_dump({'name': name, 'network_g': NET,
                                                         'datasets': {'test_1': test_set}}))
        (folder / 'visualization' / 'demo_rain').mkdir(parents=True)
        cv2.imwrite(str(folder / 'visualization' / 'demo_rain' / f'{image}_{name}.png'),
                    np.clip(gt.astype(int) + offset, 0, 255).astype(np.uint8))
        folders.append(str(folder))
    main(folders + ['--out', str(tmp_path / 'cmp'), '--grid', f'demo_rain:{image}'])
    grid = cv2.imread(str(tmp_path / 'cmp' / f'grid_demo_rain_{image}.png'))
    h, w = gt.shape[:2]
    assert grid.shape[1] == 4 * (w + 4)  # input | method_a | method_b | ground truth
    panel_a = grid[:h, (w + 4):(w + 4) + w]
    assert np.abs(panel_a.astype(int) - gt.astype(int)).max() <= 255  # drawn with the crop rectangle
    inside = (slice(0, h // 3 - 1), slice(0, w))  # above the crop rectangle: untouched pixels
    assert np.array_equal(panel_a[inside], gt[inside])
    with pytest.raises(ValueError, match="no image 'nope'"):
        main(folders + ['--out', str(tmp_path / 'cmp'), '--grid', 'demo_rain:nope'])
