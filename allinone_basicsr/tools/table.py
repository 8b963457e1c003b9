"""A paper's table with our numbers beside the printed ones: one spec file per table, one command.

    python -m allinone_basicsr.tools.table tables/daair_table1.yml [more specs] [--root DIR] [--out DIR] [--no-macs]
    python -m allinone_basicsr.tools.table tables/*.yml --smoke [--smoke-dir DIR] [--smoke-iters 3]
    python -m allinone_basicsr.tools.table tables/daair_table4.yml --commands   (the train / test commands of its rows)
    allinone-table ...                          (console script)

A table spec (``tables/<paper>_<table>.yml``) is data: the paper's columns (test sets, averages, parameters, MACs,
text such as Table 4's ticks) and rows, each row an option file pair (``train``, ``test``) with the results folder
its test writes (``results/<test name>`` unless ``results`` says otherwise) and the numbers the paper prints for
each cell (``null`` where the paper gives none, with a note saying why). Option paths are relative to the folder
that holds the spec's folder (the repository: ``options/...``); results folders to ``--root`` (default: the working
directory, where ``python -m allinone_basicsr.test`` writes them).

For each spec, ``<out>/<spec name>.md`` and ``.csv`` (default ``--out``: ``results/tables`` under ``--root``): every
row as three lines, ours / the paper's / the difference (ours - paper), in the paper's column order. Rows whose
results do not exist yet are marked *not run*; cells the row's test file does not score are marked with a dash.
Averages are computed from our per-set values (never read from a run's own Average row). Rows whose runs'
``metrics.json`` differ in a library version or the protocol of a metric of the spec get a warning per field (and a
note in the table); runs without one a notice. Parameters (trainable)
are counted from the row's test option file; MACs (mmengine, attention counted) at the spec's size unless
``--no-macs``.

``--smoke`` proves every row's files build, train and test, at demo scale on the CPU: a tiny data tree in the
layout the option files read (the demo photos of ``datasets_prep/make_demo_data.py``, with synthetic blur and low
light, the key lists the files name) is built under ``--smoke-dir``; each row's option files are rewritten there at
a tiny width (the size keys of its arch only: switches, classes and protocol kept), 32² patches, batch 2 and
``--smoke-iters`` iterations, then trained and tested in this process (rows shared by several specs run once), and
the tables are written from those results (default ``--out``: ``<smoke-dir>/tables``). The numbers mean nothing;
that every row ran does. Needs a source checkout (``datasets_prep/``).
"""
import argparse
import csv
import json
import os
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from os import path as osp

from allinone_basicsr.tools.common import UsageError, build_network, run
from allinone_basicsr.tools.table_smoke import SMOKE_MACS_SIZE, run_smoke, smoke_network
from allinone_basicsr.tools.table_spec import (MISSING, NOT_GIVEN, NOT_RUN, NOT_TESTED, TableSpecError, _load_yaml,
                                               applicable, load_spec, our_cell, read_results)
from allinone_basicsr.utils.metric_table import format_value
from allinone_basicsr.utils.run_record import differences, read_record
from allinone_basicsr.utils.smoke import SMOKE_NETWORKS  # noqa: F401  (the sizes --smoke uses)


# --------------------------------------------------------------------------------------------------- efficiency
def count_macs(net, size):
    """MACs of one 1×3×size×size forward (``utils.complexity``: mmengine, attention counted by shape)."""
    import torch

    from allinone_basicsr.utils.complexity import analyse
    with torch.no_grad():
        return float(analyse(net, size)[0])


class Efficiency:
    """Parameters and MACs of option files' networks, counted once per distinct ``network_g`` (only the last
    network built is kept: full-size ones take gigabytes)."""

    def __init__(self, macs=True):
        self.macs = macs
        self._params, self._macs, self._last = {}, {}, (None, None)

    def _net(self, key, network_g):
        if self._last[0] != key:
            self._last = (None, None)  # the previous network is freed before the next one is built
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                self._last = (key, build_network(network_g))  # sizes do not depend on external weights
        return self._last[1]

    @staticmethod
    def _key(network_g):
        return json.dumps(network_g, sort_keys=True, default=str)

    def params(self, network_g):
        """Trainable parameters (frozen CLIP towers excluded, as the papers count)."""
        key = self._key(network_g)
        if key not in self._params:
            net = self._net(key, network_g)
            self._params[key] = float(sum(p.numel() for p in net.parameters() if p.requires_grad))
        return self._params[key]

    def gmacs(self, network_g, size):
        """GMACs of one 1×3×size×size forward (None when MACs are off)."""
        if not self.macs:
            return None
        key = self._key(network_g)
        if (key, size) not in self._macs:
            net = self._net(key, network_g)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                self._macs[key, size] = count_macs(net, size) / 1e9
        return self._macs[key, size]


# ------------------------------------------------------------------------------------------------------ the table
def _fmt(metric, value, paper=False):
    """Our value as every table shows it; the paper's SSIM as printed when it has 3 decimals."""
    if paper and value is not None and 'ssim' in metric.lower() and abs(round(value, 3) - value) < 1e-9:
        return f'{value:.3f}'
    return format_value(metric, value)


def _fmt_diff(metric, value):
    return format_value(metric, value, sign=True)


def _fmt_size(kind, value, paper=False):
    if value is None:
        return ''
    if kind == 'params':
        return f'{value:g}M' if paper else f'{value:.2f}M'
    return f'{value:g}' if paper else f'{value:.3g}'


def build_table(spec, root='.', efficiency=None, macs_size=None):
    """The table's cells: [{row, column, metric, ours, paper, diff, status, note, ...}] plus the rows' statuses.

    Args:
        spec (Spec): The loaded spec.
        root (str): Folder the rows' results folders are relative to.
        efficiency (Efficiency | None): Counter for the params / gmacs columns (None: those cells are left empty).
        macs_size (int | None): Count MACs at this size instead of each column's (the smoke tables).

    Returns:
        (list[dict], dict): the cells in row-major order, and {row label: 'ok' | 'not run'}.
    """
    cells, statuses = [], {}
    for row in spec.rows:
        folder = _results_folder(row, root)
        results = read_results(folder)
        statuses[row.label] = 'ok' if results is not None else NOT_RUN
        base = dict(table=spec.name, row=row.label, train=row.train_name, test=row.test_name, results=row.results)
        for column in spec.columns:
            note = row.notes.get(column.key) or column.note or ''
            if column.kind == 'text':
                text = str(row.text.get(column.key, ''))
                cells.append(dict(base, column=column.key, label=column.label, kind='text', metric='', ours=text,
                                  paper=text, diff=None, status='ok', note=''))
                continue
            if not applicable(column, row):
                for metric in (spec.metrics if column.kind in ('set', 'average') else [column.kind]):
                    cells.append(dict(base, column=column.key, label=column.label, kind=column.kind, metric=metric,
                                      ours=None, paper=None, diff=None, status=NOT_TESTED, note=''))
                continue
            paper = row.paper.get(column.key)
            if column.kind in ('set', 'average'):
                ours, status = our_cell(column, spec.metrics, results)
                for j, metric in enumerate(spec.metrics):
                    mine = ours[j] if ours else None
                    theirs = paper[j] if paper else None
                    diff = mine - theirs if mine is not None and theirs is not None else None
                    cells.append(dict(base, column=column.key, label=column.label, kind=column.kind, metric=metric,
                                      ours=mine, paper=theirs, diff=diff,
                                      status=status if mine is not None or status != 'ok' else MISSING,
                                      note=note if theirs is None else ''))
                continue
            # sizes: counted from the row's test option file (what its results were made with)
            mine = None
            if efficiency is not None:
                network = row.test_opt['network_g']
                if column.kind == 'params':
                    mine = efficiency.params(network) / 1e6
                else:
                    mine = efficiency.gmacs(network, macs_size or column.size)
            diff = mine - paper if mine is not None and paper is not None else None
            cells.append(dict(base, column=column.key, label=column.label, kind=column.kind, metric=column.kind,
                              ours=mine, paper=paper, diff=diff, status='ok' if mine is not None else 'not counted',
                              note=note if paper is None else ''))
    return cells, statuses


def _results_folder(row, root):
    return row.results if osp.isabs(row.results) else osp.join(root, row.results)


class TableWarning(UserWarning):
    """The runs a table joins were made differently (``utils/run_record.py``)."""


def record_notes(spec, root='.'):
    """One line per field (library version, protocol of a metric of the spec) in which the rows' runs differ, and
    one naming the runs without ``metrics.json``; rows sharing a results folder count once, rows not run not at
    all. A ``metrics.json`` that is not a record is a :class:`UsageError` naming it."""
    runs = OrderedDict()
    for row in spec.rows:
        folder = _results_folder(row, root)
        if osp.isfile(osp.join(folder, 'metrics.csv')):
            runs.setdefault(folder, (row.label, row.results))
    try:
        records = [(label, results, read_record(folder)) for folder, (label, results) in runs.items()]
    except ValueError as err:
        raise UsageError(str(err)) from None
    return differences(records, spec.metrics)


def _row_cells(cells, row_label):
    out = {}
    for cell in cells:
        if cell['row'] == row_label:
            out.setdefault(cell['column'], []).append(cell)
    return out


def _render_cell(group, which):
    """One markdown cell from a column's cells (one per metric) for 'ours', 'paper' or 'diff'."""
    first = group[0]
    if first['kind'] == 'text':
        return first['ours'] if which != 'diff' else ''
    if first['status'] == NOT_TESTED:
        return NOT_TESTED if which != 'diff' else ''
    if first['kind'] in ('params', 'gmacs'):
        cell = group[0]
        if which == 'ours':
            return _fmt_size(cell['kind'], cell['ours']) or ('not counted' if cell['kind'] == 'gmacs' else '')
        if which == 'paper':
            return _fmt_size(cell['kind'], cell['paper'], paper=True) or f'{NOT_GIVEN}*'
        if cell['diff'] is None:
            return ''
        return f'{cell["diff"]:+.2f}M' if cell['kind'] == 'params' else f'{cell["diff"]:+.3g}'
    if which == 'ours':
        if first['status'] in (NOT_RUN, MISSING):
            return first['status']
        return '/'.join(_fmt(c['metric'], c['ours']) or '?' for c in group)
    if which == 'paper':
        if all(c['paper'] is None for c in group):
            return f'{NOT_GIVEN}*'
        return '/'.join(_fmt(c['metric'], c['paper'], paper=True) or f'{NOT_GIVEN}*' for c in group)
    if all(c['diff'] is None for c in group):
        return ''
    return '/'.join(_fmt_diff(c['metric'], c['diff']) or '·' for c in group)


def column_label(column, macs_size=None):
    """A column's header: MACs columns name the input size they were counted at."""
    return f'{column.label} {macs_size or column.size}²' if column.kind == 'gmacs' else column.label


def render_markdown(spec, cells, statuses, root='.', smoke=False, macs_size=None, records=()):
    metric_names = ' / '.join(m.upper() if len(m) <= 4 else m for m in spec.metrics)
    lines = [f'# {spec.title}', '']
    if smoke:
        lines += ['**SMOKE RUN at demo scale (tiny networks, a few CPU iterations, synthetic demo data): the numbers '
                  'mean nothing; every row that shows numbers built, trained and tested.**', '']
    lines += [f'Paper: {spec.paper}. Printed numbers from: {spec.source}.',
              f'Ours: `<results>/metrics.csv` of each row under `{root}`; cells are {metric_names}; '
              'Δ = ours - paper. Params: trainable parameters of the row\'s test option file'
              + (f'; GMACs at {macs_size}² (the smoke networks)' if macs_size else '') + '.', '']
    header = ['Method', ''] + [column_label(c, macs_size) for c in spec.columns]
    lines.append('| ' + ' | '.join(header) + ' |')
    lines.append('|---|---|' + '---:|' * len(spec.columns))
    footnotes, column_notes = [], {}
    for row in spec.rows:
        groups = _row_cells(cells, row.label)
        status = statuses[row.label]
        label = row.label + (' (not run)' if status == NOT_RUN else '')
        for which, tag in (('ours', 'ours'), ('paper', 'paper'), ('diff', 'Δ')):
            values = [_render_cell(groups[c.key], which) for c in spec.columns]
            lines.append('| ' + ' | '.join([label if which == 'ours' else '', tag] + values) + ' |')
        for column in spec.columns:
            group = groups[column.key]
            note = next((c['note'] for c in group if c['note']), '')
            if note and note == column.note:  # the column's note: said once, for every row it applies to
                column_notes.setdefault(column_label(column, macs_size), [note, []])[1].append(row.label)
            elif note:
                footnotes.append(f'- {row.label}, {column_label(column, macs_size)}: {note}')
    lines += ['', f'{NOT_GIVEN}* = not given by the paper (see the notes); {NOT_TESTED} = not scored by the row\'s '
              'test file; not run = no results yet (`python -m allinone_basicsr.test -opt <test>`); missing = the '
              'results lack the set.', '']
    footnotes = [f'- {label} ({"every row" if len(rows) == len(spec.rows) else ", ".join(rows)}): {note}'
                 for label, (note, rows) in column_notes.items()] + footnotes + [f'- {n}' for n in records]
    if footnotes or spec.notes:
        lines += ['Notes:'] + footnotes + [f'- {n}' for n in spec.notes] + ['']
    lines += ['Rows:']
    for row in spec.rows:
        lines.append(f'- {row.label}: train `{row.train_name}`, test `{row.test_name}`, results `{row.results}` '
                     f'({statuses[row.label]})')
    return '\n'.join(lines) + '\n'


CSV_FIELDS = ('table', 'row', 'column', 'label', 'kind', 'metric', 'ours', 'paper', 'diff', 'status', 'note', 'train',
              'test', 'results')


def write_table(spec, out, root='.', efficiency=None, smoke=False, macs_size=None):
    """Write ``<out>/<spec name>.md`` and ``.csv``; returns (markdown text, cells, statuses)."""
    cells, statuses = build_table(spec, root, efficiency, macs_size)
    records = record_notes(spec, root)
    for note in records:
        warnings.warn(f'{spec.name}: {note}', TableWarning, stacklevel=2)
    text = render_markdown(spec, cells, statuses, root=root, smoke=smoke, macs_size=macs_size, records=records)
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, f'{spec.name}.md'), 'w') as f:
        f.write(text)
    with open(osp.join(out, f'{spec.name}.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for cell in cells:
            writer.writerow({k: ('' if cell.get(k) is None else cell.get(k)) for k in CSV_FIELDS})
    return text, cells, statuses


# ------------------------------------------------------------------------------------------------------------ CLI
def row_commands(specs):
    """The shell commands that make every distinct row's results: train (torchrun when the file asks for several
    GPUs), then test the model it trained."""
    lines, seen = [], set()
    for spec in specs:
        for row in spec.rows:
            if (row.train, row.test) in seen:
                continue
            seen.add((row.train, row.test))
            gpus = row.train_opt.get('num_gpu', 1)
            train = f'-m allinone_basicsr.train -opt {row.train_name}'
            if isinstance(gpus, int) and gpus > 1:
                train = f'torchrun --nproc_per_node={gpus} {train} --launcher pytorch'
            else:
                train = f'python {train}'
            test = f'python -m allinone_basicsr.test -opt {row.test_name}'
            trained = f"experiments/{row.train_opt['name']}/models/net_g_latest.pth"
            if (row.test_opt.get('path') or {}).get('pretrain_network_g') != trained:
                test += f' --force_yml path:pretrain_network_g={trained}'  # e.g. a test file of a released model
            lines += [f'# {spec.name}: {row.label}', train, test]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='allinone-table',
        description="Write a paper's table (tables/<paper>_<table>.yml) with our results beside the paper's numbers "
        '(markdown + CSV); --smoke trains and tests every row at demo scale on the CPU first.')
    parser.add_argument('specs', nargs='+', metavar='SPEC', help='table spec files, e.g. tables/daair_table1.yml')
    parser.add_argument('--root', default=None,
                        help='folder the rows\' results/ folders are in (default: the working directory)')
    parser.add_argument('--out', default=None, help='output folder (default: <root>/results/tables; with --smoke '
                        '<smoke-dir>/tables)')
    parser.add_argument('--no-macs', action='store_true', help='leave the GMACs columns empty (no tracing)')
    parser.add_argument('--commands', action='store_true',
                        help="print the train and test commands of every row (to run on a GPU machine) and exit")
    parser.add_argument('--smoke', action='store_true',
                        help='train and test every row at demo scale on the CPU, then write the tables from those runs')
    parser.add_argument('--smoke-dir', default=None,
                        help='folder of the smoke data, runs and tables (default: a new temporary folder, kept)')
    parser.add_argument('--smoke-iters', type=int, default=3, help='training iterations per row (default: 3)')
    args = parser.parse_args(argv)

    def say(*parts, **kwargs):
        print(*parts, **kwargs, flush=True)

    try:
        specs = [load_spec(path) for path in args.specs]
    except TableSpecError as err:
        raise UsageError(str(err)) from None
    if args.commands:
        print('\n'.join(row_commands(specs)))
        return 0
    failures = {}
    if args.smoke:
        if args.smoke_iters < 1:
            raise UsageError('--smoke-iters: expected >= 1')
        root = args.smoke_dir or tempfile.mkdtemp(prefix='allinone_table_smoke_')
        root = osp.abspath(root)
        os.makedirs(root, exist_ok=True)
        out = args.out or osp.join(root, 'tables')
        start = time.time()
        try:
            outcome = run_smoke(specs, root, args.smoke_iters, say=say)
        except TableSpecError as err:
            raise UsageError(str(err)) from None
        failures = {k: v for k, v in outcome.items() if v}
        say(f'smoke: {len(outcome) - len(failures)} of {len(outcome)} rows trained and tested in '
            f'{time.time() - start:.1f} s (folder {root})')
        macs_size = SMOKE_MACS_SIZE
        smoke_opts = {}  # the tables count the sizes of the networks that ran
        for spec in specs:
            for row in spec.rows:
                written = osp.join(root, 'options', osp.basename(row.test))
                if osp.isfile(written):
                    smoke_opts[row.test] = _load_yaml(written, 'smoke test options')
                tiny = dict(row.test_opt, network_g=smoke_network(row.test_opt['network_g']))
                row.test_opt = smoke_opts.get(row.test, tiny)
    else:
        root = osp.abspath(args.root or os.getcwd())
        out = args.out or osp.join(root, 'results', 'tables')
        macs_size = None
    efficiency = Efficiency(macs=not args.no_macs)
    for spec in specs:
        text, _, statuses = write_table(spec, out, root=root, efficiency=efficiency, smoke=args.smoke,
                                        macs_size=macs_size)
        done = sum(s == 'ok' for s in statuses.values())
        say(f'\n{text}\nwrote {osp.join(out, spec.name)}.md and .csv ({done} of {len(statuses)} rows with results)')
    if failures:
        for (train, test), message in failures.items():
            print(f'error: smoke row {train} + {test}: {message.splitlines()[0]} (log: {osp.join(root, "smoke.log")})',
                  file=sys.stderr)
        return 1
    return 0


def cli(argv=None):
    run(main, 'table', argv)


if __name__ == '__main__':
    cli()
