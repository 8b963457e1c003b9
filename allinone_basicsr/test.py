"""Test with BasicSR's own pipeline, this plugin registered; prints the per-set PSNR/SSIM table at the end.

    python -m allinone_basicsr.test -opt options/test_symunet.yml
    allinone-test -opt ...                      (console script)
    python allinone_basicsr/test.py -opt ...
Writes results/<name>/metrics.csv and metrics.md under the working directory.
"""
import argparse
import os
import sys

import yaml

import allinone_basicsr  # noqa: F401  (applies the basicsr fixes and registers archs, data, losses, metrics, models)
from basicsr.test import test_pipeline
from basicsr.utils.dist_util import get_dist_info


def main():
    root = os.getcwd()
    test_pipeline(root)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', required=True)
    args, _ = parser.parse_known_args()
    with open(args.opt) as f:
        name = yaml.safe_load(f)['name']
    table = os.path.join(root, 'results', name, 'metrics.md')
    if get_dist_info()[0] == 0 and os.path.isfile(table):
        with open(table) as f:
            sys.stdout.write('\n' + f.read())


if __name__ == '__main__':
    main()
