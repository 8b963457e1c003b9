"""Seeds that are the same in every process, run and machine (Python's ``hash()`` is salted per process)."""
import hashlib


def stable_seed(text):
    """A 63-bit integer seed from a string, identical in every process, run and machine.

    Python's ``hash()`` is salted per process, so it must not be used for seeds; this uses SHA-256.

    Args:
        text (str): Any string, e.g. ``'coffee_000|25'``.

    Returns:
        int: Seed in [0, 2**63).
    """
    digest = hashlib.sha256(str(text).encode('utf-8')).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def sample_seed(*parts):
    """A 63-bit seed from integers: ``stable_seed`` of ``'a/b/c/d'`` (a training sample's: manual_seed, epoch, rank,
    position in the epoch)."""
    return stable_seed('/'.join(str(int(p)) for p in parts))
