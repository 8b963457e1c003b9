"""``python -m allinone_basicsr.tools.table``: the paper's tables as data (tables/*.yml), rendered from the results that
exist (ours, the paper's, the difference; rows not run marked), checked specs with errors naming the row and the
file, and one CPU smoke run that trains and tests every row of every shipped spec at demo scale."""
import csv
import math
import time
from pathlib import Path

import pytest
import yaml
from pipeline_util import run_python

from allinone_basicsr.tools import table as tb
from allinone_basicsr.tools import table_smoke as tb_smoke

from basicsr.utils.registry import ARCH_REGISTRY

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted(str(p) for p in (REPO / 'tables').glob('*.yml'))
TINY_DAAIR = {'type': 'DaAIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_dec_blocks': [1, 1, 1],
              'num_refinement_blocks': 1, 'rank_ratio': 4, 'expert_kernel_size': 3}


# ------------------------------------------------------------------------------------------------- fake projects
def _dataset(name, degradation, sigma=None):
    d = {'name': name, 'type': 'AllInOneTestDataset', 'degradation': degradation,
         'dataroot_gt': 'datasets/test/x_gt.lmdb'}
    if sigma:
        d['noise_sigma'] = sigma
    return d


def write_project(root, rows=(('A', 'RunA', True), ('B', 'RunB', False)), spec_edit=None):
    """A repository-like folder: options/ with a train and a test file per row, tables/t.yml; returns the spec."""
    (root / 'options').mkdir(parents=True, exist_ok=True)
    (root / 'tables').mkdir(exist_ok=True)
    spec_rows = []
    for label, name, with_rain in rows:
        sets = {'test_1': _dataset('BSD68_sigma25', 'noise', 25)}
        if with_rain:
            sets['test_2'] = _dataset('Rain100L', 'rain')
        test = {'name': f'{name}_test', 'model_type': 'AllInOneModel', 'datasets': sets, 'network_g': TINY_DAAIR,
                'path': {'pretrain_network_g': f'experiments/{name}/models/net_g_latest.pth'}}
        (root / 'options' / f'test_{name}.yml').write_text(yaml.safe_dump(test))
        (root / 'options' / f'train_{name}.yml').write_text(yaml.safe_dump({'name': name, 'datasets': {}}))
        spec_rows.append({'label': label, 'train': f'options/train_{name}.yml', 'test': f'options/test_{name}.yml'})
    spec = {
        'title': 'Fake Table 9', 'paper': 'Somebody et al.', 'source': 'a test', 'metrics': ['psnr', 'ssim'],
        'columns': [{'key': 'params', 'label': 'Params', 'kind': 'params'},
                    {'key': 'noise', 'label': 'BSD68 σ25', 'test_set': 'BSD68_sigma25'},
                    {'key': 'rain', 'label': 'Rain100L', 'test_set': 'Rain100L'},
                    {'key': 'avg', 'label': 'Avg', 'average': ['BSD68_sigma25', 'Rain100L']},
                    {'key': 'tick', 'label': 'Part', 'kind': 'text'}],
        'rows': spec_rows,
        'notes': ['a table note'],
    }
    spec['rows'][0].update(paper={'params': 1.5, 'noise': [30.0, 0.85], 'rain': [35.5, None], 'avg': [32.75, None]},
                           notes={'rain': 'SSIM not printed', 'avg': 'SSIM not printed'}, text={'tick': '✓'})
    spec['rows'][1].update(paper={'noise': [31.0, 0.9]}, notes={'params': 'no size printed'}, text={'tick': '-'})
    if spec_edit:
        spec_edit(spec)
    path = root / 'tables' / 't.yml'
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    return path


def write_results(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / 'metrics.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['test_set', 'degradation', 'images', 'input_psnr', 'psnr', 'ssim'])
        writer.writeheader()
        for name, psnr, ssim in rows:
            writer.writerow({'test_set': name, 'degradation': 'x', 'images': 2, 'input_psnr': 10.0, 'psnr': psnr,
                             'ssim': ssim})
        writer.writerow({'test_set': 'Average', 'degradation': '', 'images': 4, 'input_psnr': 10.0, 'psnr': 99.0,
                         'ssim': 0.99})  # never read: averages are computed from the sets


def read_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------------- rendering
def test_table_from_fake_results_has_ours_paper_and_difference(tmp_path, capsys):
    spec = write_project(tmp_path)
    write_results(tmp_path / 'results' / 'RunA_test', [('BSD68_sigma25', 30.5, 0.86), ('Rain100L', 35.0, 0.95)])
    out = tmp_path / 'tables_out'
    assert tb.main([str(spec), '--root', str(tmp_path), '--out', str(out), '--no-macs']) == 0
    text = (out / 't.md').read_text()
    assert text == capsys.readouterr().out.split('\n', 1)[1].split('\nwrote ')[0]  # printed as written
    params = sum(p.numel() for p in ARCH_REGISTRY.get('DaAIR')(
        **{k: v for k, v in TINY_DAAIR.items() if k != 'type'}).parameters() if p.requires_grad) / 1e6
    lines = text.splitlines()
    header = '| Method |  | Params | BSD68 σ25 | Rain100L | Avg | Part |'
    assert header in lines
    i = lines.index(header)
    assert lines[i + 2] == f'| A | ours | {params:.2f}M | 30.50/0.8600 | 35.00/0.9500 | 32.75/0.9050 | ✓ |'
    assert lines[i + 3] == '|  | paper | 1.5M | 30.00/0.850 | 35.50/n.g.* | 32.75/n.g.* | ✓ |'
    assert lines[i + 4] == f'|  | Δ | {params - 1.5:+.2f}M | +0.50/+0.0100 | -0.50/· | +0.00/· |  |'
    # row B: no results (not run), no Rain100L in its test file (a dash), no size in the paper (noted)
    assert lines[i + 5] == f'| B (not run) | ours | {params:.2f}M | not run | — | — | - |'
    assert lines[i + 6] == '|  | paper | n.g.* | 31.00/0.900 | — | — | - |'
    assert lines[i + 7] == '|  | Δ |  |  |  |  |  |'
    assert '- A, Rain100L: SSIM not printed' in lines and '- B, Params: no size printed' in lines
    assert '- a table note' in lines
    assert '- B: train `options/train_RunB.yml`, test `options/test_RunB.yml`, results `results/RunB_test` (not run)' \
        in text.replace(str(tmp_path) + '/', '')

    cells = read_csv(out / 't.csv')
    assert list(cells[0]) == list(tb.CSV_FIELDS)
    by = {(c['row'], c['column'], c['metric']): c for c in cells}
    cell = by['A', 'noise', 'psnr']
    assert (float(cell['ours']), float(cell['paper']), float(cell['diff']), cell['status']) == (30.5, 30.0, 0.5, 'ok')
    assert float(by['A', 'avg', 'psnr']['ours']) == pytest.approx(32.75)  # mean of the sets, not the file's 99
    assert float(by['A', 'avg', 'ssim']['ours']) == pytest.approx(0.905) and by['A', 'avg', 'ssim']['paper'] == ''
    assert by['A', 'avg', 'ssim']['note'] == 'SSIM not printed'
    assert by['B', 'noise', 'psnr']['status'] == 'not run' and by['B', 'noise', 'psnr']['ours'] == ''
    assert by['B', 'rain', 'psnr']['status'] == '—' and by['B', 'params', 'params']['note'] == 'no size printed'
    assert float(by['B', 'params', 'params']['ours']) == pytest.approx(params)
    assert by['A', 'tick', '']['ours'] == '✓'
    assert len(cells) == 2 * (1 + 2 * 3 + 1)  # per row: params, 3 metric columns × 2 metrics, one text cell


def test_results_missing_a_set_are_marked(tmp_path):
    spec = tb.load_spec(str(write_project(tmp_path)))
    write_results(tmp_path / 'results' / 'RunA_test', [('BSD68_sigma25', 29.0, 0.8)])  # Rain100L absent
    write_results(tmp_path / 'results' / 'RunB_test', [('BSD68_sigma25', 31.25, 0.9)])
    cells, statuses = tb.build_table(spec, root=str(tmp_path))
    by = {(c['row'], c['column'], c['metric']): c for c in cells}
    assert statuses == {'A': 'ok', 'B': 'ok'}
    assert by['A', 'rain', 'psnr']['status'] == by['A', 'avg', 'psnr']['status'] == 'missing'
    assert by['B', 'noise', 'psnr']['diff'] == pytest.approx(0.25)
    text = tb.render_markdown(spec, cells, statuses)
    assert '| A | ours |  | 29.00/0.8000 | missing | missing | ✓ |' in text  # no efficiency counter: no size


def test_rows_made_with_other_versions_or_metric_options_are_warned_and_noted(tmp_path):
    """Rows whose runs' records (written as a run writes them, then changed by hand: basicsr's version in B, the
    ssim protocol in C) differ: one warning per field naming the rows, the same lines among the table's notes; a
    row without a record gets the notice; the CSV reader is unchanged (the numbers are the files')."""
    from allinone_basicsr.utils.metric_table import metric_protocol
    from allinone_basicsr.utils.run_record import versions, write_record

    def like_b(spec):  # rows C and D: B's printed numbers
        for row in spec['rows'][2:]:
            row.update({k: v for k, v in spec['rows'][1].items() if k in ('paper', 'notes', 'text')})

    spec = tb.load_spec(str(write_project(tmp_path, rows=(('A', 'RunA', True), ('B', 'RunB', False),
                                                          ('C', 'RunC', False), ('D', 'RunD', False)),
                                          spec_edit=like_b)))
    metrics = {'metrics': {'psnr': {'type': 'calculate_psnr_aio'}, 'ssim': {'type': 'calculate_ssim_aio'}}}
    for name in ('RunA', 'RunB', 'RunC', 'RunD'):
        folder = tmp_path / 'results' / f'{name}_test'
        write_results(folder, [('BSD68_sigma25', 30.0, 0.8), ('Rain100L', 35.0, 0.9)])
        record = {'versions': versions(), 'protocol': metric_protocol(metrics)}
        if name == 'RunB':
            record['versions']['basicsr'] = '1.3.5'
        if name == 'RunC':
            record['protocol']['ssim']['data_range'] = 255
        if name != 'RunD':
            write_record(folder, record)
    out = tmp_path / 'out'
    with pytest.warns(tb.TableWarning) as caught:
        text, cells, _ = tb.write_table(spec, str(out), root=str(tmp_path))
    messages = [str(w.message) for w in caught]
    assert messages[0] == 't: D (results/RunD_test): no metrics.json (results written before runs recorded ' \
        'what made them): the library versions and metric protocol of their numbers are unknown'
    assert messages[1] == f't: the runs differ in basicsr: {versions()["basicsr"]} in A, C; 1.3.5 in B'
    assert messages[2].startswith("t: the runs differ in the protocol of metric 'ssim': ")
    assert messages[2].split('; ')[0].endswith(' in A, B') and 'data_range=255' in messages[2].split('; ')[1]
    assert messages[2].endswith(' in C')
    assert len(messages) == 3, messages
    for message in messages:
        assert f'- {message[3:]}' in text.splitlines()
    assert {c['ours'] for c in cells if c['column'] == 'noise' and c['metric'] == 'psnr'} == {30.0}


def test_a_record_that_is_not_json_is_a_usage_error_naming_it(tmp_path):
    spec = write_project(tmp_path)
    write_results(tmp_path / 'results' / 'RunA_test', [('BSD68_sigma25', 30.5, 0.86), ('Rain100L', 35.0, 0.95)])
    (tmp_path / 'results' / 'RunA_test' / 'metrics.json').write_text('{"versions": ')
    with pytest.raises(tb.UsageError, match=r'RunA_test/metrics.json: not a JSON record of versions'):
        tb.main([str(spec), '--root', str(tmp_path), '--out', str(tmp_path / 'out'), '--no-macs'])


# ------------------------------------------------------------------------------------------------- spec errors
@pytest.mark.parametrize('edit, message', [
    (lambda s: s['rows'][1].update(test='options/test_Nope.yml'),
     r"row 'B': test file options/test_Nope.yml does not exist \(.*options/test_Nope.yml\)"),
    (lambda s: s['rows'][0].update(train=None), r"row 'A': train: expected an option file path, got None"),
    (lambda s: s['rows'][1]['paper'].update(rain=[30.0, 0.9]),
     r"row 'B': the paper gives rain = \[30.0, 0.9\], but the test file options/test_RunB.yml does not score "
     r"\['Rain100L'\]"),
    (lambda s: s['rows'][0]['notes'].pop('rain'), r"row 'A', paper.rain: the paper's value is missing \(null\); give "
     r"it, or say why"),
    (lambda s: s['rows'][1]['notes'].pop('params'), r"row 'B', paper.params: the paper's value is missing"),
    (lambda s: s['rows'][0]['paper'].update(noise=[30.0]), r"row 'A', paper.noise: expected a list of 2 numbers"),
    (lambda s: s['rows'][0]['paper'].update(noise=['30', 0.8]), r"row 'A', paper.noise: expected a number or null, "
     r"got '30'"),
    (lambda s: s['rows'][0]['paper'].update(bogus=1), r"row 'A': paper has cell\(s\) \['bogus'\] that are no column"),
    (lambda s: s['rows'][1].update(label='A'), r"rows\[1\]: duplicate label 'A'"),
    (lambda s: s['columns'][1].update(tset='x'), r"columns\[1\] \('noise'\): unknown field\(s\) \['tset'\]"),
    (lambda s: s['columns'].append({'key': 'g', 'kind': 'gmacs'}), r"columns\[5\] \('g'\): a gmacs column needs size"),
    (lambda s: s['columns'].append({'key': 'noise', 'test_set': 'X'}), r"columns: duplicate key\(s\) \['noise'\]"),
    (lambda s: s.pop('metrics'), r'metrics: missing'),
    (lambda s: s.update(caption='x'), r"unknown field\(s\) \['caption'\]"),
])
def test_spec_errors_name_the_row_column_and_file(tmp_path, edit, message):
    path = write_project(tmp_path, spec_edit=edit)
    with pytest.raises(tb.TableSpecError, match=message):
        tb.load_spec(str(path))


def test_cli_reports_a_bad_spec_as_a_usage_error(tmp_path, capsys):
    path = write_project(tmp_path, spec_edit=lambda s: s['rows'][1].update(train='options/train_Gone.yml'))
    with pytest.raises(SystemExit) as exit_:
        tb.cli([str(path), '--root', str(tmp_path), '--no-macs'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"table: error: {path}: row 'B': train file options/train_Gone.yml does not exist")
    with pytest.raises(tb.UsageError, match='table spec: no such file'):
        tb.main([str(tmp_path / 'tables' / 'none.yml')])


def test_smoke_names_a_data_path_it_cannot_build(tmp_path):
    spec = tb.load_spec(str(write_project(tmp_path)))
    spec.rows[0].test_opt['datasets']['test_1']['dataroot_gt'] = 'datasets/test/urban100.lmdb'
    with pytest.raises(tb.TableSpecError, match=r"row 'A': test file options/test_RunA.yml: "
                                                r'datasets.test_1.dataroot_gt = datasets/test/urban100.lmdb: --smoke '
                                                r'knows no demo data for this path'):
        tb_smoke.smoke_data_paths(spec.rows)


# ---------------------------------------------------------------------------------------------- shipped specs
def test_shipped_specs_load_and_cover_the_papers_tables():
    names = {Path(p).stem for p in SPECS}
    assert {'daair_table1', 'daair_table2', 'daair_table3', 'daair_table4', 'symunet_table1', 'promptir_table1',
            'promptdsanet_table1'} <= names
    specs = [tb.load_spec(p) for p in SPECS]  # every option file exists, every null cell has a note
    files = {Path(f).name for s in specs for r in s.rows for f in (r.train, r.test)}
    table_rows = {p.name for p in (REPO / 'options').glob('*.yml') if any(
        tag in p.name for tag in ('_ablation_', '_denoise', '_derain', '_dehaze', '_sigma25', '_promptdsanet_protocol',
                                  'promptdsanet_paper'))}
    assert table_rows and table_rows <= files  # every row file of this issue is in a table
    daair4 = next(s for s in specs if s.name == 'daair_table4')
    assert [r.label for r in daair4.rows] == [  # the reading of docs/tables.md: 1 A, 2 S, 3 controller, 4 loss
        'Baseline', '(a) specialised experts + controller', '(b) w/o specialised experts', '(c) w/o controller',
        '(d) w/o routing loss', 'DaAIR (ours)']
    switches = {r.label[:3]: r.train_opt['network_g'] for r in daair4.rows}
    assert switches['(c)']['controller'] is False and 'cls_opt' in daair4.rows[3].train_opt['train']
    assert switches['(d)']['controller'] is True and 'cls_opt' not in daair4.rows[4].train_opt['train']
    alt = next(s for s in specs if s.name == 'daair_table4_alt')  # the other reading: (c) and (d) swap files
    assert [Path(r.train).name for r in alt.rows][3:5] == ['train_daair_ablation_d.yml', 'train_daair_ablation_c.yml']
    assert [r.paper['avg'] for r in alt.rows] == [r.paper['avg'] for r in daair4.rows]
    assert [r.paper['avg'][0] for r in daair4.rows] == [31.86, 32.12, 32.41, 32.44, 32.23, 32.51]
    for spec in specs:  # each row's network and protocol: the test file scores the train file's model
        for row in spec.rows:
            assert row.test_opt['path']['pretrain_network_g'] in (
                f"experiments/{row.train_opt['name']}/models/net_g_latest.pth", 'pretrained/promptir_model.ckpt'), \
                (spec.name, row.label)


def test_printed_averages_are_the_means_of_the_printed_cells():
    """A typo check of the transcribed numbers: every printed average equals the mean of the row's printed set
    values (to the printed precision), except where a note says the paper's own average differs."""
    checked = 0
    for spec in (tb.load_spec(p) for p in SPECS):
        for column in (c for c in spec.columns if c.kind == 'average'):
            set_keys = [next(c.key for c in spec.columns if c.kind == 'set' and c.test_set == s)
                        for s in column.average if any(c.kind == 'set' and c.test_set == s for c in spec.columns)]
            for row in spec.rows:
                paper = row.paper.get(column.key)
                if not paper or len(set_keys) != len(column.average) or row.notes.get(column.key):
                    continue
                for j, value in enumerate(paper):
                    values = [row.paper[k][j] for k in set_keys]
                    if value is None or None in values:
                        continue
                    tolerance = 0.011 if j == 0 else 0.0011  # the printed cells and average are each rounded
                    assert math.isclose(sum(values) / len(values), value, abs_tol=tolerance), (spec.name, row.label)
                    checked += 1
    assert checked >= 12


def test_commands_train_and_test_every_distinct_row_once(capsys):
    specs = [str(REPO / 'tables' / 'daair_table1.yml'), str(REPO / 'tables' / 'daair_table4.yml'),
             str(REPO / 'tables' / 'daair_table3.yml')]
    assert tb.main([*specs, '--commands']) == 0
    lines = capsys.readouterr().out.splitlines()
    train = 'torchrun --nproc_per_node=4 -m allinone_basicsr.train -opt options/train_daair.yml --launcher pytorch'
    assert lines.count(train) == 1  # DaAIR is in Tables 1 and 4: trained once
    assert sum(line.startswith('torchrun --nproc_per_node=4 ') for line in lines) == 7  # 2 + 5 ablations
    assert 'python -m allinone_basicsr.train -opt options/train_daair_denoise.yml' in lines  # one GPU: no torchrun
    assert lines[lines.index(train) + 1] == 'python -m allinone_basicsr.test -opt options/test_daair.yml'
    # the PromptIR test file scores the official release: the command points it at the run's own checkpoint
    assert 'python -m allinone_basicsr.test -opt options/test_promptir.yml --force_yml ' \
        'path:pretrain_network_g=experiments/PromptIR_3task/models/net_g_latest.pth' in lines


# ------------------------------------------------------------------------------------------------- smoke run
@pytest.mark.slow
def test_smoke_trains_and_tests_every_row_of_every_spec(tmp_path):
    """``--smoke`` on all shipped specs in one process: every distinct row's option files build, train 2 iterations
    and test at demo scale on the CPU, and each table is written from those runs with numbers in every cell its
    row's test file scores (no row 'not run')."""
    start = time.time()
    proc = run_python(['-m', 'allinone_basicsr.tools.table', *SPECS, '--smoke', '--smoke-dir', str(tmp_path / 'smoke'),
                       '--smoke-iters', '2'], cwd=tmp_path, timeout=600, threads=1)
    duration = time.time() - start
    print(f'table --smoke on {len(SPECS)} specs: {duration:.0f} s')
    rows = {(r.train, r.test) for s in map(tb.load_spec, SPECS) for r in s.rows}
    assert f'smoke: {len(rows)} of {len(rows)} rows trained and tested' in proc.stdout
    assert proc.stdout.count('trained 2 it.') == len(rows) and 'FAILED' not in proc.stdout
    for path in SPECS:
        spec = tb.load_spec(path)
        cells = read_csv(tmp_path / 'smoke' / 'tables' / f'{spec.name}.csv')
        assert (tmp_path / 'smoke' / 'tables' / f'{spec.name}.md').read_text().startswith(f'# {spec.title}')
        for cell in cells:
            if cell['kind'] in ('set', 'average'):
                assert cell['status'] in ('ok', '—'), (spec.name, cell)
                assert (cell['ours'] != '') == (cell['status'] == 'ok'), (spec.name, cell)
            elif cell['kind'] in ('params', 'gmacs'):
                assert float(cell['ours']) > 0, (spec.name, cell)
        for row in spec.rows:
            written = yaml.safe_load((tmp_path / 'smoke' / 'options' / Path(row.test).name).read_text())
            assert {k: v for k, v in written['network_g'].items() if k not in tb.SMOKE_NETWORKS[
                written['network_g']['type']]} == {k: v for k, v in row.test_opt['network_g'].items()
                                                   if k not in tb.SMOKE_NETWORKS[written['network_g']['type']]}
