"""A training sampler whose every sample has its own seed, so a resumed run sees exactly the same data."""
import hashlib

from basicsr.data.data_sampler import EnlargedSampler


def sample_seed(*parts):
    """A 63-bit seed from integers (stable across processes and machines)."""
    digest = hashlib.sha256('/'.join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


class ResumableSampler(EnlargedSampler):
    """BasicSR's EnlargedSampler (same epoch-seeded order, same split across ranks) yielding ``(index, seed)``.

    The seed depends only on (manual_seed, epoch, rank, position in the epoch), so a sample's random crop, flips and
    noise do not depend on which worker loads it or on what ran before; ``skip`` starts an epoch at a position, so a
    run resumed at iteration k continues with the batch the uninterrupted run used at k + 1.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1, seed=0):
        super().__init__(dataset, num_replicas, rank, ratio)
        self.seed = seed
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        for position in range(self.skip, len(indices)):
            yield indices[position], sample_seed(self.seed, self.epoch, self.rank, position)

    def __len__(self):
        return self.num_samples - self.skip
