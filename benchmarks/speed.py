#!/usr/bin/env python
"""Forward and train-step time and peak memory of every registered method (default configs).

Usage:
    python benchmarks/speed.py [--methods SymUNet DaAIR ...] [--train-size 128] [--infer-size 512] [--repeats 3]
                               [--channels-last] [--bf16] [--compile] [--threads 2] [--skip NAME:infer ...]
                               [--variants fp32 bf16 compiled] [--rounds 4] [--config KEY=VALUE ...]
    python benchmarks/speed.py --compare-official PATH [PATH ...] [--rounds 4] [--train-size 128] [--threads 2]
                               [--variants fp32 bf16 compiled] [--config KEY=VALUE ...]

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

Train-step variants (``--variants``, default ``fp32 bf16 compiled``; ``none`` skips them): a second table gives our
train step in float32, in bfloat16 mixed precision (``torch.autocast(dtype=torch.bfloat16)`` around the forward and
the loss, the loss reduced in float32, float32 master weights and AdamW) and compiled (``torch.compile`` of the
float32 model; ``compiled-bf16`` is both), each with its own copy of the weights and optimizer, timed interleaved
in one process (best and median of ``--rounds`` rounds after a warm-up, which is where the compilation happens),
as ratios to our float32 step and, with ``--compare-official``, to the official float32 step timed in the same
rounds. A variant that cannot run says why in its cell (e.g. ``torch.compile`` on CPU without a C++ compiler).

``--config KEY=VALUE`` overrides keywords of the configs (values are JSON, else strings), for quick checks with
small networks; the tables then no longer show the paper configs.
"""
import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from os import path as osp

BENCH = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(BENCH)
sys.path.insert(0, REPO)  # run from a source checkout

from allinone_basicsr.utils.official import OFFICIAL, OfficialCodeError  # noqa: E402
from allinone_basicsr.utils.official import load_official as _load_official  # noqa: E402
from allinone_basicsr.utils.official import official_method as _official_method  # noqa: E402
from allinone_basicsr.utils.timing import compile_unavailable  # noqa: E402,F401
from allinone_basicsr.utils.timing import to_channels_last  # noqa: E402,F401
from allinone_basicsr.utils.timing import interleaved as _interleaved  # noqa: E402
from allinone_basicsr.utils.timing import step_fns as _step_fns  # noqa: E402

METHODS = ('SymUNet', 'SESymUNet', 'PromptIR', 'DaAIR', 'PromptDSANet')
# train-step variants: name -> (bfloat16 autocast, torch.compile)
VARIANTS = {'fp32': (False, False), 'bf16': (True, False), 'compiled': (False, True), 'compiled-bf16': (True, True)}
DEFAULT_VARIANTS = ('fp32', 'bf16', 'compiled')

WORKER = r'''
import sys
sys.path.insert(0, {bench!r})
import speed
speed.{fn}({args!r})
'''


def official_method(checkout):
    try:
        return _official_method(checkout)
    except OfficialCodeError as err:
        raise SystemExit(f'--compare-official {err}') from None


def load_official(checkout):
    """Import the official arch class from a checkout; returns (method, class, paper config)."""
    try:
        return _load_official(checkout)
    except OfficialCodeError as err:
        raise SystemExit(str(err)) from None


def _setup(threads):
    import warnings
    warnings.simplefilter('ignore')
    sys.path.insert(0, REPO)
    import torch
    torch.set_num_threads(threads)
    import allinone_basicsr  # noqa: F401  (registers the archs)
    return torch


def _reason(err, limit=110):
    """A short one-line reason for a table cell."""
    first = (str(err).strip().splitlines() or [''])[0]
    text = f'{type(err).__name__}: {first}' if first else type(err).__name__
    text = text.replace('|', '/')
    return text if len(text) <= limit else text[:limit - 1] + '…'


def variant_steps(torch, net, x, target, dev, variants):
    """Train steps of ``net`` per variant (``VARIANTS``), each on its own copy of the weights (float32 uses ``net``)
    with its own AdamW, warmed up (compiled ones twice: the compilation, then one settled step); returns (steps,
    errors): a variant that cannot run has its reason in ``errors`` instead."""
    steps, errors = {}, {}
    for name in variants:
        bf16, compiled = VARIANTS[name]
        model = net if name == 'fp32' else copy.deepcopy(net)
        reason = compile_unavailable(torch, dev) if compiled else None
        if reason:
            errors[name] = reason
            continue
        try:
            run = torch.compile(model) if compiled else model
            train, _ = _step_fns(torch, model, x, target, torch.optim.AdamW(model.parameters(), 1e-4), dev, bf16, run)
            for _ in range(2 if compiled else 1):  # warm-up (the first call compiles)
                train()
        except Exception as err:  # any failure of a variant is reported in its cell
            errors[name] = ('compile failed: ' if compiled else 'failed: ') + _reason(err)
            continue
        steps[name] = train
    return steps, errors


def _build(registry, a):
    """The network a worker measures: the official arch (paper config) or ours (default config, or the paper config
    of ``a['paper_config']``), with ``a['config']`` overrides."""
    overrides = a.get('config') or {}
    if a.get('official'):
        _, cls, config = load_official(a['official'])
        return cls(**{**config, **overrides})
    kw = {'clip_model_name': 'openai/clip-vit-large-patch14'} if a['method'] == 'SESymUNet' else {}
    return registry.get(a['method'])(**{**kw, **(a.get('paper_config') or {}), **overrides})


def worker(args_json):
    """One measurement in this process: prints a JSON line (best seconds, median seconds, peak memory, device)."""
    import resource
    a = json.loads(args_json)
    torch = _setup(a['threads'])
    from basicsr.utils.registry import ARCH_REGISTRY
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    net = _build(ARCH_REGISTRY, a).to(dev)
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
    """Official vs ours in this process: equal outputs, then interleaved rounds of the official float32 train step
    and forward, ours the same, and our train-step variants; prints a JSON line."""
    a = json.loads(args_json)
    torch = _setup(a['threads'])
    from basicsr.utils.registry import ARCH_REGISTRY
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    method, cls, config = load_official(a['official'])
    config.update(a.get('config') or {})
    torch.manual_seed(0)
    nets = {'official': cls(**config).to(dev)}
    nets['ours'] = ARCH_REGISTRY.get(method)(**config).to(dev)
    nets['ours'].load_state_dict(nets['official'].state_dict(), strict=True)
    x = torch.rand(1, 3, a['size'], a['size'], device=dev)
    target = torch.rand_like(x)
    with torch.no_grad():
        max_diff = (nets['ours'].eval()(x) - nets['official'].eval()(x)).abs().max().item()
    fns = {}
    for name, net in nets.items():
        fns[f'{name}_train'], fns[f'{name}_infer'] = _step_fns(
            torch, net, x, target, torch.optim.AdamW(net.parameters(), 1e-4), dev)
        for mode in ('train', 'infer'):  # warm-up
            fns[f'{name}_{mode}']()
    variants = [v for v in a.get('variants', ()) if v != 'fp32']
    steps, errors = variant_steps(torch, nets['ours'], x, target, dev, variants)
    fns.update({f'ours_{name}_train': fn for name, fn in steps.items()})
    times = _interleaved(fns, a['rounds'], time.perf_counter)
    best = {name: min(v) for name, v in times.items()}
    median = {f'{name}_median': statistics.median(v) for name, v in times.items()}
    print(json.dumps(dict(method=method, max_diff=max_diff, device=dev.type, errors=errors, **best, **median)))


def variants_worker(args_json):
    """Our train-step variants of one method, interleaved in this process; prints a JSON line."""
    a = json.loads(args_json)
    torch = _setup(a['threads'])
    from basicsr.utils.registry import ARCH_REGISTRY
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.manual_seed(0)
    net = _build(ARCH_REGISTRY, a).to(dev)
    x = torch.rand(1, 3, a['size'], a['size'], device=dev)
    if a.get('channels_last'):
        to_channels_last(torch, net)
        x = x.contiguous(memory_format=torch.channels_last)
    steps, errors = variant_steps(torch, net, x, torch.rand_like(x), dev, a['variants'])
    times = _interleaved(steps, a['rounds'], time.perf_counter)
    print(json.dumps(dict(errors=errors, device=dev.type,
                          best={name: min(v) for name, v in times.items()},
                          median={name: statistics.median(v) for name, v in times.items()})))


def _run(worker_name, params):
    code = WORKER.format(bench=BENCH, fn=worker_name, args=json.dumps(params))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or ['failed without a message']
        return {'error': lines[-1][:160]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(method, mode, size, args, official=None, paper_config=None):
    params = dict(method=method, mode=mode, size=size, repeats=args.repeats, threads=args.threads,
                  channels_last=args.channels_last, bf16=args.bf16, compile=args.compile, official=official,
                  config=getattr(args, 'config', None) or {}, paper_config=paper_config)
    return _run('worker', params)


def _ratio(num, den):
    return f'{num / den:.2f}×'


def _best_median(best, median, name, base):
    """'best× (median×)': the ratio of the best times and of the medians."""
    return f'{_ratio(best[name], best[base])} ({_ratio(median[name], median[base])})'


def variants_table(rows, variants, official=False):
    """Markdown table of the train-step variants; ``rows`` are (method, best, median, errors) with times keyed by
    variant (and 'official' when ``official``)."""
    others = [v for v in variants if v != 'fp32']
    head = ['method'] + (['official fp32 (ms)'] if official else []) + ['ours fp32 (ms)']
    if official:
        head.append('ours fp32 ÷ official fp32')
    for v in others:
        head += [f'ours {v} (ms)', f'{v} ÷ ours fp32'] + ([f'{v} ÷ official fp32'] if official else [])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for method, best, median, errors in rows:
        cells = [method] + ([f'{best["official"] * 1e3:.0f}'] if official else [])
        if 'fp32' in best:
            cells.append(f'{best["fp32"] * 1e3:.0f}')
        else:
            cells.append(errors.get('fp32', 'not run'))
        if official:
            cells.append(_best_median(best, median, 'fp32', 'official') if 'fp32' in best else '–')
        for v in others:
            n_ratio = 2 if official else 1
            if v not in best or 'fp32' not in best:
                cells += [errors.get(v, 'not run')] + ['–'] * n_ratio
                continue
            cells += [f'{best[v] * 1e3:.0f}', _best_median(best, median, v, 'fp32')]
            if official:
                cells.append(_best_median(best, median, v, 'official'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def compare_official(checkouts, args):
    """Markdown tables of official vs ours for each checkout (time ratio and train-step peak memory), then our
    train-step variants against both float32 steps."""
    t = args.train_size
    rows = [f'| method | official train step {t}² (ms) | ours (ms) | ratio | official forward {t}² (ms) | '
            'ours (ms) | ratio | official train peak (MB) | ours (MB) | max output diff | '
            'ratio of medians (train, forward) |',
            '|---|---|---|---|---|---|---|---|---|---|---|']
    variant_rows = []
    for checkout in checkouts:
        method = official_method(checkout)
        r = _run('compare_worker', dict(official=osp.abspath(checkout), size=t, rounds=args.rounds,
                                        threads=args.threads, variants=args.variants, config=args.config))
        if 'error' in r:
            raise SystemExit(f'{method} ({checkout}): {r["error"]}')
        mem_args = argparse.Namespace(**{**vars(args), 'repeats': 1, 'channels_last': False, 'bf16': False,
                                         'compile': False})
        paper = OFFICIAL[method]['config']
        mem = {name: measure(method, 'train', t, mem_args, official=osp.abspath(checkout) if name == 'official'
                             else None, paper_config=paper) for name in ('official', 'ours')}
        mem_cells = [f'{m["peak_mb"]:,.0f}' if 'peak_mb' in m else m['error'] for m in mem.values()]
        cells = [method]
        for mode in ('train', 'infer'):
            off, ours = r[f'official_{mode}'], r[f'ours_{mode}']
            cells += [f'{off * 1e3:.0f}', f'{ours * 1e3:.0f}', f'{ours / off:.2f}×']
        medians = ', '.join(f'{r[f"ours_{m}_median"] / r[f"official_{m}_median"]:.2f}×' for m in ('train', 'infer'))
        rows.append('| ' + ' | '.join(cells + mem_cells + [f'{r["max_diff"]:.1e}', medians]) + ' |')
        print(rows[-1], file=sys.stderr, flush=True)
        best = {'official': r['official_train'], 'fp32': r['ours_train']}
        median = {'official': r['official_train_median'], 'fp32': r['ours_train_median']}
        for v in args.variants:
            if f'ours_{v}_train' in r:
                best[v], median[v] = r[f'ours_{v}_train'], r[f'ours_{v}_train_median']
        variant_rows.append((method, best, median, r.get('errors', {})))
    print(f'\n{args.threads} threads, best of {args.rounds} interleaved rounds in one process (after a warm-up; the '
          'last column compares the medians); peak memory: RSS growth of one train step, each in its own process\n')
    print('\n'.join(rows))
    if len(args.variants) > 1:
        print(f'\nTrain step {t}², our variants against our float32 step and the official float32 step, all '
              f'interleaved in the same {args.rounds} rounds; ratios: best (median)\n')
        print('\n'.join(variants_table(variant_rows, args.variants, official=True)))


def _config_item(text):
    """KEY=VALUE with a JSON value (else the string)."""
    key, sep, value = text.partition('=')
    if not sep or not key:
        raise argparse.ArgumentTypeError(f'{text!r} is not KEY=VALUE')
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _variant_list(values):
    """--variants: 'none' → [], else the named variants with fp32 first (the base of the ratios)."""
    if values == ['none']:
        return []
    unknown = [v for v in values if v not in VARIANTS]
    if unknown:
        raise SystemExit(f'--variants: unknown {unknown}; choose from {list(VARIANTS)} or none')
    return ['fp32'] + [v for v in dict.fromkeys(values) if v != 'fp32']


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
    parser.add_argument('--rounds', type=int, default=4, help='interleaved rounds (--compare-official, --variants)')
    parser.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), metavar='VARIANT',
                        help=f'train-step variants timed side by side: {list(VARIANTS)}, or none')
    parser.add_argument('--config', nargs='+', type=_config_item, default=[], metavar='KEY=VALUE',
                        help='override config keywords (JSON values), for quick checks with small networks')
    args = parser.parse_args()
    args.variants = _variant_list(args.variants)
    args.config = dict(args.config)
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
    if len(args.variants) > 1:
        variant_rows = []
        for method in args.methods:
            if f'{method}:train' in args.skip:
                continue
            r = _run('variants_worker', dict(method=method, size=t, rounds=args.rounds, threads=args.threads,
                                             variants=args.variants, channels_last=args.channels_last,
                                             config=args.config))
            if 'error' in r:
                r = dict(best={}, median={}, errors={'fp32': r['error']})
            variant_rows.append((method, r['best'], r['median'], r['errors']))
            print(variants_table(variant_rows[-1:], args.variants)[-1], file=sys.stderr, flush=True)
        print(f'\nTrain step {t}², variants interleaved in one process per method, best of {args.rounds} rounds '
              f'after a warm-up{" (channels_last)" if args.channels_last else ""}; ratios: best (median)\n')
        print('\n'.join(variants_table(variant_rows, args.variants)))


if __name__ == '__main__':
    main()
