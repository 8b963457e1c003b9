"""One run per experiment: a lock file, and the leftovers of killed runs.

``experiments/.<name>.lock`` (beside the experiment folder, which BasicSR renames when a new run of the same name
starts) holds the owner's pid, host, process start time and lease. A second run with the same name stops at once
while the first is alive; the lock is released when the run ends, also on an error.

While held, the lock's modification time is its heartbeat: a daemon thread refreshes it every
``min(30 s, lease / 10)``. A lock is taken over, with a notice (``ExperimentLock.notices``, logged by the training
once its log file exists):

- from the same host, when its process is gone (a killed run); a live process's lock is refused whatever its age;
- from any host, when its heartbeat is older than its lease (``lock_lease``, default 300 s): a run preempted,
  killed or lost on another node (a slurm job requeued elsewhere). A fresher lock from another host is refused.

The holder checks at each refresh that the lock is still its own; one taken over meanwhile (this run was silent
longer than its lease, e.g. stopped) stops the run, so two runs never write one experiment.
"""
import os
import re
import socket
import threading
import time
from os import path as osp

DEFAULT_LEASE = 300


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
    """``with ExperimentLock(root, name):`` -- or ``acquire()`` / ``release()``. ``lease``: seconds without a
    heartbeat after which any host may take the lock over. ``exit``: what stops the process when the lock is lost."""

    def __init__(self, root_path, name, lease=DEFAULT_LEASE, exit=os._exit):
        self.path = osp.join(root_path, 'experiments', f'.{name}.lock')
        self.name = name
        self.lease = float(lease)
        self.refresh = min(30.0, self.lease / 10)
        self.notices = []  # what acquire() did that changes the run (a lock taken over)
        self.held = False
        self._exit = exit
        self._content = None
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # the refresh and release() one at a time
        self._thread = None

    def _snapshot(self):
        """(content, modification time) of the lock file, or None when there is none."""
        try:
            with open(self.path) as f:
                content = f.read()
            return content, os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None

    @staticmethod
    def _fields(content):
        try:
            fields = dict(line.split('=', 1) for line in content.splitlines() if '=' in line)
            fields['pid'] = int(fields['pid'])
            return fields
        except (KeyError, ValueError):
            return None

    def _create(self, content):
        """Create the lock file holding ``content``; False if one exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, 'w') as f:
            f.write(content)
        return True

    def _judge(self, content, age):
        """The notice for taking over the lock holding ``content`` whose heartbeat is ``age`` s old; raises
        RuntimeError if the lock is live."""
        host = socket.gethostname()
        owner = self._fields(content)
        if owner is None:  # being written right now, or unreadable: another run is starting
            if age <= self.lease:
                raise RuntimeError(f'experiment {self.name!r} is locked by another run ({self.path}); '
                                   'give this run another name')
            return (f'experiment {self.name!r}: unreadable lock {self.path} without a heartbeat for {age:.0f} s '
                    f'(lease {self.lease:g} s); taking it over')
        pid, since = owner['pid'], owner.get('since', '?')
        owner_host = owner.get('host', '?')
        try:
            lease = float(owner.get('lease', self.lease))  # the owner's promise: it refreshes well within it
        except ValueError:
            lease = self.lease
        if owner_host != host:
            if age <= lease:
                raise RuntimeError(
                    f'experiment {self.name!r} is in use by pid {pid} on {owner_host} since {since} ({self.path}: '
                    f'heartbeat {max(age, 0):.0f} s ago, lease {lease:g} s). Give this run another name, or wait: if '
                    f'that run is gone, the lock is taken over once its heartbeat is older than the lease.')
            return (f'experiment {self.name!r}: lock of pid {pid} on {owner_host} (since {since}) has had no heartbeat '
                    f'for {age:.0f} s, longer than its lease ({lease:g} s): that run is gone (preempted, killed or its '
                    f'node lost); taking the lock over ({self.path})')
        start = owner.get('start')
        if alive(pid, None if start in (None, 'None') else int(start)):
            raise RuntimeError(
                f'experiment {self.name!r} is in use by a running process (pid {pid} on {host}, since '
                f'{since}). Give this run another name (--force_yml name=...) or wait for it to end.')
        return (f'experiment {self.name!r}: stale lock of pid {pid} (since {since}, no longer running: killed?) in '
                f'{self.path}; taking it over')

    def acquire(self):
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        pid, host = os.getpid(), socket.gethostname()
        self._content = (f'pid={pid}\nhost={host}\nstart={_start_time(pid)}\n'
                         f'since={time.strftime("%Y-%m-%d %H:%M:%S")}\nlease={self.lease:g}\n')
        for _ in range(3):
            if self._create(self._content):
                self.held = True
                self._stop.clear()
                self._thread = threading.Thread(target=self._heartbeat, name='experiment-lock', daemon=True)
                self._thread.start()
                return self
            found = self._snapshot()
            if found is None:
                continue  # released meanwhile
            notice = self._judge(found[0], time.time() - found[1])
            if self._snapshot() != found:
                continue  # refreshed or replaced meanwhile: judge again
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.notices.append(notice)
        raise RuntimeError(f'experiment {self.name!r}: could not take the lock {self.path}')

    def _heartbeat(self):
        while not self._stop.wait(self.refresh):
            self.beat_once()

    def beat_once(self):
        """Refresh the lock's modification time if it is still this run's (re-create it if it was deleted); stop the
        run if another run took it over."""
        with self._mutex:
            if not self.held:
                return
            try:
                found = self._snapshot()
                if found is not None and found[0] == self._content:
                    os.utime(self.path)
                    return
                if found is None and self._create(self._content):  # deleted by hand: this run holds it again
                    return
                found = self._snapshot()
            except OSError:
                return  # a file system hiccup: the next refresh tries again
            owner = (self._fields(found[0]) if found else None) or {}
            self.held = False
        from allinone_basicsr.utils.heartbeat import report
        report(f'experiment {self.name!r}: the lock {self.path} was taken over by pid {owner.get("pid", "?")} on '
               f'{owner.get("host", "?")} (this run had no heartbeat for longer than the lease, {self.lease:g} s: '
               'stopped?); stopping this run so that two runs do not write one experiment')
        self._exit(1)

    def release(self):
        with self._mutex:
            if not self.held:
                return
            self.held = False
            self._stop.set()
            try:
                found = self._snapshot()
                if found is not None and found[0] == self._content:
                    os.remove(self.path)
            except OSError:
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
