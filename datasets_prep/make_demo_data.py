#!/usr/bin/env python
"""Build the small demo data set from the photos bundled with scikit-image (no download).

Usage:
    python datasets_prep/make_demo_data.py --out datasets/demo [--seed 0] [--force]

What it writes and how: ``allinone_basicsr/data/demo_set.py`` (10 BasicSR LMDBs under ``--out``: train and test
clean, rain and haze images; noise is added by the datasets).
"""
import argparse
import sys
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a source checkout

import allinone_basicsr  # noqa: E402,F401  (patches basicsr before it is imported)
from allinone_basicsr.data.demo_set import build_demo_data, make_images  # noqa: E402,F401


def main(argv=None):
    parser = argparse.ArgumentParser(description='Build the demo data set (skimage photos, synthetic rain/haze).')
    parser.add_argument('--out', default='datasets/demo', help='output folder (default: datasets/demo)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic rain / haze (default: 0)')
    parser.add_argument('--force', action='store_true', help='rebuild even if the outputs exist')
    args = parser.parse_args(argv)
    build_demo_data(args.out, seed=args.seed, force=args.force)


if __name__ == '__main__':
    main()
