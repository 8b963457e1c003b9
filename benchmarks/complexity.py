#!/usr/bin/env python
"""Parameters (trainable / frozen) and MACs of every registered method, by mmengine's complexity analysis.

Usage:
    python benchmarks/complexity.py [--sizes 256 224] [--methods SymUNet PromptIR ...] [--out complexity.md]

Each method is built with its default (paper) configuration from BasicSR's ARCH_REGISTRY. MACs come from
``mmengine.analysis.FlopAnalyzer`` (its "flops" are multiply-accumulates) on one 1×3×S×S input, with one addition:
mmengine counts 0 for ``aten::scaled_dot_product_attention``, so a handle counts it as two matrix products
(q·kᵀ and weights·v): B·heads·N·M·(d_qk + d_v). Counted: convolutions, linear layers, matrix products, einsum,
SDPA. Not counted: element-wise ops, normalisation, softmax, activations, resizing. Frozen parameters: SE-SymUNet's
CLIP tower (outside the module tree; its forward is traced, so its MACs are counted).

Attention is counted by its shapes, not computed (``allinone_basicsr.utils.complexity``, which the compare and
table tools use too).
"""
import argparse
import sys
import time
import warnings
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

import allinone_basicsr  # noqa: E402,F401
from allinone_basicsr.utils.complexity import analyse, frozen_parameters  # noqa: E402

from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

METHODS = ('SymUNet', 'SESymUNet', 'PromptIR', 'DaAIR', 'PromptDSANet')
DEFAULTS = {'SESymUNet': {'clip_model_name': 'openai/clip-vit-large-patch14'}}  # random CLIP: same MACs and size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[256, 224])
    parser.add_argument('--methods', nargs='+', default=list(METHODS))
    parser.add_argument('--out', default=None, help='also write the markdown table to this file')
    args = parser.parse_args()
    warnings.simplefilter('ignore')
    header = ['method', 'trainable params', 'frozen params'] + [f'GMACs {s}²' for s in args.sizes] + \
        [f'of which SDPA {s}²' for s in args.sizes]
    rows = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name in args.methods:
        start = time.time()
        net = ARCH_REGISTRY.get(name)(**DEFAULTS.get(name, {}))
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        with torch.no_grad():
            results = [analyse(net, s) for s in args.sizes]
        cells = [name, f'{trainable / 1e6:.2f}M', f'{frozen_parameters(net) / 1e6:.2f}M']
        cells += [f'{total / 1e9:,.1f}' for total, _ in results] + [f'{sdpa / 1e9:,.1f}' for _, sdpa in results]
        rows.append('| ' + ' | '.join(cells) + ' |')
        print(rows[-1], f'({time.time() - start:.0f} s)', file=sys.stderr, flush=True)
    table = '\n'.join(rows)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')


if __name__ == '__main__':
    main()
