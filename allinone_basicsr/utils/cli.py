"""The train / test entry points' command line: BasicSR's parser for an explicit argument list, and a ``--help`` that
describes the flags (BasicSR's own parser has none; it still parses them)."""
import argparse
import contextlib
import random
import sys

METHODS = ('SymUNet, SESymUNet (SE-SymUNet), DaAIR, PromptDSANet, PromptIR (network_g.type), AllInOneModel '
           '(model_type), MixedDegradationDataset / AllInOneTestDataset (datasets), FFTLoss / TaskClassificationLoss, '
           'calculate_psnr_aio / calculate_ssim_aio / calculate_routing_accuracy (val.metrics)')


def help_parser(prog, description, train):
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f'Registered by this plugin (next to everything BasicSR registers): {METHODS}.\n'
        'Option files: options/train_<method>[_5task].yml, options/test_<method>[_5task].yml, options/demo/.\n'
        'Outputs go under the working directory (experiments/, results/, tb_logger/).')
    parser.add_argument('-opt', required=True, metavar='FILE', help='the YAML option file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='distributed launcher: none (one process), pytorch (torchrun), slurm (srun). Without '
                        'CUDA the ranks use gloo; with CUDA gloo for CPU tensors and NCCL for CUDA ones')
    if train:
        parser.add_argument('--auto_resume', action='store_true',
                            help='continue from the newest readable training state of experiments/<name>/ (exactly: '
                            'same batches, crops and noise as an uninterrupted run)')
    parser.add_argument('--debug', action='store_true',
                        help="BasicSR's debug mode: name prefixed with debug_, logs and checkpoints every few "
                        'iterations, no tensorboard')
    parser.add_argument('--local_rank', type=int, default=0, help='set by old launchers; ignored (LOCAL_RANK is read)')
    parser.add_argument('--force_yml', nargs='+', metavar='KEY=VALUE',
                        help='override options, e.g. name=run2 train:total_iter=1000 '
                        'datasets:train:batch_size_per_gpu=2')
    return parser


@contextlib.contextmanager
def option_errors(prog):
    """An option file the programs refuse (``utils.options.OptionError``: unreadable, empty, an unknown key, a wrong
    value; its message names the file and the key) is printed as one line ``<prog>: error: <message>`` on stderr, and
    the process exits with status 2."""
    from allinone_basicsr.utils.options import OptionError
    try:
        yield
    except OptionError as err:
        print(f'{prog}: error: {err}', file=sys.stderr)
        raise SystemExit(2) from None


def print_help_if_asked(prog, description, train):
    """Print the help and exit when ``-h`` / ``--help`` is among the arguments (before BasicSR parses them)."""
    if '-h' in sys.argv[1:] or '--help' in sys.argv[1:]:
        help_parser(prog, description, train).print_help()
        sys.exit(0)


@contextlib.contextmanager
def _arguments(argv):
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else 'allinone_basicsr'] + [str(a) for a in argv]
    try:
        yield
    finally:
        sys.argv = saved


def _given_seed(args):
    """The ``manual_seed`` that the option file and ``--force_yml`` give (None: null or absent)."""
    from basicsr.utils.options import _postprocess_yml_value
    from .options import read_yaml
    seed = (read_yaml(args.opt) or {}).get('manual_seed')
    for entry in args.force_yml or []:
        key, _, value = str(entry).partition('=')
        if key.strip() == 'manual_seed':
            seed = _postprocess_yml_value(value.strip())
    return seed


def _one_seed(opt, seed):
    """Distributed: rank 0's ``seed`` on every rank (each rank drew its own)."""
    if not opt.get('dist'):
        return seed
    import torch.distributed as dist
    seeds = [seed]
    dist.broadcast_object_list(seeds, src=0)
    return seeds[0]


def parse_options(root_path, is_train, argv=None):
    """BasicSR's ``parse_options`` (options, args) of the arguments ``argv`` (default: this process's command line).
    BasicSR's parser reads ``sys.argv`` only, so an explicit ``argv`` stands in for it while it parses. A distributed
    run's collectives time out after ``dist_params.timeout`` (``heartbeat.set_collective_timeout``).

    The seed: BasicSR draws one for ``manual_seed: null`` (or absent) on every rank, each its own, and seeds before
    applying ``--force_yml``. Here a drawn seed is rank 0's on every rank, a ``--force_yml manual_seed=N`` is the seed
    used, and the generators are seeded with ``manual_seed + rank`` as BasicSR does; ``args.seed_drawn`` says whether
    the seed was drawn (a resumed run then takes the one its training state keeps: ``resume.resume_seed``).
    """
    from basicsr.utils import set_random_seed
    from basicsr.utils.options import parse_options as basicsr_parse_options
    with _arguments(argv):
        opt, args = basicsr_parse_options(root_path, is_train=is_train)
    if opt['dist']:
        from allinone_basicsr.utils.heartbeat import set_collective_timeout
        set_collective_timeout(opt)
    args.seed_drawn = _given_seed(args) is None
    if args.seed_drawn:
        opt['manual_seed'] = _one_seed(opt, opt['manual_seed'] if opt.get('manual_seed') is not None
                                       else random.randint(1, 10000))
    if isinstance(opt.get('manual_seed'), int):  # else check_options names the key
        set_random_seed(opt['manual_seed'] + opt['rank'])  # the state BasicSR's seeding leaves, with this seed
    return opt, args
