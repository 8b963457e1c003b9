"""Distributed runs: a bound on waiting for a rank, and the name of the rank that stopped answering.

``dist_params.timeout`` (seconds, default :data:`DEFAULT_TIMEOUT`) bounds two things:

- **Heartbeats.** Every rank publishes a beat in the rendezvous store (torchrun's agent store, or rank 0's with
  slurm) from a daemon thread every ``interval`` seconds, and a second daemon thread watches the others' beats. A
  rank whose beat has not changed for ``timeout`` seconds (stopped with SIGSTOP, killed, hung in the kernel, its
  node lost) makes every other rank exit (status 1) with a message naming it (rank, host, pid, its last progress),
  on stderr and in the log. The beats come from threads, so a long validation or checkpoint write never starves
  them; a stopped process's threads stop with it. A rank that fails with an exception says so in its beat, and the
  others stop at once with its error instead of waiting.
- **Collectives.** The process group's timeout is :func:`collective_timeout` (the heartbeat bound plus a margin, so
  a silent rank is named before a collective gives up): a rank that is alive but stuck (a hung data loader, a
  collective the others never join) fails the collective (torch's error) and the log lists every rank's last
  progress (the stuck one is behind). Validation waits in a collective only for the slowest share of a set
  (``models/distributed.py``), and the training step adds no host sync: the main thread only records its iteration.

Wall clocks are never compared between hosts: a beat carries a counter, and each watcher times changes with its
own monotonic clock.
"""
import datetime
import os
import socket
import sys
import threading
import time

DEFAULT_TIMEOUT = 300
EXIT_CODE = 1
_current = None  # the running Heartbeat of this process


def timeout_of(opt):
    """``dist_params.timeout`` in seconds (default :data:`DEFAULT_TIMEOUT`), checked."""
    from allinone_basicsr.utils.option_types import to_number
    value = (opt.get('dist_params') or {}).get('timeout', DEFAULT_TIMEOUT)
    return to_number(value, 'dist_params.timeout', above=0)


def interval_of(timeout):
    """Seconds between two beats (and between two checks): a tenth of the bound, at most 5 s."""
    return min(5.0, timeout / 10)


def collective_timeout(timeout):
    """The process group's timeout: the heartbeat bound plus the lag of its beats and checks and a few seconds."""
    return timeout + 3 * interval_of(timeout) + 5


def set_collective_timeout(opt):
    """Give the default process group the timeout of ``dist_params.timeout`` (torch's default: 30 minutes for
    gloo, 10 for NCCL)."""
    import torch.distributed as dist
    dist.set_timeout(datetime.timedelta(seconds=collective_timeout(timeout_of(opt))))


def mark(progress):
    """Record what this rank is doing (an iteration number, or a phase such as ``'validation of X'``), sent with the
    next beat. No-op without a running heartbeat; never touches a device."""
    if _current is not None:
        _current.progress = progress


def _describe(progress):
    return f'iteration {progress}' if isinstance(progress, int) else str(progress)


def report(message):
    """``message`` on stderr and, once BasicSR's logger is set up, in the log (rank 0 writes the log file)."""
    import logging

    from basicsr.utils.logger import initialized_logger
    if 'basicsr' in initialized_logger:
        logging.getLogger('basicsr').error(message)  # its stream handler writes stderr; rank 0's also the file
    else:
        sys.stderr.write(message + '\n')
    sys.stderr.flush()


class Heartbeat:
    """Beats of ``rank`` in ``store`` (keys ``<prefix><rank>``: ``count|state|host:pid|progress``) and a watch of the
    other ranks'. :meth:`start`, then :meth:`stop` at a normal end or :meth:`fail` on an exception."""

    def __init__(self, store, rank, world_size, timeout, prefix='allinone_heartbeat/', exit=os._exit):
        self.store, self.rank, self.world_size, self.timeout = store, rank, world_size, timeout
        self.interval = interval_of(timeout)
        self.prefix = prefix
        self.progress = 'start'
        self.state = 'alive'  # 'done' after stop(), 'failed <error>' after fail()
        self.who = f'{socket.gethostname()}:{os.getpid()}'
        self._exit = exit
        self._peers = [r for r in range(world_size) if r != rank]
        now = time.monotonic()
        self._seen = {r: (None, now) for r in self._peers}  # rank: (last value, when it last changed)
        self._store_ok = now  # when the store last answered
        self._count = 0
        self._lock = threading.Lock()  # one store operation at a time
        self._stopped = threading.Event()
        self._threads = []

    def _key(self, rank):
        return f'{self.prefix}{rank}'

    def _publish(self):
        self._count += 1
        self.store.set(self._key(self.rank), f'{self._count}|{self.state}|{self.who}|{_describe(self.progress)}')

    def _read(self):
        present = [r for r in self._peers
                   if self._seen[r][0] is not None or self.store.check([self._key(r)])]
        if not present:
            return {}
        return dict(zip(present, (v.decode() for v in self.store.multi_get([self._key(r) for r in present]))))

    def beat_once(self):
        """Publish this rank's beat and read the others' (one round of the beat thread)."""
        with self._lock:
            self._publish()
            values = self._read()
        now = time.monotonic()
        self._store_ok = now
        for rank, value in values.items():
            if value != self._seen[rank][0]:
                self._seen[rank] = (value, now)

    def silent(self, now=None):
        """``[(rank, seconds since its beat changed, its last beat or None)]`` of the ranks silent for ``timeout``
        seconds (ranks that ended normally excluded), and failed ranks with ``seconds = None``."""
        now = time.monotonic() if now is None else now
        found = []
        for rank, (value, changed) in self._seen.items():
            state = value.split('|')[1] if value else 'alive'
            if state.startswith('failed'):
                found.append((rank, None, value))
            elif state != 'done' and now - changed > self.timeout:
                found.append((rank, now - changed, value))
        return found

    def check_once(self, now=None):
        """One round of the watch: stop this process (``exit``) naming the first silent or failed rank."""
        if self.state != 'alive':
            return
        now = time.monotonic() if now is None else now
        if now - self._store_ok > self.timeout:
            address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            return self._abort(f'the rendezvous store ({address}) has not answered for {now - self._store_ok:.0f} s '
                               '(the master node or its torchrun agent stopped or lost?)')
        for rank, age, value in self.silent(now):
            count, state, who, progress = (value.split('|', 3) if value else ('0', 'alive', '?', 'no beat yet'))
            where = f'rank {rank} (host:pid {who}, last at {progress})'
            if age is None:
                return self._abort(f'{where} failed: {state[len("failed "):]}')
            return self._abort(f'{where} has not answered for {age:.0f} s: stopped (SIGSTOP), killed, hung or its '
                               f'node lost')

    def _abort(self, what):
        report(f'Distributed run stopped by rank {self.rank} (at {_describe(self.progress)}): {what}. Every rank '
               f'exits (dist_params.timeout: {self.timeout:g} s; see docs/training.md, Distributed).')
        self._exit(EXIT_CODE)

    def _loop(self, step):
        while not self._stopped.wait(self.interval):
            try:
                step()
            except Exception:  # the store did not answer: check_once judges by _store_ok
                pass

    def start(self):
        global _current
        try:
            self.beat_once()
        except Exception:
            pass
        self._threads = [threading.Thread(target=self._loop, args=(step,), name=f'heartbeat-{name}', daemon=True)
                         for name, step in (('beat', self.beat_once), ('watch', self.check_once))]
        for thread in self._threads:
            thread.start()
        _current = self
        return self

    def _end(self, state):
        global _current
        if self.state != 'alive':
            return  # ended already
        self.state = state
        self._stopped.set()
        try:
            with self._lock:
                self._publish()
        except Exception:
            pass
        if _current is self:
            _current = None

    def stop(self):
        """A normal end: the others stop watching this rank."""
        self._end('done')

    def fail(self, error, logger=None):
        """This rank fails with ``error``: the others stop at once naming it; the log lists every rank's last
        progress (a collective that timed out: the rank behind is the stuck one)."""
        detail = f'{type(error).__name__}: {error}'.replace('|', '/').splitlines()
        lines = [f'rank {self.rank}: {_describe(self.progress)} (this rank)']
        now = time.monotonic()
        for rank, (value, changed) in sorted(self._seen.items()):
            progress = value.split('|', 3)[3] if value else 'no beat seen'
            lines.append(f'rank {rank}: {progress} (beat {now - changed:.0f} s ago)')
        self._end(f"failed {detail[0] if detail else type(error).__name__}")
        message = 'Distributed run failed on this rank; last progress of each rank: ' + '; '.join(lines)
        if logger is not None:
            logger.error(message)
        else:
            report(message)


def start_heartbeat(opt):
    """The heartbeat of this rank of a distributed run (``opt['dist']``), started; None otherwise. It speaks to the
    rendezvous store at MASTER_ADDR:MASTER_PORT over its own connection (the process group's store otherwise)."""
    if not opt.get('dist'):
        return None
    import torch.distributed as dist
    timeout = timeout_of(opt)
    try:
        store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False,
                              timeout=datetime.timedelta(seconds=timeout), wait_for_workers=False)
    except (KeyError, ValueError, RuntimeError):
        store = dist.distributed_c10d._get_default_store()
    run = os.environ.get('TORCHELASTIC_RUN_ID') or os.environ.get('SLURM_JOB_ID') or ''
    prefix = f"allinone_heartbeat/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    return Heartbeat(store, opt['rank'], opt['world_size'], timeout, prefix).start()
