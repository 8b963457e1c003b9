"""Test with BasicSR's own pipeline, this plugin registered; prints the per-set PSNR/SSIM table at the end.

    python -m allinone_basicsr.test -opt options/test_symunet.yml [--force_yml name=X ...] [--launcher pytorch]
    allinone-test -opt ...                      (console script)
    python allinone_basicsr/test.py -opt ...
Writes results/<name>/metrics.csv and metrics.md under the working directory, and the options the run used
(``options.yml``, after ``--force_yml`` and ``--debug``; the compare tool reads it for the model size).
"""
import os
import sys

import yaml

import allinone_basicsr  # noqa: F401  (applies the basicsr fixes and registers archs, data, losses, metrics, models)
from allinone_basicsr.utils.cli import option_errors, parse_options, print_help_if_asked
from allinone_basicsr.utils.options import check_option_file, plain

import basicsr.test as basicsr_test
from basicsr.utils.options import parse_options as basicsr_parse_options


def test_pipeline(root_path, argv=None):
    """BasicSR's ``test_pipeline`` of the command line (or ``argv``); returns the options it parsed (the run's own:
    ``--force_yml`` applied)."""
    parsed = {}

    def parse(root, is_train=False):
        parsed['opt'], args = parse_options(root, is_train, argv)
        check_option_file(parsed['opt'], args.opt, is_train=is_train)  # keys, types and values, before anything runs
        return parsed['opt'], args

    basicsr_test.parse_options = parse
    try:
        basicsr_test.test_pipeline(root_path)
    finally:
        basicsr_test.parse_options = basicsr_parse_options
    return parsed['opt']


def main():
    print_help_if_asked('allinone-test', 'Score a model on the test sets of an option file: BasicSR\'s test_pipeline '
                        'with the all-in-one plugin registered. Prints and writes results/<name>/metrics.{md,csv}.',
                        train=False)
    with option_errors('allinone-test'):  # a refused option file: one line naming the file and the key, status 2
        opt = test_pipeline(os.getcwd())
    if opt['rank'] != 0:
        return
    folder = opt['path']['results_root']
    if os.path.isdir(folder):  # the options of this run beside its metrics (used by compare)
        with open(os.path.join(folder, 'options.yml'), 'w') as f:
            f.write(f'# options of the run: {" ".join(sys.argv)}\n')
            yaml.safe_dump(plain({k: v for k, v in opt.items() if k not in ('dist', 'rank', 'world_size')}), f,
                           sort_keys=False)
    table = os.path.join(folder, 'metrics.md')
    if os.path.isfile(table):
        with open(table) as f:
            sys.stdout.write('\n' + f.read())


if __name__ == '__main__':
    main()
