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
