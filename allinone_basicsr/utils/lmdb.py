"""LMDBs checked when they are opened, before any of their pages is read.

LMDB maps ``data.mdb`` into memory and reads its pages through the map: a page beyond the end of a truncated file
(an interrupted copy or download) kills the process with SIGBUS, with no Python error and no file name (with
DataLoader workers PyTorch blames shared memory). The check opens the environment read-only, which reads only the
two meta pages (LMDB reads them with ``pread``, and they are checked to lie within the file), and compares the size
the newest meta page gives the data, ``(last_pgno + 1) * psize``, with the size of ``data.mdb``.

Used where the datasets list an LMDB source (``data.sources.list_source``, the errors name the option
key) and where BasicSR's LMDB backend opens its environments (:func:`shared_lmdb`, which ``_compat`` makes the
backend use), so stock BasicSR datasets on a truncated LMDB get the error as well.

A complete LMDB can still be damaged (a page overwritten by a disk or copy error). Our datasets walk every record's
key and length when they list an LMDB (:func:`check_records`, cheap: the values are not read), and a record that
fails to decode later names the LMDB, the key and how to re-pack it (:func:`damaged_record`). Decoding every record
at start would find every damaged value but costs a full read and decode of the set (minutes for the large ones).
"""
from contextlib import contextmanager
from os import path as osp

import lmdb


class BrokenLmdbError(ValueError):
    """An LMDB that cannot be read safely: truncated, empty, or refused by lmdb when opened."""


def _name(path, where):
    return f'{where}: LMDB {path}' if where else f'LMDB {path}'


def check_env(env, path, where=None):
    """Raises ``BrokenLmdbError`` if ``data.mdb`` of the open environment ``env`` (folder ``path``) is shorter than
    its pages. Reads the meta pages only (never a page beyond the end of the file)."""
    data_file = osp.join(str(path), 'data.mdb')
    need = (env.info()['last_pgno'] + 1) * env.stat()['psize']
    size = osp.getsize(data_file)
    if size < need:
        raise BrokenLmdbError(f'{_name(path, where)} is truncated: data.mdb has {size} bytes, its pages need {need} '
                              '(an interrupted copy or download? copy it again or rebuild it)')


def open_lmdb(path, where=None, **kwargs):
    """``lmdb.open(path, **kwargs)`` of an existing LMDB folder, checked by ``check_env``.

    Args:
        path (str): LMDB folder (holding ``data.mdb``).
        where (str | None): Option key for the messages, e.g. ``"datasets.train (name 'x'): tasks[3].dataroot_lq"``.
        kwargs: Passed to ``lmdb.open`` (e.g. ``readonly=True, lock=False``).

    Raises:
        FileNotFoundError: no ``data.mdb`` in ``path``.
        BrokenLmdbError: ``data.mdb`` is empty or truncated, or lmdb refuses to open it; the message names the LMDB.
    """
    path = str(path)
    data_file = osp.join(path, 'data.mdb')
    if not osp.isfile(data_file):
        raise FileNotFoundError(f'{_name(path, where)}: no data.mdb in the folder (not an LMDB, or an incomplete copy)')
    if osp.getsize(data_file) == 0:
        raise BrokenLmdbError(f'{_name(path, where)}: data.mdb is empty (an interrupted copy?)')
    try:
        env = lmdb.open(path, **kwargs)
    except lmdb.Error as err:
        raise BrokenLmdbError(f'{_name(path, where)} cannot be opened: {type(err).__name__}: {err}') from None
    try:
        check_env(env, path, where)
    except BaseException:
        env.close()
        raise
    return env


_SHARED = {}  # (real path, readonly, lock, readahead) -> the environment this process shares for it


def shared_lmdb(path, readonly=True, lock=False, readahead=False, **kwargs):
    """The process's one environment of the LMDB at ``path`` with these flags, opened (and checked) on first use:
    lmdb >= 1 refuses to open one environment twice in a process, and BasicSR's LMDB backend opens one per dataset
    (``_compat`` makes it take them from here)."""
    key = (osp.realpath(path), readonly, lock, readahead)
    if key not in _SHARED:
        # checked before any page is read: a truncated data.mdb is an error naming it, not a SIGBUS
        _SHARED[key] = open_lmdb(path, readonly=readonly, lock=lock, readahead=readahead, **kwargs)
    return _SHARED[key]


def _shared_env(path):
    """The environment this process already shares for ``path`` (any flags), else None."""
    real = osp.realpath(path)
    return next((env for key, env in _SHARED.items() if key[0] == real), None)


@contextmanager
def checked_lmdb(path, where=None):
    """A checked read-only environment of ``path`` for a short look (``with checked_lmdb(p, where) as env``): the
    one the process already shares, else a temporary one closed on exit (so forked workers open their own)."""
    path = str(path)
    shared = _shared_env(path)
    if shared is not None:
        if not osp.isfile(osp.join(path, 'data.mdb')):
            raise FileNotFoundError(f'{_name(path, where)}: no data.mdb in the folder')
        check_env(shared, path, where)
        yield shared
        return
    env = open_lmdb(path, where, readonly=True, lock=False, readahead=False)
    try:
        yield env
    finally:
        env.close()


REPACK = ('copy it again from its source, or re-pack it from its image folder (datasets_prep/prepare_*.py, or '
          "BasicSR's make_lmdb_from_imgs)")


def check_records(env, path, keys, where=None):
    """The cheap check of an LMDB's records when a dataset lists it: every key of ``keys`` (its meta_info) is in the
    LMDB with a non-empty value. Walks the B-tree's leaf pages once (a cursor over every key and its value's length,
    never the values themselves: about 50 bytes read per record, a millisecond per thousand), so a damaged tree
    (``lmdb.CorruptedError``) or a meta_info that lists records the LMDB lacks is an error here, not mid-run. The
    image bytes are not read: a damaged value is found when it is first decoded (:func:`damaged_record`)."""
    lengths = {}
    try:
        with env.begin(buffers=True) as txn:
            for key, value in txn.cursor():
                lengths[bytes(key).decode('utf-8', 'replace')] = len(value)
    except lmdb.Error as err:
        raise BrokenLmdbError(f'{_name(path, where)} is damaged ({type(err).__name__}: {err}): {REPACK}') from None
    missing = [k for k in keys if k not in lengths]
    if missing:
        raise BrokenLmdbError(f'{_name(path, where)}: {len(missing)} key(s) of its meta_info are not in the LMDB '
                              f'({", ".join(map(repr, missing[:5]))}{" ..." if len(missing) > 5 else ""}; it holds '
                              f'{len(lengths)} records): a meta_info.txt of another LMDB, or an incomplete one; '
                              + REPACK)
    empty = [k for k in keys if lengths[k] == 0]
    if empty:
        raise BrokenLmdbError(f'{_name(path, where)}: empty record(s) {", ".join(map(repr, empty[:5]))}: {REPACK}')


def damaged_record(path, key, err):
    """The error for a record of the LMDB at ``path`` that cannot be read or decoded (``err``) during a run."""
    return BrokenLmdbError(f'LMDB {path}: record {key!r} is damaged ({err}); the LMDB is corrupt (a disk or copy '
                           f'error): {REPACK}')


def check_lmdb(path, where=None):
    """Raises (naming ``where`` and the LMDB) if the LMDB at ``path`` is missing its data, empty or truncated."""
    with checked_lmdb(path, where):
        pass


__all__ = ['BrokenLmdbError', 'REPACK', 'check_env', 'check_lmdb', 'check_records', 'checked_lmdb', 'damaged_record',
           'open_lmdb', 'shared_lmdb']
