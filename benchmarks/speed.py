#!/usr/bin/env python
"""Forward and train-step time and peak memory of every registered method (default configs).

Usage:
    python benchmarks/speed.py [--methods SymUNet DaAIR ...] [--train-size 128] [--infer-size 512] [--repeats 3]
                               [--channels-last] [--bf16] [--compile] [--threads 2] [--skip NAME:infer ...]
    python benchmarks/speed.py --compare-official PATH [PATH ...] [--rounds 4] [--train-size 128] [--threads 2]

Each measurement runs in its own subprocess (so peak memory is that of one method and one mode): a train step
(forward + L1 backward + AdamW step) on 1×3×T×T and a no-grad forward on 1×3×I×I, one warm-up then the best of
``--repeats`` runs (a shared machine's noise only ever adds time). Peak memory: CUDA's max allocated when on GPU,
else the process's peak RSS growth during the runs. Prints a markdown table. ``--channels-last`` puts the input and
every 4-D parameter and buffer in channels-last memory (5-D ones, PromptIR's and PromptDSANet's prompts, stay).

``--compare-official PATH``: PATH is a local checkout of the official SymUNet (WenlongJiao/SymUNet) or PromptIR
(va1shn9v/PromptIR) repository; the official code is imported from there for this benchmark only (it needs
``einops``; SymUNet's file also imports ``transformers``, which is replaced by an empty stand-in when it is not
installed, since plain SymUNet never uses it). Both archs are built with the paper config, ours loads the
official weights with ``strict=True`` and the outputs are compared; then, in one process, train steps and
forwards of the two alternate for ``--rounds`` rounds (the order flips every round) and the best time of each is
reported with the ratio ours / official. Peak memory of a train step is measured for each in its own subprocess.
"""
import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import types
from os import path as osp

BENCH = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(BENCH)
METHODS = ('SymUNet', 'SESymUNet', 'PromptIR', 'DaAIR', 'PromptDSANet')

# Official code: the file holding the arch inside a checkout, its class, and the paper config (the keywords of
# the official option files / training script).
OFFICIAL = {
    'SymUNet': dict(file='basicsr/models/archs/SymUNet_arch.py', cls='SymUNet',
                    config=dict(img_channel=3, width=48, middle_blk_num=8, enc_blk_nums=[4, 6, 6],
                                dec_blk_nums=[6, 6, 4], restormer_heads=[1, 2, 4], restormer_middle_heads=8,
                                ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias')),
    'PromptIR': dict(file='net/model.py', cls='PromptIR', config=dict(decoder=True)),
}

WORKER = r'''
import sys
sys.path.insert(0, {bench!r})
import speed
speed.{fn}({args!r})
'''


def official_method(checkout):
    """Which official repository ``checkout`` is (its method name), or a clear error."""
    for method, spec in OFFICIAL.items():
        if osp.isfile(osp.join(checkout, spec['file'])):
            return method
    wanted = ', '.join(f'{spec["file"]} ({m})' for m, spec in OFFICIAL.items())
    raise SystemExit(f'--compare-official {checkout}: not an official checkout; expected one of: {wanted}')


def load_official(checkout):
    """Import the official arch class from a checkout; returns (method, class, paper config)."""
    method = official_method(checkout)
    spec = OFFICIAL[method]
    if importlib.util.find_spec('transformers') is None:  # imported at the top of SymUNet_arch.py, unused by SymUNet
        stand_in = types.ModuleType('transformers')
        stand_in.CLIPModel = stand_in.CLIPImageProcessor = None
        sys.modules['transformers'] = stand_in
    module_spec = importlib.util.spec_from_file_location(f'official_{method.lower()}_arch',
                                                         osp.join(checkout, spec['file']))
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ModuleNotFoundError as err:
        raise SystemExit(f'the official {method} code imports {err.name}: pip install {err.name} '
                         '(needed by this benchmark only)') from err
    return method, getattr(module, spec['cls']), dict(spec['config'])


def _setup(threads):
    import warnings
    warnings.simplefilter('ignore')
    sys.path.insert(0, REPO)
    import torch
    torch.set_num_threads(threads)
    import allinone_basicsr  # noqa: F401  (registers the archs)
    return torch


def _step_fns(torch, net, x, target, opt, dev, bf16=False, run=None):
    run = run or net

    def train():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            net.train()
            opt.zero_grad(set_to_none=True)
            (run(x) - target).abs().mean().backward()
            opt.step()
        if dev.type == 'cuda':
            torch.cuda.synchronize()

    def infer():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            net.eval()
            with torch.no_grad():
                run(x)
        if dev.type == 'cuda':
            torch.cuda.synchronize()

    return train, infer


def to_channels_last(torch, net):
    """Every 4-D parameter and buffer of ``net`` in channels-last memory, in place. ``Module.to(memory_format=...)``
    also converts 5-D tensors and fails on them (PromptIR's and PromptDSANet's ``prompt_param``): those, and all
    others, are left as they are."""
    for tensor in list(net.parameters()) + list(net.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return net


def worker(args_json):
    """One measurement in this process: prints a JSON line (best seconds, median seconds, peak memory, device)."""
    import resource
    a = json.loads(args_json)
    torch = _setup(a['threads'])
    from basicsr.utils.registry import ARCH_REGISTRY
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if a.get('official'):
        _, cls, config = load_official(a['official'])
        net = cls(**config)
    else:
        kw = {'clip_model_name': 'openai/clip-vit-large-patch14'} if a['method'] == 'SESymUNet' else {}
        net = ARCH_REGISTRY.get(a['method'])(**kw)
    net = net.to(dev)
    if a['channels_last']:
        to_channels_last(torch, net)
    run = torch.compile(net) if a['compile'] else net
    x = torch.rand(1, 3, a['size'], a['size'], device=dev)
    if a['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    train, infer = _step_fns(torch, net, x, x, opt, dev, a['bf16'], run)
    step = train if a['mode'] == 'train' else infer
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    times = []
    for _ in range(a['repeats']):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda' else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
    print(json.dumps({'seconds': min(times), 'median_seconds': statistics.median(times), 'peak_mb': peak,
                      'device': dev.type}))


def compare_worker(args_json):
    """Official vs ours in this process: equal outputs, then interleaved rounds; prints a JSON line."""
    a = json.loads(args_json)
    torch = _setup(a['threads'])
    from basicsr.utils.registry import ARCH_REGISTRY
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    method, cls, config = load_official(a['official'])
    torch.manual_seed(0)
    nets = {'official': cls(**config).to(dev)}
    nets['ours'] = ARCH_REGISTRY.get(method)(**config).to(dev)
    nets['ours'].load_state_dict(nets['official'].state_dict(), strict=True)
    x = torch.rand(1, 3, a['size'], a['size'], device=dev)
    target = torch.rand_like(x)
    with torch.no_grad():
        max_diff = (nets['ours'].eval()(x) - nets['official'].eval()(x)).abs().max().item()
    steps = {}
    for name, net in nets.items():
        steps[name] = _step_fns(torch, net, x, target, torch.optim.AdamW(net.parameters(), 1e-4), dev)
        for fn in steps[name]:  # warm-up
            fn()
    times = {(name, mode): [] for name in nets for mode in ('train', 'infer')}
    for r in range(a['rounds']):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]
        for mode_index, mode in enumerate(('train', 'infer')):
            for name in order:
                t = time.perf_counter()
                steps[name][mode_index]()
                times[name, mode].append(time.perf_counter() - t)
    best = {f'{name}_{mode}': min(v) for (name, mode), v in times.items()}
    median = {f'{name}_{mode}_median': statistics.median(v) for (name, mode), v in times.items()}
    print(json.dumps(dict(method=method, max_diff=max_diff, device=dev.type, **best, **median)))


def _run(worker_name, params):
    code = WORKER.format(bench=BENCH, fn=worker_name, args=json.dumps(params))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ['failed without a message']
        return {'error': lines[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(method, mode, size, args, official=None):
    params = dict(method=method, mode=mode, size=size, repeats=args.repeats, threads=args.threads,
                  channels_last=args.channels_last, bf16=args.bf16, compile=args.compile, official=official)
    return _run('worker', params)


def compare_official(checkouts, args):
    """Markdown table of official vs ours for each checkout (time ratio and train-step peak memory)."""
    t = args.train_size
    rows = [f'| method | official train step {t}² (ms) | ours (ms) | ratio | official forward {t}² (ms) | '
            'ours (ms) | ratio | official train peak (MB) | ours (MB) | max output diff | '
            'ratio of medians (train, forward) |',
            '|---|---|---|---|---|---|---|---|---|---|---|']
    for checkout in checkouts:
        method = official_method(checkout)
        r = _run('compare_worker', dict(official=osp.abspath(checkout), size=t, rounds=args.rounds,
                                        threads=args.threads))
        if 'error' in r:
            raise SystemExit(f'{method} ({checkout}): {r["error"]}')
        mem_args = argparse.Namespace(**{**vars(args), 'repeats': 1, 'channels_last': False, 'bf16': False,
                                         'compile': False})
        mem = {name: measure(method, 'train', t, mem_args, official=osp.abspath(checkout) if name == 'official'
                             else None) for name in ('official', 'ours')}
        mem_cells = [f'{m["peak_mb"]:,.0f}' if 'peak_mb' in m else m['error'] for m in mem.values()]
        cells = [method]
        for mode in ('train', 'infer'):
            off, ours = r[f'official_{mode}'], r[f'ours_{mode}']
            cells += [f'{off * 1e3:.0f}', f'{ours * 1e3:.0f}', f'{ours / off:.2f}×']
        medians = ', '.join(f'{r[f"ours_{m}_median"] / r[f"official_{m}_median"]:.2f}×' for m in ('train', 'infer'))
        rows.append('| ' + ' | '.join(cells + mem_cells + [f'{r["max_diff"]:.1e}', medians]) + ' |')
        print(rows[-1], file=sys.stderr, flush=True)
    print(f'\n{args.threads} threads, best of {args.rounds} interleaved rounds in one process (after a warm-up; the '
          'last column compares the medians); peak memory: RSS growth of one train step, each in its own process\n')
    print('\n'.join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(METHODS))
    parser.add_argument('--train-size', type=int, default=128)
    parser.add_argument('--infer-size', type=int, default=512)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--bf16', action='store_true')
    parser.add_argument('--compile', action='store_true')
    parser.add_argument('--skip', nargs='*', default=[], help='METHOD:train or METHOD:infer measurements to skip')
    parser.add_argument('--compare-official', nargs='+', metavar='PATH',
                        help='local checkouts of the official SymUNet and/or PromptIR repositories')
    parser.add_argument('--rounds', type=int, default=4, help='interleaved rounds of --compare-official')
    args = parser.parse_args()
    if args.compare_official:
        return compare_official(args.compare_official, args)
    t, i = args.train_size, args.infer_size
    rows = [f'| method | train step {t}² (s) | train peak (MB) | forward {i}² (s) | forward peak (MB) |',
            '|---|---|---|---|---|']
    for method in args.methods:
        cells = [method]
        for mode, size in (('train', t), ('infer', i)):
            if f'{method}:{mode}' in args.skip:
                cells += ['not run', '–']
                continue
            r = measure(method, mode, size, args)
            cells += [r['error'], '–'] if 'error' in r else [f'{r["seconds"]:.2f}', f'{r["peak_mb"]:,.0f}']
        rows.append('| ' + ' | '.join(cells) + ' |')
        print(rows[-1], file=sys.stderr, flush=True)
    flags = [f for f, on in (('channels_last', args.channels_last), ('bf16', args.bf16),
                             ('compile', args.compile)) if on]
    print(f'\n{args.threads} threads, best of {args.repeats} after one warm-up; flags: {flags or "none"}\n')
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
