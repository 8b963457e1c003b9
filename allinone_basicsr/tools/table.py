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
Averages are computed from our per-set values (never read from a run's own Average row). Parameters (trainable)
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
import contextlib
import csv
import json
import logging
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from os import path as osp

import yaml

from allinone_basicsr.utils.smoke import SMOKE_NETWORKS  # noqa: F401  (the sizes --smoke uses)
from allinone_basicsr.utils.smoke import shrink_test_options, shrink_train_options
from allinone_basicsr.utils.smoke import smoke_network as _smoke_network

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COLUMN_KINDS = ('set', 'average', 'params', 'gmacs', 'text')
# provenance: where the printed numbers stand in the papers' text (checked by tests/test_provenance.py, not used here)
SPEC_KEYS = {'title', 'paper', 'source', 'provenance', 'metrics', 'columns', 'rows', 'notes'}
COLUMN_KEYS = {'key', 'label', 'kind', 'test_set', 'average', 'size', 'note'}
ROW_KEYS = {'label', 'train', 'test', 'results', 'paper', 'notes', 'text'}
NOT_RUN, MISSING, NOT_TESTED, NOT_GIVEN = 'not run', 'missing', '—', 'n.g.'

SMOKE_MACS_SIZE = 64
SMOKE_TRAIN_SHAPE, SMOKE_TEST_SHAPE = (48, 48), (48, 64)  # (h, w): >= the 32² patches; test a multiple of 16
SMOKE_TRAIN_IMAGES, SMOKE_TEST_IMAGES = 6, 1


class TableSpecError(ValueError):
    """A table spec that cannot be read as it says: the message names the spec, the row or column, and the key."""


@dataclass
class Column:
    key: str
    label: str
    kind: str
    test_set: str = None
    average: list = None
    size: int = None
    note: str = None

    def sets(self):
        """The test sets this column needs."""
        return [self.test_set] if self.kind == 'set' else list(self.average or []) if self.kind == 'average' else []


@dataclass
class Row:
    label: str
    train: str
    test: str
    results: str
    paper: dict
    notes: dict
    text: dict
    test_opt: dict = field(repr=False, default=None)
    train_opt: dict = field(repr=False, default=None)
    train_name: str = None  # the paths as the spec writes them (messages, the table's row list)
    test_name: str = None

    @property
    def test_sets(self):
        return [d.get('name') for k, d in (self.test_opt.get('datasets') or {}).items()
                if k.split('_')[0] in ('val', 'test')]


@dataclass
class Spec:
    path: str
    title: str
    paper: str
    source: str
    metrics: list
    columns: list
    rows: list
    notes: list

    @property
    def name(self):
        return osp.splitext(osp.basename(self.path))[0]


# --------------------------------------------------------------------------------------------------- spec files
def _load_yaml(path, what):
    if not osp.isfile(path):
        raise TableSpecError(f'{what}: no such file: {path}')
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise TableSpecError(f'{what}: {path} is not valid YAML: {err}') from None


def _number(value, where):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TableSpecError(f'{where}: expected a number or null, got {value!r}')
    return float(value)


def _column(spec_path, i, entry):
    where = f'{spec_path}: columns[{i}]'
    if not isinstance(entry, dict) or 'key' not in entry:
        raise TableSpecError(f'{where}: expected a mapping with a key, got {entry!r}')
    unknown = set(entry) - COLUMN_KEYS
    if unknown:
        raise TableSpecError(f"{where} ('{entry['key']}'): unknown field(s) {sorted(unknown)}; "
                             f'known: {sorted(COLUMN_KEYS)}')
    kind = entry.get('kind') or ('set' if 'test_set' in entry else 'average' if 'average' in entry else None)
    if kind not in COLUMN_KINDS:
        raise TableSpecError(f"{where} ('{entry['key']}'): kind {kind!r} is not one of {list(COLUMN_KINDS)} (a "
                             'column with test_set is a set, one with average an average)')
    if kind == 'set' and not isinstance(entry.get('test_set'), str):
        raise TableSpecError(f"{where} ('{entry['key']}'): a set column needs test_set (a test set name)")
    if kind == 'average' and not (isinstance(entry.get('average'), list) and entry['average']):
        raise TableSpecError(f"{where} ('{entry['key']}'): an average column needs average: [test set names]")
    if kind == 'gmacs' and not isinstance(entry.get('size'), int):
        raise TableSpecError(f"{where} ('{entry['key']}'): a gmacs column needs size (the square input side)")
    return Column(key=str(entry['key']), label=str(entry.get('label', entry['key'])), kind=kind,
                  test_set=entry.get('test_set'), average=entry.get('average'), size=entry.get('size'),
                  note=entry.get('note'))


def _option_file(base, spec_path, row_label, key, value):
    if not isinstance(value, str) or not value:
        raise TableSpecError(f"{spec_path}: row '{row_label}': {key}: expected an option file path, got {value!r}")
    path = value if osp.isabs(value) else osp.join(base, value)
    if not osp.isfile(path):
        raise TableSpecError(f"{spec_path}: row '{row_label}': {key} file {value} does not exist ({path})")
    with open(path) as f:
        try:
            return path, yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise TableSpecError(f"{spec_path}: row '{row_label}': {key} file {value} is not valid YAML: {err}") \
                from None


def applicable(column, row):
    """Whether ``row`` has a value for ``column``: its test file scores the column's sets (always for sizes and
    text)."""
    return all(s in row.test_sets for s in column.sets())


def _paper_cell(spec_path, row_label, column, value, metrics):
    where = f"{spec_path}: row '{row_label}', paper.{column.key}"
    if column.kind in ('set', 'average'):
        if value is None:
            return [None] * len(metrics)
        if not isinstance(value, list) or len(value) != len(metrics):
            raise TableSpecError(f'{where}: expected a list of {len(metrics)} numbers or nulls (one per metric: '
                                 f'{metrics}), got {value!r}')
        return [_number(v, where) for v in value]
    if column.kind == 'text':
        raise TableSpecError(f"{where}: column '{column.key}' is a text column: give its cells in the row's text")
    return _number(value, where)


def load_spec(path):
    """Read and check a table spec; every option file must exist and every paper cell be a number or a noted null.

    Raises:
        TableSpecError: naming the spec file, the row or column and the field.
    """
    data = _load_yaml(path, 'table spec')
    if not isinstance(data, dict):
        raise TableSpecError(f'{path}: expected a mapping with {sorted(SPEC_KEYS)}')
    unknown = set(data) - SPEC_KEYS
    if unknown:
        raise TableSpecError(f'{path}: unknown field(s) {sorted(unknown)}; known: {sorted(SPEC_KEYS)}')
    for key in ('title', 'paper', 'source', 'metrics', 'columns', 'rows'):
        if not data.get(key):
            raise TableSpecError(f'{path}: {key}: missing')
    metrics = data['metrics']
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise TableSpecError(f'{path}: metrics: expected a list of metric names (metrics.csv columns), got '
                             f'{metrics!r}')
    columns = [_column(path, i, c) for i, c in enumerate(data['columns'])]
    keys = [c.key for c in columns]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise TableSpecError(f'{path}: columns: duplicate key(s) {duplicates}')
    base = osp.dirname(osp.dirname(osp.abspath(path)))  # the folder holding tables/: the repository
    rows, labels = [], set()
    for i, entry in enumerate(data['rows']):
        if not isinstance(entry, dict) or not entry.get('label'):
            raise TableSpecError(f'{path}: rows[{i}]: expected a mapping with a label, got {entry!r}')
        label = str(entry['label'])
        if label in labels:
            raise TableSpecError(f"{path}: rows[{i}]: duplicate label '{label}'")
        labels.add(label)
        unknown = set(entry) - ROW_KEYS
        if unknown:
            raise TableSpecError(f"{path}: row '{label}': unknown field(s) {sorted(unknown)}; known: "
                                 f'{sorted(ROW_KEYS)}')
        train, train_opt = _option_file(base, path, label, 'train', entry.get('train'))
        test, test_opt = _option_file(base, path, label, 'test', entry.get('test'))
        if not isinstance(test_opt, dict) or not test_opt.get('name') or not test_opt.get('datasets'):
            raise TableSpecError(f"{path}: row '{label}': test file {entry['test']} has no name or no datasets")
        results = entry.get('results') or osp.join('results', test_opt['name'])
        paper_in = entry.get('paper') or {}
        bad = sorted(set(paper_in) - set(keys))
        if bad:
            raise TableSpecError(f"{path}: row '{label}': paper has cell(s) {bad} that are no column; columns: {keys}")
        notes = entry.get('notes') or {}
        bad = sorted(set(notes) - set(keys))
        if bad:
            raise TableSpecError(f"{path}: row '{label}': notes for {bad}, which are no column; columns: {keys}")
        row = Row(label=label, train=train, test=test, results=results, paper={}, notes=dict(notes),
                  text=dict(entry.get('text') or {}), test_opt=test_opt, train_opt=train_opt,
                  train_name=entry['train'], test_name=entry['test'])
        for column in columns:
            if column.kind == 'text':
                if column.key in paper_in:
                    _paper_cell(path, label, column, paper_in[column.key], metrics)
                continue
            value = _paper_cell(path, label, column, paper_in.get(column.key), metrics)
            if not applicable(column, row):
                if value is not None and value != [None] * len(metrics):
                    raise TableSpecError(
                        f"{path}: row '{label}': the paper gives {column.key} = {paper_in[column.key]!r}, but the "
                        f'test file {entry["test"]} does not score {column.sets()} (its sets: {row.test_sets})')
                continue
            missing = value is None or (isinstance(value, list) and None in value)
            if missing and not (row.notes.get(column.key) or column.note):
                raise TableSpecError(
                    f"{path}: row '{label}', paper.{column.key}: the paper's value is missing (null); give it, or "
                    f"say why the paper does not give it (the row's notes.{column.key} or the column's note)")
            row.paper[column.key] = value
        rows.append(row)
    notes = data.get('notes') or []
    if not isinstance(notes, list):
        raise TableSpecError(f'{path}: notes: expected a list of strings')
    return Spec(path=path, title=str(data['title']), paper=str(data['paper']), source=str(data['source']),
                metrics=list(metrics), columns=columns, rows=rows, notes=[str(n) for n in notes])


# ------------------------------------------------------------------------------------------------------ results
def read_results(folder):
    """{test_set: {column: float}} of ``folder/metrics.csv`` (the Average row left out), or None when absent."""
    path = osp.join(folder, 'metrics.csv')
    if not osp.isfile(path):
        return None
    values = {}
    with open(path, newline='') as f:
        for line in csv.DictReader(f):
            name = line.get('test_set')
            if not name or name == 'Average':
                continue
            row = {}
            for key, text in line.items():
                try:
                    row[key] = float(text)
                except (TypeError, ValueError):
                    continue
            values[name] = row
    return values


def _mean(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def our_cell(column, metrics, results):
    """(values per metric, status) of a set / average column from a run's results."""
    if results is None:
        return None, NOT_RUN
    sets = column.sets()
    if any(s not in results for s in sets):
        return None, MISSING
    out = []
    for metric in metrics:
        per_set = [results[s].get(metric) for s in sets]
        out.append(None if any(v is None for v in per_set) else _mean(per_set))
    return out, 'ok'


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
            import allinone_basicsr  # noqa: F401  (registers the archs)

            from basicsr.utils.registry import ARCH_REGISTRY
            opt = dict(network_g)
            for name in ('clip_pretrained', 'prompt_net_pretrained'):  # sizes do not depend on external weights
                if opt.get(name):
                    opt[name] = None
            self._last = (None, None)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                self._last = (key, ARCH_REGISTRY.get(opt.pop('type'))(**opt))
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
    if value is None:
        return ''
    if 'ssim' in metric.lower():
        return f'{value:.3f}' if paper and abs(round(value, 3) - value) < 1e-9 else f'{value:.4f}'
    return f'{value:.2f}'


def _fmt_diff(metric, value):
    if value is None:
        return ''
    return f'{value:+.4f}' if 'ssim' in metric.lower() else f'{value:+.2f}'


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
        folder = row.results if osp.isabs(row.results) else osp.join(root, row.results)
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


def render_markdown(spec, cells, statuses, root='.', smoke=False, macs_size=None):
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
                 for label, (note, rows) in column_notes.items()] + footnotes
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
    text = render_markdown(spec, cells, statuses, root=root, smoke=smoke, macs_size=macs_size)
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, f'{spec.name}.md'), 'w') as f:
        f.write(text)
    with open(osp.join(out, f'{spec.name}.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for cell in cells:
            writer.writerow({k: ('' if cell.get(k) is None else cell.get(k)) for k in CSV_FIELDS})
    return text, cells, statuses


# ---------------------------------------------------------------------------------------------------- smoke runs
def _demo_module():
    path = osp.join(REPO, 'datasets_prep', 'make_demo_data.py')
    if not osp.isfile(path):
        raise TableSpecError(f'--smoke needs a source checkout: {path} (the demo data builder) does not exist')
    import importlib.util
    spec = importlib.util.spec_from_file_location('allinone_table_demo_data', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    demo = _demo_module()
    images = demo.make_images(seed=0)
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


@contextlib.contextmanager
def _basicsr_log_to(log_file):
    """BasicSR's logger writes to ``log_file`` only (not the console) while active; restored afterwards."""
    from basicsr.utils import logger as basicsr_logger
    logger = logging.getLogger('basicsr')
    saved = (list(logger.handlers), logger.level, logger.propagate, 'basicsr' in basicsr_logger.initialized_logger)
    for handler in saved[0]:
        logger.removeHandler(handler)
    handler = logging.FileHandler(log_file, 'a')
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    basicsr_logger.initialized_logger['basicsr'] = True
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        for h in saved[0]:
            logger.addHandler(h)
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
        if not saved[3]:
            basicsr_logger.initialized_logger.pop('basicsr', None)


def _run_pipeline(pipeline, option_file, root):
    """``pipeline(root)`` (our train / test entry) as ``python -m ... -opt option_file`` run in ``root``; what it
    prints goes to BasicSR's log."""
    import io
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = ['allinone_basicsr', '-opt', option_file]
    os.chdir(root)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            return pipeline(root)
    finally:
        sys.argv = argv
        os.chdir(cwd)
        if printed.getvalue().strip():
            logging.getLogger('basicsr').info(f'printed: {printed.getvalue().strip()}')


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
    with _basicsr_log_to(osp.join(smoke_dir, 'smoke.log')), warnings.catch_warnings():
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
                    yaml.safe_dump(train_opt, f, sort_keys=False)
                _run_pipeline(train_pipeline, train_file, smoke_dir)
                t1 = time.time()
                stage = 'test'
                with open(test_file, 'w') as f:
                    yaml.safe_dump(smoke_test_options(row.test_opt, train_opt['name']), f, sort_keys=False)
                _run_pipeline(test_pipeline, test_file, smoke_dir)
                results = read_results(osp.join(smoke_dir, 'results', row.test_opt['name']))
                if results is None:
                    raise RuntimeError(f"the test wrote no results/{row.test_opt['name']}/metrics.csv")
                psnr = _mean([r.get('psnr') for r in results.values()])
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
        prog='python -m allinone_basicsr.tools.table',
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
        print(f'error: {err}', file=sys.stderr)
        return 1
    if args.commands:
        print('\n'.join(row_commands(specs)))
        return 0
    failures = {}
    if args.smoke:
        if args.smoke_iters < 1:
            print('error: --smoke-iters: expected >= 1', file=sys.stderr)
            return 1
        root = args.smoke_dir or tempfile.mkdtemp(prefix='allinone_table_smoke_')
        root = osp.abspath(root)
        os.makedirs(root, exist_ok=True)
        out = args.out or osp.join(root, 'tables')
        start = time.time()
        try:
            outcome = run_smoke(specs, root, args.smoke_iters, say=say)
        except TableSpecError as err:
            print(f'error: {err}', file=sys.stderr)
            return 1
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


if __name__ == '__main__':
    sys.exit(main())
