"""The heartbeat's judgement, in one process over a real (in-memory) store: a silent rank is named after the timeout,
a failed rank at once, a rank that ended normally never; the option is checked naming its key. (The end-to-end case,
a SIGSTOPped rank of a torchrun, is in test_distributed.py.)"""
import pytest
import torch.distributed as dist

from allinone_basicsr.utils import heartbeat
from allinone_basicsr.utils.heartbeat import Heartbeat, collective_timeout, timeout_of


@pytest.fixture(autouse=True)
def no_basicsr_logger(monkeypatch):
    """The messages on this process's stderr, as before BasicSR's logger is set up: an earlier test of the session
    may have set it up, with a stream handler bound to another stderr than the one capsys reads. (The logged route
    is checked end to end in test_distributed.py.)"""
    import basicsr.utils.logger
    monkeypatch.setattr(basicsr.utils.logger, 'initialized_logger', {})


def pair(timeout=10):
    store = dist.HashStore()
    exits = ([], [])
    beats = [Heartbeat(store, rank, 2, timeout, exit=exits[rank].append) for rank in (0, 1)]
    return beats, exits


def age(beat, rank, seconds):
    """Move the moment ``beat`` last saw ``rank``'s beat change ``seconds`` into the past."""
    value, changed = beat._seen[rank]
    beat._seen[rank] = (value, changed - seconds)


def test_a_silent_rank_is_named_after_the_timeout(capsys):
    (zero, one), (exits, _) = pair()
    one.progress = 7
    one.beat_once()
    zero.beat_once()
    age(zero, 1, 9)  # rank 1's beat last changed 9 s ago
    zero.beat_once()  # rank 1 did not beat again; the store answers
    zero.check_once()
    assert not exits
    age(zero, 1, 2)
    zero.check_once()
    assert exits == [1]
    err = capsys.readouterr().err
    assert 'Distributed run stopped by rank 0' in err and 'rank 1 (host:pid ' in err
    assert 'last at iteration 7) has not answered for 1' in err and 'dist_params.timeout: 10 s' in err


def test_a_failed_rank_stops_the_others_at_once_and_one_that_ended_never(capsys):
    (zero, one), (exits, _) = pair()
    one.beat_once()
    zero.beat_once()
    one.fail(ValueError('bad | batch'))
    zero.beat_once()
    zero.check_once()
    assert exits == [1] and 'rank 1 (host:pid ' in capsys.readouterr().err
    (zero, one), (exits, _) = pair()
    one.beat_once()
    one.stop()
    zero.beat_once()
    age(zero, 1, 1000)
    zero.check_once()
    assert not exits


def test_the_store_not_answering_is_named(capsys):
    (zero, _), (exits, _) = pair()
    zero._store_ok -= 11  # no answer from the store for 11 s
    zero.check_once()
    assert exits == [1] and 'the rendezvous store' in capsys.readouterr().err


def test_the_timeout_option():
    assert timeout_of({}) == heartbeat.DEFAULT_TIMEOUT == 300 and timeout_of({'dist_params': {'timeout': '20'}}) == 20
    assert collective_timeout(300) == 320 and collective_timeout(20) == 31  # the heartbeat names a rank first
    with pytest.raises(TypeError, match='dist_params.timeout'):
        timeout_of({'dist_params': {'timeout': 'soon'}})
    with pytest.raises(ValueError, match='dist_params.timeout'):
        timeout_of({'dist_params': {'timeout': 0}})
