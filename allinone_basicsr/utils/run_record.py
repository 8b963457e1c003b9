"""What made a run's results: the versions of the libraries that computed them and the metric protocol (what each
metric computes), written beside ``metrics.csv`` as ``metrics.json`` (a sidecar: readers of the CSV never open it)
and checked by ``compare`` and ``table`` when they join runs.

A record is ``{'versions': {library: version}, 'protocol': {metric name: {option: value}}}``; the protocol of a
round's metrics is built by ``utils.metric_table.metric_protocol``.
"""
import functools
import importlib
import json
import subprocess
from collections import OrderedDict
from importlib import metadata
from os import path as osp

from allinone_basicsr.utils.atomic import atomic_write

RECORD_FILE = 'metrics.json'
LIBRARIES = (('torch', 'torch'), ('scikit-image', 'skimage'), ('basicsr', 'basicsr'))  # (distribution, module)
PLUGIN = 'allinone_basicsr'
GIT_TIMEOUT_S = 10


def _library_version(distribution, module):
    """The module's own ``__version__`` (torch's keeps its build tag, e.g. ``+cu121``), else the installed
    distribution's, else 'not installed'."""
    try:
        version = getattr(importlib.import_module(module), '__version__', None)
    except ImportError:
        version = None
    if version is None:
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            version = 'not installed'
    return str(version)


def plugin_version():
    """``git <short hash>`` (``+dirty`` when tracked files have changes) when the plugin is imported from a git
    checkout of its own (the checkout's top level holds the package), else the package's ``__version__``."""
    import allinone_basicsr
    root = osp.dirname(osp.dirname(osp.abspath(allinone_basicsr.__file__)))

    def git(*args):
        return subprocess.run(['git', '-C', root, *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              check=True).stdout.strip()

    try:
        if osp.realpath(git('rev-parse', '--show-toplevel')) == osp.realpath(root):
            dirty = git('status', '--porcelain', '--untracked-files=no')
            return f'git {git("rev-parse", "--short", "HEAD")}' + ('+dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        pass
    return allinone_basicsr.__version__


@functools.lru_cache(maxsize=None)
def _versions():
    versions = OrderedDict((dist, _library_version(dist, module)) for dist, module in LIBRARIES)
    versions[PLUGIN] = plugin_version()
    return versions


def versions():
    """{library: version} of torch, scikit-image, basicsr and the plugin (:func:`plugin_version`), read once per
    process."""
    return OrderedDict(_versions())


def write_record(folder, record):
    """Write ``record`` as ``folder/metrics.json`` (atomically)."""
    text = json.dumps(record, indent=2, default=str) + '\n'
    atomic_write(osp.join(folder, RECORD_FILE), lambda f: f.write(text.encode()))


def read_record(folder):
    """The record of ``folder/metrics.json``, or None when the run has none (written before runs recorded it);
    ValueError naming the file when it is not a record."""
    path = osp.join(folder, RECORD_FILE)
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
    except ValueError as err:
        raise ValueError(f'{path}: not a JSON record of versions and metric protocol ({err})') from None
    if not isinstance(record, dict) or not isinstance(record.get('versions', {}), dict) \
            or not isinstance(record.get('protocol', {}), dict):
        raise ValueError(f'{path}: expected {{"versions": {{...}}, "protocol": {{...}}}}')
    return record


def describe_metric(entry):
    """A metric's protocol entry as one line: ``function(option=value, ...)`` then the rest of its options."""
    if not isinstance(entry, dict):
        return str(entry)
    options = ', '.join(f'{k}={v!r}' for k, v in entry.items() if k != 'function')
    return f'{entry.get("function", "?")}({options})'


def format_record(record):
    """One line of ``metrics.md``: the versions and each metric's protocol."""
    made = ', '.join(f'{k} {v}' for k, v in record['versions'].items())
    protocol = '; '.join(f'{name} = {describe_metric(e)}' for name, e in record['protocol'].items())
    return f'Made with {made}. Metrics: {protocol or "none"} ({RECORD_FILE}).'


def differences(runs, metrics=None):
    """One line per field in which the ``runs`` [(name, folder, record or None)] differ: a library's version, or the
    protocol of a metric of ``metrics`` (default: every metric a record has), each value followed by the runs that
    have it; first, one line naming the runs without a record."""
    notes = []
    missing = [f'{name} ({folder})' for name, folder, record in runs if record is None]
    if missing:
        notes.append(f'{", ".join(missing)}: no {RECORD_FILE} (results written before runs recorded what made them): '
                     'the library versions and metric protocol of their numbers are unknown')
    known = [(name, record) for name, _, record in runs if record is not None]
    if len(known) < 2:
        return notes
    fields = OrderedDict()
    for _, record in known:
        for library in record.get('versions', {}):
            fields[('versions', library)] = library
        for metric in record.get('protocol', {}):
            if metrics is None or metric in metrics:
                fields[('protocol', metric)] = f'the protocol of metric {metric!r}'
    for (part, key), label in fields.items():
        values = OrderedDict()
        for name, record in known:
            value = record.get(part, {}).get(key)
            shown = 'not recorded' if value is None else describe_metric(value) if part == 'protocol' else str(value)
            values.setdefault(shown, []).append(name)
        if len(values) > 1:
            shown = '; '.join(f'{value} in {", ".join(names)}' for value, names in values.items())
            notes.append(f'the runs differ in {label}: {shown}')
    return notes
