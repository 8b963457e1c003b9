"""What AllInOneModel does differently when distributed: gradient layouts for DDP, and validation shared between
the ranks.

BasicSR validates on rank 0 alone with the DDP-wrapped network while the other ranks wait. That hangs for networks
with buffers (DaAIR's controllers, BatchNorm): DDP broadcasts the buffers before every forward, a collective the
waiting ranks never join. And one rank running the whole test sets can outlast NCCL's watchdog. Instead:

1. rank 0's buffers are broadcast to every rank (:func:`broadcast_buffers`; under DDP each rank's BatchNorm
   statistics drift from rank 0's, which DDP re-broadcasts at each training forward and the checkpoint holds);
2. image ``i`` is scored by rank ``i % world_size`` with the bare network (:func:`shard`; no collective in its
   forward, so ranks may score different numbers of images);
3. one all-reduce per test set gathers the per-image scores (:func:`gather_scores`), and every rank averages them
   in image order.

The numbers equal a single-process validation of rank 0's weights (tested), and the other ranks wait only for the
slowest share, not for the whole validation.

So a collective in validation waits only for the slowest share, well inside ``dist_params.timeout``; the heartbeat
(``utils/heartbeat.py``) beats from a thread meanwhile, and reports the set being validated as the rank's progress.
"""
import torch
from torch.utils.data import DataLoader, Subset

from allinone_basicsr.utils import heartbeat


def _grad_with_strides_of(param):
    """A gradient hook giving ``param``'s gradient exactly ``param``'s strides.

    Convolutions on channels-last features return weight gradients whose strides differ from the weight's only
    in size-1 dims (1×1 and depthwise kernels): the same memory, but DistributedDataParallel compares strides
    exactly and warns that the layout may impair performance. Such a gradient is re-viewed with the weight's
    strides (no copy); any other layout difference is copied into the weight's layout.
    """

    def hook(grad):
        if grad.stride() == param.stride():
            return grad
        if all(g == p for n, g, p in zip(grad.shape, grad.stride(), param.stride()) if n != 1):
            return grad.as_strided(grad.shape, param.stride(), grad.storage_offset())  # size-1 dims: same memory
        return torch.empty_like(param).copy_(grad)

    return hook


def match_gradient_strides(net):
    """Register :func:`_grad_with_strides_of` on every parameter of ``net``."""
    for param in net.parameters():
        param.register_hook(_grad_with_strides_of(param))


def broadcast_buffers(net):
    """Rank 0's buffers (BatchNorm statistics, DaAIR's controllers) on every rank."""
    import torch.distributed as dist
    for buffer in net.buffers():
        dist.broadcast(buffer, src=0)


def shard(dataloader, rank, world_size):
    """The indices of the images this rank scores (``rank, rank + world_size, ...``) and a loader over them."""
    heartbeat.mark(f"validation of {getattr(dataloader.dataset, 'opt', {}).get('name', '?')}")  # the rank's progress
    if world_size == 1:
        return range(len(dataloader)), dataloader
    indices = range(rank, len(dataloader.dataset), world_size)
    loader = DataLoader(Subset(dataloader.dataset, indices), batch_size=1, shuffle=False,
                        num_workers=dataloader.num_workers, collate_fn=dataloader.collate_fn,
                        pin_memory=dataloader.pin_memory)
    return indices, loader


def gather_scores(scores, num_images, width, device):
    """Every rank's ``{image index: row}`` merged on every rank: one all-reduce of a (num_images, 1 + width) table in
    which each rank filled only its own rows (column 0 flags an image with ground truth), so the sum holds every
    score exactly."""
    import torch.distributed as dist
    table = torch.zeros(num_images, 1 + width, dtype=torch.float64)
    for index, row in scores.items():
        table[index, 0] = 1.0
        table[index, 1:1 + len(row)] = torch.tensor(row, dtype=torch.float64)
    table = table.to(device)
    dist.all_reduce(table)
    return {i: row[1:] for i, row in enumerate(table.cpu().tolist()) if row[0] == 1.0}
