"""One run per experiment: a lock file, and the leftovers of killed runs.

``experiments/.<name>.lock`` (beside the experiment folder, which BasicSR renames when a new run of the same name
starts) holds the owner's pid, host and process start time. A second run with the same name stops at once while
the first is alive; a lock whose process is gone (a killed run) is reported and taken over. The lock is released
when the run ends, also on an error.
"""
import os
import re
import socket
import time
import warnings
from os import path as osp


def _start_time(pid):
    """The process's start time in clock ticks since boot (Linux), or None: tells a reused pid from the owner."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid, start_time=None):
    """Whether process ``pid`` runs (a process of another user counts); with ``start_time``, whether it is still the
    process that started then (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start_time is None or _start_time(pid) in (None, start_time)


class ExperimentLock:
    """``with ExperimentLock(root, name):`` -- or ``acquire()`` / ``release()``."""

    def __init__(self, root_path, name):
        self.path = osp.join(root_path, 'experiments', f'.{name}.lock')
        self.name = name
        self.held = False

    def _owner(self):
        try:
            with open(self.path) as f:
                fields = dict(line.split('=', 1) for line in f.read().splitlines() if '=' in line)
            return int(fields['pid']), fields.get('host', '?'), fields.get('start'), fields.get('since', '?')
        except (OSError, KeyError, ValueError):
            return None

    def acquire(self):
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        pid, host = os.getpid(), socket.gethostname()
        content = f'pid={pid}\nhost={host}\nstart={_start_time(pid)}\nsince={time.strftime("%Y-%m-%d %H:%M:%S")}\n'
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # being written right now, or unreadable: another run is starting
                    raise RuntimeError(f'experiment {self.name!r} is locked by another run ({self.path}); '
                                       'give this run another name') from None
                owner_pid, owner_host, owner_start, since = owner
                start = None if owner_start in (None, 'None') else int(owner_start)
                if owner_host != host:
                    raise RuntimeError(
                        f'experiment {self.name!r} is in use by pid {owner_pid} on {owner_host} since {since} '
                        f'({self.path}). Give this run another name; if that run is gone, delete the lock file.')
                if alive(owner_pid, start):
                    raise RuntimeError(
                        f'experiment {self.name!r} is in use by a running process (pid {owner_pid} on {host}, since '
                        f'{since}). Give this run another name (--force_yml name=...) or wait for it to end.')
                warnings.warn(f'experiment {self.name!r}: stale lock of pid {owner_pid} (since {since}, no longer '
                              f'running: killed?) in {self.path}; taking it over')
                os.remove(self.path)
                continue
            with os.fdopen(fd, 'w') as f:
                f.write(content)
            self.held = True
            return self
        raise RuntimeError(f'experiment {self.name!r}: could not take the lock {self.path}')

    def release(self):
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


TEMPORARY = re.compile(r'\.tmp(\d+)$')


def remove_temporaries(experiments_root):
    """Delete the temporary files (``*.tmp<pid>``) that killed runs left in ``models/`` and ``training_states/``
    (an atomic write renames its temporary file when complete). Call it while holding the lock: no live run of
    this experiment writes them then. Returns the removed paths."""
    removed = []
    for sub in ('models', 'training_states'):
        folder = osp.join(experiments_root, sub)
        if not osp.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            match = TEMPORARY.search(name)
            if match and int(match.group(1)) != os.getpid():
                os.remove(osp.join(folder, name))
                removed.append(osp.join(folder, name))
    return removed
