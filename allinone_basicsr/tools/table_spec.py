"""A paper's table as data (``tables/<paper>_<table>.yml``): the spec file read and checked (:func:`load_spec`), and
the results its rows' test runs wrote (:func:`read_results`). The table tool (``allinone-table``) renders them."""
from dataclasses import dataclass, field
from os import path as osp

from allinone_basicsr.tools.common import read_metrics_csv
from allinone_basicsr.utils.metric_table import finite_mean
from allinone_basicsr.utils.option_keys import check_keys
from allinone_basicsr.utils.options import OptionFileError, plain, read_yaml

COLUMN_KINDS = ('set', 'average', 'params', 'gmacs', 'text')
# provenance: where the printed numbers stand in the papers' text (checked by tests/test_provenance.py, not used here)
SPEC_KEYS = {'title', 'paper', 'source', 'provenance', 'metrics', 'columns', 'rows', 'notes'}
COLUMN_KEYS = {'key', 'label', 'kind', 'test_set', 'average', 'size', 'note'}
ROW_KEYS = {'label', 'train', 'test', 'results', 'paper', 'notes', 'text'}
NOT_RUN, MISSING, NOT_TESTED, NOT_GIVEN = 'not run', 'missing', '—', 'n.g.'


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
    try:
        return plain(read_yaml(path, what, mapping=True))
    except OptionFileError as err:
        raise TableSpecError(str(err)) from None


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
    try:
        opt = read_yaml(path, f'{key} file', mapping=True)
    except OptionFileError as err:
        raise TableSpecError(f"{spec_path}: row '{row_label}': {err}") from None
    try:
        check_keys(opt)  # as train / test check them
    except ValueError as err:
        raise TableSpecError(f"{spec_path}: row '{row_label}': {key} file {value}: {err}") from None
    return path, plain(opt)


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
    """{test_set: {column: float}} of ``folder/metrics.csv`` (the Average row and empty cells left out), or None when
    absent."""
    if not osp.isfile(osp.join(folder, 'metrics.csv')):
        return None
    return {name: {k: v for k, v in row.items() if isinstance(v, float)}
            for name, row in read_metrics_csv(folder).items()}


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
        out.append(None if any(v is None for v in per_set) else finite_mean(per_set))
    return out, 'ok'
