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

Attention is counted, not computed: the trace runs the model once, and PromptDSANet's global pixel attention alone
is ~9 TMACs at 256² (minutes on a CPU), which the count needs only the shapes of. While tracing (:func:`analyse`),
``F.scaled_dot_product_attention`` is replaced by :func:`attention_by_shape`'s stand-in, a custom op
(``aio_bench::sdpa_shape``) that takes q, k, v and returns zeros of the attention output's shape; a handle counts it
with the same ``sdpa_macs`` as the real op. The graph is otherwise the one the real op gives (same ops, same shapes),
so the figures are the same as those of ``allinone_basicsr.utils.complexity.analyse`` (tests/test_benchmarks/
test_complexity.py compares every operator's count); an SDPA the stand-in does not reach (a caller that bound the
function before) is computed and counted as before.
"""
import argparse
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import allinone_basicsr  # noqa: E402,F401
from allinone_basicsr.utils.complexity import frozen_parameters, sdpa_macs  # noqa: E402

from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

METHODS = ('SymUNet', 'SESymUNet', 'PromptIR', 'DaAIR', 'PromptDSANet')
DEFAULTS = {'SESymUNet': {'clip_model_name': 'openai/clip-vit-large-patch14'}}  # random CLIP: same MACs and size
STAND_IN = 'aio_bench::sdpa_shape'


@torch.library.custom_op(STAND_IN, mutates_args=())
def sdpa_shape(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Zeros of the shape, dtype and device of ``scaled_dot_product_attention(query, key, value)``: one traced node
    with the real op's q, k, v inputs, so ``sdpa_macs`` counts it as it counts the real op."""
    return query.new_zeros(query.shape[:-1] + value.shape[-1:])


@sdpa_shape.register_fake
def _(query, key, value):
    return query.new_empty(query.shape[:-1] + value.shape[-1:])


def stand_in_macs(inputs, outputs):
    """The stand-in's MACs under the real op's name, so ``by_operator()['scaled_dot_product_attention']`` holds both."""
    return Counter({'scaled_dot_product_attention': sdpa_macs(inputs, outputs)})


@contextmanager
def attention_by_shape():
    """While active, ``F.scaled_dot_product_attention`` under a jit trace is the stand-in (outside a trace, and for
    calls with ``attn_mask`` / ``dropout_p`` / ``is_causal``, it is the real function)."""
    real = F.scaled_dot_product_attention

    def stand_in(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *args, **kwargs):
        if torch.jit.is_tracing() and attn_mask is None and not dropout_p and not is_causal:
            return sdpa_shape(query, key, value)
        return real(query, key, value, attn_mask, dropout_p, is_causal, *args, **kwargs)

    F.scaled_dot_product_attention = stand_in
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


def analyzer(net, size):
    """mmengine's FlopAnalyzer of ``net`` on one 1×3×size×size input, with the SDPA handle and the stand-in's;
    it traces on first use, so use it inside :func:`attention_by_shape`."""
    from mmengine.analysis import FlopAnalyzer
    result = FlopAnalyzer(net.eval(), (torch.rand(1, 3, size, size),))
    result.set_op_handle('aten::scaled_dot_product_attention', sdpa_macs, STAND_IN, stand_in_macs)
    result.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return result


def analyse(net, size):
    """(total MACs, SDPA MACs) as ``allinone_basicsr.utils.complexity.analyse`` counts them, attention counted by shape."""
    with attention_by_shape():
        result = analyzer(net, size)
        total = result.total()
    return total, result.by_operator().get('scaled_dot_product_attention', 0)


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
