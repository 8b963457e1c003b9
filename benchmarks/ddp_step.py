#!/usr/bin/env python
"""DistributedDataParallel step overhead of DaAIR's routed experts, on CPU ranks (gloo).

Usage:
    python benchmarks/ddp_step.py [--world-size 2] [--size 64] [--batch 4] [--steps 8] [--num-experts 3]

DaAIR sends each sample to one expert, so a rank whose batch holds no sample of a class leaves that expert unused.
DDP then needs ``find_unused_parameters=True`` (a search of the autograd graph every step), unless every expert runs,
on an empty group when it has no sample, so every parameter is in the graph (what ``DaLe.route`` does). This times one
training step (forward, L1 + routing loss, backward with DDP's all-reduce, AdamW) of the paper-size DaAIR in
``--world-size`` processes, for:

* ``local``: each rank alone, no DDP (the compute);
* ``ddp``: DDP with every expert in the graph (ours);
* ``ddp-find-unused``: the previous design, experts without samples skipped, ``find_unused_parameters=True``.

Labels are drawn per rank from the 3 classes, so some batches lack a class, as in training. Times are the median of
``--steps`` steps after 2 warm-up steps, the slowest rank's; threads per rank = cores // world size.
"""
import argparse
import os
import statistics
import sys
import time
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MODES = ('local', 'ddp', 'ddp-find-unused')


def _route_skipping_empty_groups(self, h, choice):
    """The previous ``DaLe.route``: experts without samples do not run (their parameters leave the graph)."""
    order = torch.argsort(choice, stable=True)
    counts = torch.bincount(choice, minlength=self.num_experts).tolist()
    groups = h.index_select(0, order).split(counts)
    outs = [expert(group) for expert, group, n in zip(self.experts, groups, counts) if n]
    return torch.cat(outs).index_select(0, torch.argsort(order))


def _worker(rank, args, port, results):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))
    dist.init_process_group('gloo', rank=rank, world_size=args.world_size)
    from torch.nn.parallel import DistributedDataParallel

    import allinone_basicsr  # noqa: F401
    from allinone_basicsr.archs import daair_arch
    times = {}
    for mode in args.modes:
        torch.manual_seed(0)
        if mode == 'ddp-find-unused':
            daair_arch.DaLe.route = _route_skipping_empty_groups
        net = daair_arch.DaAIR(num_experts=args.num_experts)
        model = net if mode == 'local' else DistributedDataParallel(net, find_unused_parameters=mode != 'ddp')
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        gen = torch.Generator().manual_seed(1000 + rank)
        steps = []
        for step in range(args.steps + 2):
            x = torch.rand(args.batch, 3, args.size, args.size, generator=gen)
            labels = torch.randint(0, args.num_experts, (args.batch,), generator=gen)
            start = time.perf_counter()
            out, logits = model(x, return_task_logits=True, task_labels=labels)
            loss = F.l1_loss(out, x) + 0.01 * sum(F.cross_entropy(lg, labels) for lg in logits) / len(logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            net.after_optimizer_step()
            if step >= 2:
                steps.append(time.perf_counter() - start)
        times[mode] = statistics.median(steps)
        dist.barrier()
    gathered = [None] * args.world_size
    dist.all_gather_object(gathered, times)
    if rank == 0:
        results.update({mode: max(t[mode] for t in gathered) for mode in args.modes})
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--world-size', type=int, default=2)
    parser.add_argument('--size', type=int, default=64, help='patch size (default 64)')
    parser.add_argument('--batch', type=int, default=4, help='batch per rank (default 4)')
    parser.add_argument('--steps', type=int, default=8)
    parser.add_argument('--num-experts', type=int, default=3)
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    args = parser.parse_args()
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(args, port, results), nprocs=args.world_size)
        results = dict(results)
    print(f'DaAIR (paper size, {args.num_experts} experts), {args.world_size} CPU ranks, batch {args.batch} per rank, '
          f'{args.size}², median of {args.steps} steps (slowest rank)')
    print('| mode | step (ms) | vs local |\n|---|---|---|')
    for mode in args.modes:
        ratio = f'{results[mode] / results["local"]:.3f}×' if 'local' in results else '–'
        print(f'| {mode} | {results[mode] * 1000:.1f} | {ratio} |')


if __name__ == '__main__':
    main()
