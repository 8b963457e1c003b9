"""The GPU check's command line (``python -m allinone_basicsr.tools.gpu_check``, ``allinone-gpu-check``)."""
import argparse
import os
import shutil
import sys
import tempfile
import time
from os import path as osp

import torch

from allinone_basicsr.tools.common import UsageError, run
from allinone_basicsr.tools.gpu_check.common import DEFAULT_VARIANTS, METHODS, SECTIONS, Settings, parse_variant
from allinone_basicsr.tools.gpu_check.report import Report, environment
from allinone_basicsr.tools.gpu_check.runs import run_official, run_restore, run_resume
from allinone_basicsr.tools.gpu_check.training import run_methods, run_syncs
from allinone_basicsr.utils.logs import basicsr_log_to


def _parser():
    doc = sys.modules['allinone_basicsr.tools.gpu_check'].__doc__.split('\n\n')  # the package's docstring
    parser = argparse.ArgumentParser(prog='allinone-gpu-check', description=doc[0],
                                     epilog='\n\n'.join(doc[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (default: cuda)')
    parser.add_argument('--out', default='gpu_check', help='folder of the report (default: gpu_check)')
    parser.add_argument('--tiny', action='store_true', help='smoke-size networks, --batch 4 --size 32 (for CPUs)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS), metavar='SECTION',
                        help=f'sections to run (default: all, in this order: {" ".join(SECTIONS)})')
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS), metavar='METHOD',
                        help=f'methods of the methods and compile sections (default: {" ".join(METHODS)})')
    parser.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), metavar='VARIANT',
                        help=f'variants of the methods section (default: {" ".join(DEFAULT_VARIANTS)}); fp32 always '
                        'runs first, as the reference of the others; +compile variants form the compile section')
    parser.add_argument('--batch', type=int, default=None, help='batch of the methods section (default: 8, '
                        "PromptDSANet its recipe's; tiny: 4); given, it applies to every method")
    parser.add_argument('--size', type=int, default=None, help="patch size (default: 128, PromptDSANet its recipe's; "
                        'tiny: 32); given, it applies to every method')
    parser.add_argument('--steps', type=int, default=20, help='training steps per variant (default: 20)')
    parser.add_argument('--resume-iters', type=int, default=None, help='iterations of the resume runs, even '
                        '(default: 8; tiny: 4)')
    parser.add_argument('--official-symunet', metavar='DIR', help='a checkout of WenlongJiao/SymUNet')
    parser.add_argument('--official-promptir', metavar='DIR', help='a checkout of va1shn9v/PromptIR')
    parser.add_argument('--compile-backend', default='inductor',
                        help="torch.compile backend of the compile section (default: inductor; aot_eager traces and "
                        "differentiates the same graphs without generating kernels, which on a 2-core CPU takes "
                        'minutes per method)')
    parser.add_argument('--work-dir', default=None, help='folder for the data and runs (default: a temporary one, '
                        'removed at the end)')
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    variants = [parse_variant(v) for v in dict.fromkeys(args.variants)]
    variants = [parse_variant('fp32')] + [v for v in variants if v.name != 'fp32']
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda: torch.cuda.is_available() is False here (use --device cpu --tiny)')
    if device.type not in ('cuda', 'cpu'):
        raise UsageError(f'--device {args.device}: expected cuda, cuda:N or cpu')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    batch = args.batch or (4 if args.tiny else 8)
    size = args.size or (32 if args.tiny else 128)
    resume_iters = args.resume_iters or (4 if args.tiny else 8)
    if args.steps < 6 or resume_iters < 2 or resume_iters % 2:
        raise UsageError('--steps must be at least 6 (three first and three last losses); --resume-iters even, >= 2')
    for key, path in (('--official-symunet', args.official_symunet), ('--official-promptir', args.official_promptir)):
        if path and not osp.isdir(path):
            raise UsageError(f'{key} {path}: not a folder')
    work = args.work_dir or tempfile.mkdtemp(prefix='allinone_gpu_check_')
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    log = osp.join(args.out, 'gpu_check.log')
    if osp.exists(log):
        os.remove(log)
    settings = Settings(device, args.tiny, batch, size, args.steps, osp.abspath(work), args.compile_backend,
                        sized=args.batch is not None or args.size is not None)
    report = Report(args.out, environment(device, argv, args.tiny))
    print(f'GPU check on {report.env["device_name"]}, torch {torch.__version__}; report: {args.out}/gpu_check.md',
          flush=True)
    eager = [v for v in variants if not v.compile]
    compiled = [v for v in variants if v.compile]
    losses = {}
    start = time.time()
    try:
        with basicsr_log_to(log):
            for section in args.sections:
                if section == 'compile' and not compiled:
                    continue
                with report.section(section):
                    if section == 'methods':
                        run_methods(report, settings, args.methods, eager, losses)
                    elif section == 'syncs':
                        run_syncs(report, settings)
                    elif section == 'resume':
                        run_resume(report, settings, resume_iters)
                    elif section == 'restore':
                        run_restore(report, settings)
                    elif section == 'official':
                        run_official(report, settings, {'SymUNet': args.official_symunet,
                                                        'PromptIR': args.official_promptir})
                    elif section == 'compile':
                        run_methods(report, settings, args.methods, compiled, losses)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    failed = [s['section'] for s in report.sections if s['status'] == 'FAIL']
    print(f'GPU check: {"FAIL (" + ", ".join(failed) + ")" if failed else "PASS"} in {time.time() - start:.0f} s; '
          f'report: {osp.join(args.out, "gpu_check.md")}', flush=True)
    return 1 if failed else 0


def cli(argv=None):
    run(main, 'gpu_check', argv)
