#!/usr/bin/env python
"""Training-data throughput: patches/s that the train dataset of an option file delivers through BasicSR's loader.

Usage:
    python benchmarks/data_throughput.py -opt options/train_symunet.yml [--root .] [--workers 2] [--batches 100]
    python benchmarks/data_throughput.py -opt options/train_symunet.yml --fake 200   # fake raw tree, prepared
    python benchmarks/data_throughput.py -opt options/train_symunet.yml --fake 200 --format png --runs 3

``--root`` is the folder holding ``datasets/`` (the option files' paths are relative to it). ``--fake N`` builds
a fake raw tree of N images per training set at the public datasets' typical sizes, runs prepare_3task.py on it
in a temporary folder with ``--format`` (default ``raw``: entries the loader reads without decoding; ``png`` is
prepare_3task.py's default) and measures that (no real data needed). Each of ``--runs`` runs builds a fresh loader;
prints a markdown row with the best and the median run; no model is run.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from os import path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path[:0] = [REPO, osp.join(REPO, 'datasets_prep')]

import yaml  # noqa: E402

import allinone_basicsr  # noqa: E402,F401

from basicsr.data import build_dataloader, build_dataset  # noqa: E402


def measure(opt_file, root, workers, batches, batch_size=None, warmup=5):
    with open(opt_file) as f:
        opt = yaml.safe_load(f)
    dataset_opt = dict(opt['datasets']['train'], phase='train', num_worker_per_gpu=workers,
                       persistent_workers=workers > 0, prefetch_mode=None)
    if batch_size:
        dataset_opt['batch_size_per_gpu'] = batch_size
    cwd = os.getcwd()
    os.chdir(root)
    try:
        dataset = build_dataset(dataset_opt)
        loader = build_dataloader(dataset, dataset_opt, num_gpu=0, dist=False, seed=0)
        it = iter(loader)
        for _ in range(warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        elapsed = time.perf_counter() - start
    finally:
        os.chdir(cwd)
    patches = batches * batch['gt'].shape[0]
    return {'samples': len(dataset), 'batch': batch['gt'].shape[0], 'patch': batch['gt'].shape[-1],
            'patches_per_s': patches / elapsed, 'seconds': elapsed}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-opt', default=osp.join(REPO, 'options', 'train_symunet.yml'))
    parser.add_argument('--root', default='.', help='folder holding datasets/ (default: the working directory)')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--batches', type=int, default=100)
    parser.add_argument('--batch-size', type=int, default=None, help="default: the option file's")
    parser.add_argument('--fake', type=int, default=0, help='build and prepare a fake raw tree of N images per set')
    parser.add_argument('--format', choices=('raw', 'png', 'source'), default='raw',
                        help='with --fake: the storage format of the prepared LMDBs (prepare_3task.py --format)')
    parser.add_argument('--runs', type=int, default=1, help='measurements (best and median are printed)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, storage = args.root, '(as found)'
        if args.fake:
            from fake_raw import make_raw_sized
            from prepare_3task import main as prepare
            make_raw_sized(osp.join(tmp, 'raw'), args.fake)
            prepare(['--raw', osp.join(tmp, 'raw'), '--out', osp.join(tmp, 'datasets'), '--workers', '2',
                     '--format', args.format])
            root, storage = tmp, args.format
        results = [measure(args.opt, root, args.workers, args.batches, args.batch_size) for _ in range(args.runs)]
    rates = [r['patches_per_s'] for r in results]
    result = results[0]
    print('\n| option file | storage | samples | workers | batch × patch | patches/s (best) | patches/s (median) | '
          'runs |\n|---|---|---|---|---|---|---|---|')
    print(f'| {osp.basename(args.opt)} | {storage} | {result["samples"]:,} | {args.workers} | {result["batch"]} × '
          f'{result["patch"]}² | {max(rates):.0f} | {statistics.median(rates):.0f} | {len(rates)} |')


if __name__ == '__main__':
    main()
