"""What the tools share: one exit-code policy, the one way to read an option file, a network from ``network_g``, and
a run's metrics.

Every tool (``allinone-restore``, ``-compare``, ``-convert``, ``-recipe``, ``-table``, ``-gpu-check``, ``-export``;
``python -m allinone_basicsr.tools.<tool>``) exits with

- 0: done;
- 1: some inputs failed (each one named; the others were done);
- 2: a usage error: an argument or input that cannot be used, found before anything was done, printed as one line
  ``<tool>: error: <message>`` (argparse's own errors exit with 2 too).

A tool's ``main(argv)`` returns 0 or 1 and raises :class:`UsageError` (tests and scripts call it); its ``cli()`` is
``run(main, '<tool>')``.
"""
import contextlib
import csv
import sys
import warnings
from os import path as osp

from allinone_basicsr.utils.extras import MissingExtraError
from allinone_basicsr.utils.options import OptionFileError, load_options
from allinone_basicsr.utils.smoke import without_pretrained

from basicsr.utils.registry import ARCH_REGISTRY

__all__ = ['InputNotFoundError', 'UsageError', 'build_network', 'one_line_warnings', 'read_metrics_csv', 'read_options',
           'run']


class UsageError(ValueError):
    """An argument or input the tool cannot use, found before anything was done: exit status 2."""


class InputNotFoundError(UsageError, FileNotFoundError):
    """A file or folder an argument names does not exist (a usage error)."""


@contextlib.contextmanager
def one_line_warnings(prog):
    """Warnings raised inside are printed as ``<prog>: warning: <message>``, one line each, on stderr (only while
    the block runs: the process's warning settings are restored after it)."""
    with warnings.catch_warnings():
        def show(message, category, filename, lineno, file=None, line=None):
            print(f'{prog}: warning: {message}', file=sys.stderr)

        warnings.showwarning = show
        yield


def run(main, prog, argv=None):
    """Runs ``main(argv)`` as the command ``prog`` and exits with the policy's status (see the module docstring)."""
    try:
        with one_line_warnings(prog):
            code = main(argv)
    except (UsageError, MissingExtraError) as err:  # a missing optional dependency: its extra named, status 2
        print(f'{prog}: error: {err}', file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(int(code or 0))


def read_options(path, is_train=False, check=True):
    """An option file read and checked (``utils.options.load_options``), its problems as a :class:`UsageError`."""
    try:
        return load_options(path, is_train=is_train, check=check)
    except (OptionFileError, TypeError, ValueError) as err:
        raise UsageError(f'-opt {path}: {err}' if str(path) not in str(err) else str(err)) from None


def build_network(network_g, pretrained=False):
    """The network ``network_g`` describes (its ``type`` from BasicSR's registry). External weight files (CLIP,
    ResNet) are replaced by random initialisation unless ``pretrained``: a network's size, keys and MACs do not
    depend on them. Unknown types and options raise ``ValueError`` / ``TypeError`` naming them."""
    options = dict(network_g if pretrained else without_pretrained(network_g))
    arch = options.pop('type', None)
    if arch not in ARCH_REGISTRY:
        raise ValueError(f'network_g.type {arch!r} is not a registered network; registered: '
                         f'{sorted(ARCH_REGISTRY.keys())}')
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='CLIP .* has random weights')
        return ARCH_REGISTRY.get(arch)(**options)


def _number(text, where):
    """A metrics.csv cell as a float: '' is missing (None); 'inf', '-inf', 'nan' are kept as such."""
    text = (text or '').strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f'{where}: {text!r} is not a number') from None


TEXT_COLUMNS = ('test_set', 'degradation', 'fingerprint')  # the other columns of a metrics.csv are numbers


def read_metrics_csv(folder, metrics=None):
    """``{test set: {column: value}}`` of ``folder/metrics.csv`` (written by a test or validation round), in file
    order, the ``Average`` row left out: numeric columns as floats (None where empty), ``degradation`` and
    ``fingerprint`` (the set's data, ``utils.metric_table.set_fingerprint``; '' in older files) kept as text.
    ``metrics``: columns that must exist. FileNotFoundError / ValueError name the file and what is wrong."""
    path = osp.join(folder, 'metrics.csv')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{folder}: no metrics.csv (run `python -m allinone_basicsr.test -opt ...` first)')
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    for column in ['test_set'] + list(metrics or []):
        if rows and column not in columns:
            raise ValueError(f'{path}: no column {column!r}; columns: {columns}')
    sets = {}
    for i, row in enumerate(rows, start=2):
        name = row['test_set']
        if name == 'Average':
            continue
        if name in sets:
            raise ValueError(f'{path}: test set {name!r} appears twice')
        sets[name] = {k: (v or '' if k in TEXT_COLUMNS else _number(v, f'{path} line {i}, column {k!r}'))
                      for k, v in row.items()}
    if not sets:
        raise ValueError(f'{path}: no test set rows')
    return sets
