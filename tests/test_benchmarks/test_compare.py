"""The compare tool: the table equals the per-run CSVs; sizes from the copied option files; the plot (matplotlib
axes, ticks, labels, PNG and SVG); runs on different sets, duplicate names and inf / nan values never give a quiet
wrong number."""
import csv
import math
import sys
import xml.etree.ElementTree as ET

import cv2
import pytest
import yaml

from allinone_basicsr.tools.compare import CompareWarning, cli, main, plot_metric
from allinone_basicsr.utils.metric_table import metric_protocol
from allinone_basicsr.utils.run_record import read_record, versions, write_record

ROWS = {'run_a': {'set1': 30.5, 'set2': 20.25}, 'run_b': {'set1': 31.0, 'set2': 25.0}}
NET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1, 1]}


PROTOCOL = {'metrics': {'psnr': {'type': 'calculate_psnr_aio'}, 'ssim': {'type': 'calculate_ssim_aio'}}}


def _write_run(folder, values, yml=True, average=None, ssim=0.5):
    """A results/<name> folder as allinone_basicsr.test writes it (each set's fingerprint: one per set name; the
    record of what made it, ``metrics.json``: this process's versions); ``average`` overrides the Average row's
    value (to tell compare's own average from the run's); without ``yml``, no option file (no model to build)."""
    folder.mkdir(parents=True)
    with open(folder / 'metrics.csv', 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['test_set', 'degradation', 'images', 'psnr', 'ssim', 'fingerprint'])
        for name, value in values.items():
            writer.writerow([name, 'noise', 3, value, ssim, f'sha256:{name}'])
        writer.writerow(['Average', '', 6, sum(values.values()) / len(values) if average is None else average, 0.5])
    write_record(folder, {'versions': versions(), 'protocol': metric_protocol(PROTOCOL)})
    if yml:
        (folder / 'test.yml').write_text(yaml.safe_dump({'name': folder.name, 'network_g': NET}))


def _csv_rows(out):
    with open(out / 'compare.csv') as f:
        return {r['method']: r for r in csv.DictReader(f)}


def test_table_matches_the_runs_csvs(tmp_path):
    for name, values in ROWS.items():
        _write_run(tmp_path / name, values)
    out = tmp_path / 'cmp'
    main([str(tmp_path / 'run_a'), str(tmp_path / 'run_b'), '--out', str(out)])
    rows = _csv_rows(out)
    assert list(rows) == ['run_a', 'run_b']
    for name, values in ROWS.items():
        for test_set in ('set1', 'set2'):
            assert float(rows[name][test_set]) == values[test_set]
        assert float(rows[name]['average']) == pytest.approx(sum(values.values()) / len(values))
        assert rows[name]['averaged_sets'] == '2'
        assert float(rows[name]['params (M)']) == pytest.approx(0.11, abs=0.01)  # the tiny SymUNet of the yml
    assert '| run_b | 31.00 | 25.00 | 28.00 | 2 | 0.12 |' in (out / 'compare.md').read_text()
    plot = cv2.imread(str(out / 'compare_psnr.png'))
    assert plot is not None and 500 <= plot.shape[0] <= 1500 and 900 <= plot.shape[1] <= 3000


def test_missing_metrics_and_unknown_metric_are_clear(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no metrics.csv'):
        main([str(tmp_path / 'empty'), '--out', str(tmp_path / 'o')])
    _write_run(tmp_path / 'run', {'s': 1.0})
    with pytest.raises(ValueError, match=r"no column 'lpips'; columns: \['test_set'"):
        main([str(tmp_path / 'run'), '--metric', 'lpips', '--out', str(tmp_path / 'o')])


def test_visual_grid_lq_methods_gt(tmp_path, capsys):
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
    # a wrong name: status 2, one line listing the sets and the image names there are
    for spec, listed in (('demo_rain:nope', f"no image 'nope' in test set 'demo_rain'; its images: {image}"),
                         ('rain:' + image, "no test set named 'rain' in the option file; its test sets: demo_rain")):
        with pytest.raises(SystemExit) as exit_info:
            cli(folders + ['--out', str(tmp_path / 'cmp'), '--grid', spec])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith('compare: error: --grid: ') and listed in err, err
        assert f'{folders[0]} saved outputs for demo_rain: {image}' in err, err


def test_plot_has_labelled_axes_ticks_values_legend_and_unclipped_names():
    long_set = 'BSD68_sigma25_denoise_with_a_very_long_name'
    methods = ['SymUNet_3task_full_recipe_run', 'PromptIR_3task_official_recipe_rerun']
    table = {methods[0]: {'Rain100L': 38.4, long_set: 31.8}, methods[1]: {'Rain100L': 37.8, long_set: 31.3}}
    averages = {m: sum(table[m].values()) / 2 for m in methods}
    fig = plot_metric(methods, ['Rain100L', long_set], table, 'psnr', averages, {m: 2 for m in methods})
    ax = fig.axes[0]
    assert ax.get_ylabel() == 'psnr (dB)' and ax.get_xlabel() == 'test set'
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert [t.replace('\n', '') for t in labels[:2]] == ['Rain100L', long_set]  # wrapped, never cut
    assert '\n' in labels[1] and labels[2].startswith('Average')
    low, high = ax.get_ylim()
    assert 20 < low < 31.3 and high > 38.4  # the differences show: not from 0 dB
    yticks = [t for t in ax.get_yticks() if low <= t <= high]
    assert len(yticks) >= 4 and all(t.get_text() for t in ax.get_yticklabels())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == methods
    values = {t.get_text() for t in ax.texts}
    assert {'38.40', '37.80', '31.80', '31.30', '35.10', '34.55'} <= values  # each bar and each average
    assert len(ax.patches) == 6  # 2 runs x (2 sets + Average)


def test_png_always_plus_svg_and_pdf(tmp_path):
    for name, values in ROWS.items():
        _write_run(tmp_path / name, values, yml=False)
    out = tmp_path / 'cmp'
    main([str(tmp_path / 'run_a'), str(tmp_path / 'run_b'), '--out', str(out), '--format', 'svg', 'pdf'])
    png = cv2.imread(str(out / 'compare_psnr.png'))
    assert png is not None and 500 <= png.shape[0] <= 1500 and 900 <= png.shape[1] <= 3000
    assert png.min() < 100 and png.max() == 255  # something drawn on white
    svg = ET.parse(out / 'compare_psnr.svg').getroot()
    assert svg.tag.endswith('svg') and 300 <= float(svg.get('width').rstrip('pt')) <= 1500
    assert (out / 'compare_psnr.pdf').read_bytes()[:5] == b'%PDF-'
    texts = [''.join(e.itertext()) for e in svg.iter() if e.tag.endswith('}text')]
    assert 'run_b' in texts and 'psnr (dB)' in texts and '25.00' in texts  # text kept as text in the vector copy
    with pytest.raises(SystemExit):
        main([str(tmp_path / 'run_a'), '--out', str(out), '--format', 'jpg'])


def test_different_sets_refused_and_common_sets_average_over_them(tmp_path):
    _write_run(tmp_path / 'run_a', {'set1': 30.5, 'set2': 20.25}, yml=False)
    _write_run(tmp_path / 'run_b', {'set1': 31.0, 'set3': 25.0}, yml=False, average=99.0)
    folders = [str(tmp_path / 'run_a'), str(tmp_path / 'run_b')]
    out = tmp_path / 'cmp'
    with pytest.raises(ValueError, match='different test sets') as error:
        main(folders + ['--out', str(out)])
    message = str(error.value)
    assert f'run_a ({folders[0]}): set1, set2' in message and f'run_b ({folders[1]}): set1, set3' in message
    assert '--common-sets' in message
    assert not (out / 'compare.csv').exists()
    main(folders + ['--out', str(out), '--common-sets'])
    rows = _csv_rows(out)
    assert list(rows['run_a']) == ['method', 'set1', 'average', 'averaged_sets', 'params (M)']
    assert float(rows['run_a']['average']) == 30.5 and float(rows['run_b']['average']) == 31.0  # never 99 or 25.4
    md = (out / 'compare.md').read_text()
    assert f'dropped from run_a ({folders[0]}): set2' in md and f'dropped from run_b ({folders[1]}): set3' in md
    assert '| run_b | 31.00 | 31.00 | 1 | – |' in md and 'computed by compare' in md
    _write_run(tmp_path / 'run_c', {'set4': 1.0}, yml=False)
    with pytest.raises(ValueError, match='share no test set'):
        main(folders + [str(tmp_path / 'run_c'), '--out', str(out), '--common-sets'])


def test_two_runs_with_the_same_name_are_refused(tmp_path):
    _write_run(tmp_path / 'a' / 'run', {'set1': 30.0}, yml=False)
    _write_run(tmp_path / 'b' / 'run', {'set1': 31.0}, yml=False)  # same folder basename
    first, second = str(tmp_path / 'a' / 'run'), str(tmp_path / 'b' / 'run')
    with pytest.raises(ValueError, match="two runs are named 'run'") as error:
        main([first, second, '--out', str(tmp_path / 'cmp')])
    assert first in str(error.value) and second in str(error.value)
    _write_run(tmp_path / 'run_x', {'set1': 30.0}, yml=False)
    _write_run(tmp_path / 'run_y', {'set1': 31.0}, yml=False)
    for folder in ('run_x', 'run_y'):  # different folders, the same `name` in the option files
        (tmp_path / folder / 'test.yml').write_text(yaml.safe_dump({'name': 'SymUNet_test'}))
    with pytest.raises(ValueError, match="two runs are named 'SymUNet_test'") as error:
        main([str(tmp_path / 'run_x'), str(tmp_path / 'run_y'), '--out', str(tmp_path / 'cmp')])
    assert str(tmp_path / 'run_x') in str(error.value) and str(tmp_path / 'run_y') in str(error.value)
    assert not (tmp_path / 'cmp').exists()


def test_inf_and_nan_drawn_shown_and_kept_out_of_the_average(tmp_path):
    _write_run(tmp_path / 'run_a', {'set1': 30.5, 'set2': math.inf, 'set3': 29.5}, yml=False)
    _write_run(tmp_path / 'run_b', {'set1': 31.0, 'set2': 33.0, 'set3': math.nan}, yml=False)
    out = tmp_path / 'cmp'
    with pytest.warns(CompareWarning) as record:
        main([str(tmp_path / 'run_a'), str(tmp_path / 'run_b'), '--out', str(out)])
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert messages[0].startswith('run_a / set2: psnr is inf, left out of the average')
    assert 'LQ is identical to the GT' in messages[0]
    assert messages[1].startswith('run_b / set3: psnr is nan, left out of the average')
    rows = _csv_rows(out)
    assert rows['run_a']['set2'] == 'inf' and rows['run_b']['set3'] == 'nan'
    assert float(rows['run_a']['average']) == 30.0 and rows['run_a']['averaged_sets'] == '2'
    assert float(rows['run_b']['average']) == 32.0 and rows['run_b']['averaged_sets'] == '2'
    md = (out / 'compare.md').read_text()
    assert '| run_a | 30.50 | inf | 29.50 | 30.00* | 2 | – |' in md
    assert '| run_b | 31.00 | 33.00 | nan | 32.00* | 2 | – |' in md
    assert messages[0] in md and messages[1] in md
    assert cv2.imread(str(out / 'compare_psnr.png')) is not None
    table = {'run_a': {'set1': 30.5, 'set2': math.inf}, 'run_b': {'set1': math.nan, 'set2': 33.0}}
    fig = plot_metric(['run_a', 'run_b'], ['set1', 'set2'], table, 'psnr')
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # no bar for inf nor nan
    assert {'inf', 'nan', '30.50', '33.00'} <= {t.get_text() for t in ax.texts}
    low, high = ax.get_ylim()
    assert math.isfinite(low) and math.isfinite(high) and low < 30.5 < 33.0 < high


def test_command_line_errors_are_one_message_and_warnings_one_line(tmp_path, monkeypatch, capsys):
    from allinone_basicsr.tools import compare
    _write_run(tmp_path / 'run_a', {'set1': 30.5}, yml=False)
    _write_run(tmp_path / 'run_b', {'set2': 31.0}, yml=False)
    monkeypatch.setattr(sys, 'argv', ['compare', str(tmp_path / 'run_a'), str(tmp_path / 'run_b'), '--out',
                                      str(tmp_path / 'cmp')])
    with pytest.raises(SystemExit) as exit_:
        compare.cli()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith('compare: error: the runs were tested on different test sets:')
    _write_run(tmp_path / 'run_c', {'set1': math.inf}, yml=False)
    monkeypatch.setattr(sys, 'argv', ['compare', str(tmp_path / 'run_c'), '--out', str(tmp_path / 'cmp')])
    hook = compare.warnings.showwarning
    with compare.warnings.catch_warnings():
        compare.warnings.simplefilter('always')
        with pytest.raises(SystemExit) as exit_:
            compare.cli()
    assert exit_.value.code == 0 and compare.warnings.showwarning is hook  # no global hook left behind
    assert 'compare: warning: run_c / set1: psnr is inf, left out of the average' in capsys.readouterr().err


@pytest.mark.slow
def test_a_set_of_the_same_name_with_other_images_is_refused(tmp_path):
    """Two real test runs (``allinone_basicsr.test``) whose ``demo_rain`` holds the rain pairs in one and the haze
    pairs in the other: compare refuses, naming the set and both runs; a third run on the rain pairs (a copy of the
    LMDBs elsewhere) compares with the first as before; --common-sets leaves the differing set out."""
    import shutil
    from pathlib import Path

    from make_demo_data import build_demo_data
    from pipeline_util import run_python

    repo = Path(__file__).resolve().parents[2]
    build_demo_data(str(tmp_path / 'datasets' / 'demo'), seed=0)
    shutil.copytree(tmp_path / 'datasets' / 'demo' / 'test', tmp_path / 'copy')
    with open(repo / 'options' / 'demo' / 'test_symunet_demo.yml') as f:
        base = yaml.safe_load(f)
    sources = {'rain': ('datasets/demo/test/rain_lq.lmdb', 'datasets/demo/test/rain_gt.lmdb'),
               'haze': ('datasets/demo/test/haze_lq.lmdb', 'datasets/demo/test/haze_gt.lmdb'),
               'copy': ('copy/rain_lq.lmdb', 'copy/rain_gt.lmdb')}
    for run, source in (('run_rain', 'rain'), ('run_haze', 'haze'), ('run_copy', 'copy')):
        opt = dict(base, name=run, network_g=dict(NET, restormer_heads=[1, 2, 4], restormer_middle_heads=8))
        opt['path'] = {'pretrain_network_g': None}
        opt['datasets'] = {'test_1': dict(base['datasets']['test_1_noise15']),
                           'test_2': dict(base['datasets']['test_4_rain'], dataroot_lq=sources[source][0],
                                          dataroot_gt=sources[source][1])}
        (tmp_path / f'{run}.yml').write_text(yaml.safe_dump(opt))
        run_python(['-m', 'allinone_basicsr.test', '-opt', f'{run}.yml'], tmp_path, timeout=300, threads=1)
    with open(tmp_path / 'results' / 'run_rain' / 'metrics.csv') as f:
        fingerprints = {r['test_set']: r['fingerprint'] for r in csv.DictReader(f)}
    assert fingerprints['demo_sigma15'].startswith('sha256:') and fingerprints['Average'] == ''

    refused = run_python(['-m', 'allinone_basicsr.tools.compare', 'results/run_rain', 'results/run_haze',
                          '--out', 'cmp1'], tmp_path, check=False, timeout=300, threads=1)
    assert refused.returncode == 2, refused.stderr[-2000:]
    message = refused.stderr.strip().splitlines()[-1]
    assert message.startswith("compare: error: test set 'demo_rain' holds different data in run_rain "
                              "(results/run_rain, sha256:"), message
    assert 'and in run_haze (results/run_haze, sha256:' in message and '--common-sets' in message
    assert 'demo_sigma15' not in message and not (tmp_path / 'cmp1').exists()

    same = run_python(['-m', 'allinone_basicsr.tools.compare', 'results/run_rain', 'results/run_copy',
                       '--out', 'cmp2'], tmp_path, timeout=300, threads=1)
    assert 'warning' not in same.stderr, same.stderr[-2000:]
    rows = _csv_rows(tmp_path / 'cmp2')
    assert rows['run_rain']['demo_rain'] == rows['run_copy']['demo_rain'] and rows['run_rain']['averaged_sets'] == '2'

    common = run_python(['-m', 'allinone_basicsr.tools.compare', 'results/run_rain', 'results/run_haze',
                         '--out', 'cmp3', '--common-sets'], tmp_path, timeout=300, threads=1)
    assert "compare: warning: test set 'demo_rain' holds different data" in common.stderr
    assert list(_csv_rows(tmp_path / 'cmp3')['run_haze'])[:3] == ['method', 'demo_sigma15', 'average']
    md = (tmp_path / 'cmp3' / 'compare.md').read_text()
    assert '--common-sets: left out demo_rain (different data under one name)' in md


def test_runs_without_fingerprints_are_compared_by_name_with_a_notice(tmp_path, capsys):
    for name in ('old_a', 'old_b'):
        folder = tmp_path / name
        folder.mkdir()
        (folder / 'metrics.csv').write_text('test_set,degradation,images,psnr\nset1,noise,3,30.0\n')
    from allinone_basicsr.tools import compare
    with pytest.raises(SystemExit) as exit_:
        compare.cli([str(tmp_path / 'old_a'), str(tmp_path / 'old_b'), '--out', str(tmp_path / 'cmp')])
    assert exit_.value.code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'compare: warning: {n} ({tmp_path / n}): no test-set fingerprint in its metrics.csv (an older '
                   'file, or a stock dataset) for set1: compared by name only' for n in ('old_a', 'old_b')] + [
        f'compare: warning: old_a ({tmp_path / "old_a"}), old_b ({tmp_path / "old_b"}): no metrics.json (results '
        'written before runs recorded what made them): the library versions and metric protocol of their numbers '
        'are unknown']


def test_runs_made_with_other_versions_or_metric_options_are_named_in_one_warning_each(tmp_path, capsys):
    """Three runs whose records (written as a run writes them, then one version and one metric option changed by
    hand) differ in scikit-image and in psnr's crop_border: one warning per field, naming the runs; a field of
    another metric (ssim) is not the compared one and says nothing; the notes are in compare.md too."""
    from allinone_basicsr.tools import compare
    for name in ('run_a', 'run_b', 'run_c'):
        _write_run(tmp_path / name, ROWS['run_a'], yml=False)
    record = read_record(tmp_path / 'run_b')
    record['versions']['scikit-image'] = '0.19.3'
    record['protocol']['ssim']['data_range'] = 255
    write_record(tmp_path / 'run_b', record)
    record = read_record(tmp_path / 'run_c')
    record['protocol']['psnr']['crop_border'] = 4
    write_record(tmp_path / 'run_c', record)
    with pytest.raises(SystemExit) as exit_:
        compare.cli([str(tmp_path / n) for n in ('run_a', 'run_b', 'run_c')] + ['--out', str(tmp_path / 'cmp')])
    assert exit_.value.code == 0
    err = capsys.readouterr().err.strip().splitlines()
    skimage = versions()['scikit-image']
    assert err[0] == (f'compare: warning: the runs differ in scikit-image: {skimage} in run_a, run_c; 0.19.3 in '
                      'run_b')
    assert err[1].startswith("compare: warning: the runs differ in the protocol of metric 'psnr': "
                             'allinone_basicsr.metrics.psnr_ssim_metric.calculate_psnr_aio(crop_border=0, ')
    first, second = err[1].split('; ')
    assert first.endswith(" input='float RGB tensors', clamp=True) in run_a, run_b")
    assert '(crop_border=4, ' in second and second.endswith(' in run_c')
    assert len(err) == 2, err
    md = (tmp_path / 'cmp' / 'compare.md').read_text()
    assert err[0].split('warning: ')[1] in md and err[1].split('warning: ')[1] in md


@pytest.mark.slow
def test_a_test_run_records_what_made_its_numbers_and_compare_reads_it(tmp_path, capsys):
    """A real test run (``allinone_basicsr.test``, a tiny random SymUNet on the demo noise set) writes metrics.json:
    the versions of torch, scikit-image, basicsr and the plugin (this checkout's git hash), and the protocol of its
    metrics; metrics.md says it in a line; metrics.csv reads as before (fingerprint kept). A copy whose record names
    another torch is compared with one warning naming both runs."""
    import shutil
    import subprocess
    from pathlib import Path

    import skimage
    import torch
    from make_demo_data import build_demo_data
    from pipeline_util import run_python

    from allinone_basicsr.tools import compare
    from allinone_basicsr.tools.common import read_metrics_csv

    import basicsr

    repo = Path(__file__).resolve().parents[2]
    build_demo_data(str(tmp_path / 'datasets' / 'demo'), seed=0)
    with open(repo / 'options' / 'demo' / 'test_symunet_demo.yml') as f:
        base = yaml.safe_load(f)
    opt = dict(base, name='run_a', network_g=dict(NET, restormer_heads=[1, 2, 4], restormer_middle_heads=8))
    opt['path'] = {'pretrain_network_g': None}
    opt['datasets'] = {'test_1': dict(base['datasets']['test_1_noise15'])}
    metrics = dict(base['val']['metrics'], psnr_y={'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': True})
    opt['val'] = dict(base['val'], save_img=False, metrics=metrics)
    (tmp_path / 'run_a.yml').write_text(yaml.safe_dump(opt))
    run_python(['-m', 'allinone_basicsr.test', '-opt', 'run_a.yml'], tmp_path, timeout=300, threads=1)
    results = tmp_path / 'results' / 'run_a'
    record = read_record(results)
    head = subprocess.run(['git', '-C', str(repo), 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                          timeout=30, check=True).stdout.strip()
    assert record['versions']['torch'] == torch.__version__
    assert record['versions']['scikit-image'] == skimage.__version__
    assert record['versions']['basicsr'] == basicsr.__version__
    assert record['versions']['allinone_basicsr'].split('+')[0] == f'git {head}'
    assert set(record['protocol']) == set(metrics)
    assert record['protocol']['psnr_y']['input'] == 'uint8 BGR images (tensor2img)'
    for name, metric_opt in metrics.items():
        entry = record['protocol'][name]
        assert entry['function'].endswith('.' + metric_opt['type'])
        assert {k: entry[k] for k in metric_opt if k != 'type'} == {k: v for k, v in metric_opt.items() if k != 'type'}
        assert entry['clamp'] is True and 'crop_border' in entry
        if metric_opt['type'].endswith('_aio'):
            assert entry['data_range'] == 1.0 and entry['input'] == 'float RGB tensors'
    md = (results / 'metrics.md').read_text()
    assert f'Made with torch {torch.__version__}, scikit-image {skimage.__version__}' in md and 'metrics.json' in md
    assert read_metrics_csv(results)['demo_sigma15']['fingerprint'].startswith('sha256:')

    shutil.copytree(results, tmp_path / 'results' / 'run_b')
    options = yaml.safe_load((tmp_path / 'results' / 'run_b' / 'options.yml').read_text())
    (tmp_path / 'results' / 'run_b' / 'options.yml').write_text(yaml.safe_dump(dict(options, name='run_b')))
    record['versions']['torch'] = '2.0.0'
    write_record(tmp_path / 'results' / 'run_b', record)
    with pytest.raises(SystemExit) as exit_:
        compare.cli([str(results), str(tmp_path / 'results' / 'run_b'), '--out', str(tmp_path / 'cmp')])
    assert exit_.value.code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f'compare: warning: the runs differ in torch: {torch.__version__} in run_a; 2.0.0 in run_b'], err


def test_a_set_with_an_inf_is_left_out_of_every_metric_average(tmp_path):
    _write_run(tmp_path / 'run_a', {'set1': 30.5, 'set2': math.inf}, yml=False, ssim=0.5)
    out = tmp_path / 'cmp'
    with pytest.warns(CompareWarning, match=r'run_a / set2: ssim 0.5000 left out of the average: the set has psnr '
                                            r'inf'):
        main([str(tmp_path / 'run_a'), '--out', str(out), '--metric', 'ssim'])
    assert _csv_rows(out)['run_a']['averaged_sets'] == '1'


def test_help_says_how_grid_names_are_formed(capsys):
    with pytest.raises(SystemExit):
        main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert "IMAGE the stem of its LQ file or LMDB key (noise sets add _sigma<σ>, e.g. coffee_000_sigma25)" in text
