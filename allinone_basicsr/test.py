"""Test with BasicSR's own pipeline, this plugin registered; prints the per-set PSNR/SSIM table at the end.

    python -m allinone_basicsr.test -opt options/test_symunet.yml
    allinone-test -opt ...                      (console script)
    python allinone_basicsr/test.py -opt ...
Writes results/<name>/metrics.csv and metrics.md under the working directory, and copies the option file there
(``allinone_basicsr.compare`` reads it for the model size).
"""
import argparse
import os
import shutil
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
    folder = os.path.join(root, 'results', name)
    table = os.path.join(folder, 'metrics.md')
    if get_dist_info()[0] == 0 and os.path.isdir(folder):  # the option file beside the metrics (used by compare)
        shutil.copyfile(args.opt, os.path.join(folder, os.path.basename(args.opt)))
    if get_dist_info()[0] == 0 and os.path.isfile(table):
        with open(table) as f:
            sys.stdout.write('\n' + f.read())


if __name__ == '__main__':
    main()
