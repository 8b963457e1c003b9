#!/usr/bin/env python
"""Forward and train-step time and peak memory of every registered method (default configs).

Usage:
    python benchmarks/speed.py [--methods SymUNet DaAIR ...] [--train-size 128] [--infer-size 512] [--repeats 3]
                               [--channels-last] [--bf16] [--compile] [--threads 2] [--skip NAME:infer ...]

Each measurement runs in its own subprocess (so peak memory is that of one method and one mode): a train step
(forward + L1 backward + AdamW step) on 1×3×T×T and a no-grad forward on 1×3×I×I, one warm-up then the median of
``--repeats`` runs. Peak memory: CUDA's max allocated when on GPU, else the process's peak RSS growth during the
runs. Prints a markdown table.
"""
import argparse
import json
import subprocess
import sys
from os import path as osp

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
METHODS = ('SymUNet', 'SESymUNet', 'PromptIR', 'DaAIR', 'PromptDSANet')

WORKER = r'''
import json, resource, statistics, sys, time, warnings
warnings.simplefilter('ignore')
sys.path.insert(0, {repo!r})
import torch, allinone_basicsr
from basicsr.utils.registry import ARCH_REGISTRY
a = json.loads({args!r})
torch.set_num_threads(a['threads'])
dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
kw = {{'clip_model_name': 'openai/clip-vit-large-patch14'}} if a['method'] == 'SESymUNet' else {{}}
net = ARCH_REGISTRY.get(a['method'])(**kw).to(dev)
fmt = torch.channels_last if a['channels_last'] else torch.contiguous_format
net = net.to(memory_format=fmt)
run = torch.compile(net) if a['compile'] else net
size = a['size']
x = torch.rand(1, 3, size, size, device=dev).to(memory_format=fmt)
opt = torch.optim.AdamW(net.parameters(), 1e-4)
def step():
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a['bf16']):
        if a['mode'] == 'train':
            net.train(); opt.zero_grad(); (run(x) - x).abs().mean().backward(); opt.step()
        else:
            net.eval()
            with torch.no_grad(): run(x)
    if dev.type == 'cuda': torch.cuda.synchronize()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
step()
times = []
for _ in range(a['repeats']):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == 'cuda'
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
print(json.dumps({{'seconds': statistics.median(times), 'peak_mb': peak, 'device': dev.type}}))
'''


def measure(method, mode, size, args):
    params = dict(method=method, mode=mode, size=size, repeats=args.repeats, threads=args.threads,
                  channels_last=args.channels_last, bf16=args.bf16, compile=args.compile)
    code = WORKER.format(repo=REPO, args=json.dumps(params))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if proc.returncode:
        return {'error': proc.stderr.strip().splitlines()[-1][:80]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    args = parser.parse_args()
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
    print(f'\n{args.threads} threads, median of {args.repeats} after one warm-up; flags: {flags or "none"}\n')
    print('\n'.join(rows))


if __name__ == '__main__':
    main()
