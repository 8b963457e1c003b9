"""The experiment lock's heartbeat and lease (a run requeued on another node): a lock whose heartbeat is older than
its lease is taken over from any host, with a notice in the run's log (also under PYTHONWARNINGS=ignore); a fresh
lock from another host is refused; a live run refreshes its lock and stops if another run took it over."""
import os
import re
import time

import pytest
from pipeline_util import run_python as run
from test_runs import log_of, options, write

from allinone_basicsr.utils.experiment import ExperimentLock


def foreign_lock(path, age, pid=4242, lease=None):
    """A lock file as written by a run on another host, its heartbeat (mtime) ``age`` seconds old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'pid={pid}\nhost=other-node-17\nstart=123\nsince=2026-01-01 00:00:00\n'
                    + (f'lease={lease}\n' if lease else ''))
    then = time.time() - age
    os.utime(path, (then, then))


def test_a_lock_from_another_host_is_taken_over_after_its_lease_and_refused_before(tmp_path):
    path = tmp_path / 'experiments' / '.run.lock'
    foreign_lock(path, age=60)
    with pytest.raises(RuntimeError, match=r"in use by pid 4242 on other-node-17 since 2026-01-01 00:00:00 .*heartbeat "
                                           r"60 s ago, lease 300 s\)\. Give this run another name, or wait"):
        ExperimentLock(str(tmp_path), 'run').acquire()
    assert 'other-node-17' in path.read_text()  # untouched
    foreign_lock(path, age=400)
    lock = ExperimentLock(str(tmp_path), 'run').acquire()
    try:
        assert len(lock.notices) == 1
        assert re.search(r'lock of pid 4242 on other-node-17 \(since 2026-01-01 00:00:00\) has had no heartbeat for '
                         r'4\d\d s, longer than its lease \(300 s\)', lock.notices[0])
        assert 'taking the lock over' in lock.notices[0]
        assert f'pid={os.getpid()}' in path.read_text()
    finally:
        lock.release()
    assert not path.exists()
    # the owner's own lease counts (written in its lock): 400 s is within a 3600 s lease
    foreign_lock(path, age=400, lease=3600)
    with pytest.raises(RuntimeError, match='lease 3600 s'):
        ExperimentLock(str(tmp_path), 'run', lease=10).acquire()


def test_a_live_process_on_this_host_keeps_its_lock_whatever_its_age(tmp_path):
    path = tmp_path / 'experiments' / '.run.lock'
    holder = ExperimentLock(str(tmp_path), 'run').acquire()
    try:
        old = time.time() - 10000
        os.utime(path, (old, old))  # e.g. a stopped run on this host: its pid is alive
        with pytest.raises(RuntimeError, match=f'in use by a running process \\(pid {os.getpid()}'):
            ExperimentLock(str(tmp_path), 'run').acquire()
    finally:
        holder.release()


def test_a_live_run_refreshes_its_lock_and_stops_when_it_was_taken_over(tmp_path):
    path = tmp_path / 'experiments' / '.run.lock'
    exits = []
    lock = ExperimentLock(str(tmp_path), 'run', lease=2, exit=exits.append).acquire()  # refreshed every 0.2 s
    try:
        old = time.time() - 1000
        os.utime(path, (old, old))
        deadline = time.time() + 30
        while path.stat().st_mtime < time.time() - 100:
            assert time.time() < deadline, 'the lock was not refreshed'
            time.sleep(0.05)
        assert not exits
        foreign_lock(path, age=0, pid=77)  # another run took it over (this one was silent past its lease)
        while not exits:
            assert time.time() < deadline, 'the run did not notice that its lock was taken over'
            time.sleep(0.05)
        assert exits == [1] and not lock.held
        lock.release()
        assert 'pid=77' in path.read_text()  # the other run's lock is left alone
    finally:
        lock.release()


@pytest.mark.slow
def test_a_requeued_run_takes_over_a_stale_lock_from_another_host_and_logs_it(tmp_path, monkeypatch):
    """A run's lock left by another node (heartbeat 10 minutes old): the run starts, and the takeover is in its
    train_*.log although Python warnings are ignored; a fresh lock from another node stops the run at once."""
    from make_demo_data import build_demo_data
    build_demo_data(str(tmp_path / 'datasets' / 'demo'), seed=0)
    opt_file = write(tmp_path, 'requeued', options('requeued', 2))
    lock = tmp_path / 'experiments' / '.requeued.lock'
    monkeypatch.setenv('PYTHONWARNINGS', 'ignore')  # common on clusters: hides Python warnings, not the log's notices
    foreign_lock(lock, age=30)
    proc = run(['-m', 'allinone_basicsr.train', '-opt', opt_file], tmp_path, check=False, timeout=600)
    assert proc.returncode != 0 and 'is in use by pid 4242 on other-node-17' in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / 'experiments' / 'requeued').exists()
    foreign_lock(lock, age=600)
    proc = run(['-m', 'allinone_basicsr.train', '-opt', opt_file], tmp_path, timeout=600)
    log = log_of(tmp_path, 'requeued')
    assert re.search(r"WARNING: experiment 'requeued': lock of pid 4242 on other-node-17 .* has had no heartbeat for "
                     r"6\d\d s, longer than its lease \(300 s\)", log), log[-3000:]
    assert 'taking the lock over' in proc.stderr
    assert not lock.exists()  # released at the end
    # the same for a killed run's lock on this host (its pid gone): the notice reaches the log, warnings ignored
    opt_file = write(tmp_path, 'killed', options('killed', 2))
    dead = run(['-c', 'import os; print(os.getpid())'], tmp_path).stdout.strip()
    (tmp_path / 'experiments' / '.killed.lock').write_text(f'pid={dead}\nhost={os.uname().nodename}\nstart=1\n')
    run(['-m', 'allinone_basicsr.train', '-opt', opt_file], tmp_path, timeout=600)
    assert f"WARNING: experiment 'killed': stale lock of pid {dead}" in log_of(tmp_path, 'killed')
