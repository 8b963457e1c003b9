"""Model complexity by mmengine's analysis (its "flops" are multiply-accumulates), with attention counted.

mmengine counts 0 for ``aten::scaled_dot_product_attention``; :func:`sdpa_macs` counts it as two matrix products (q·kᵀ
and weights·v): B·heads·N·M·(d_qk + d_v). Counted: convolutions, linear layers, matrix products, einsum, SDPA. Not
counted: element-wise ops, normalisation, softmax, activations, resizing.

Attention is counted, not computed: the trace runs the model once, and PromptDSANet's global pixel attention alone is
~9 TMACs at 256² (minutes on a CPU), which the count needs only the shapes of. While tracing (:func:`analyse`),
``F.scaled_dot_product_attention`` is replaced by :func:`attention_by_shape`'s stand-in, a custom op
(:data:`STAND_IN`) that takes q, k, v and returns zeros of the attention output's shape; a handle counts it with the
same ``sdpa_macs`` as the real op. The graph is otherwise the one the real op gives (same ops, same shapes), so the
figures are those of an analysis that computes the attention (``tests/test_benchmarks/test_complexity.py`` compares
every operator's count); an SDPA the stand-in does not reach (a caller that bound the function before) is computed
and counted as before.

Used by ``benchmarks/complexity.py``, the compare tool (``--macs``) and the table tool (GMACs columns).
"""
from collections import Counter
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from allinone_basicsr.utils.extras import require


def _mmengine_analysis():
    """mmengine.analysis (the ``[complexity]`` extra), imported on first use."""
    require('mmengine.analysis.jit_handles', 'mmengine', 'complexity', 'counting MACs (utils.complexity)')
    return require('mmengine.analysis', 'mmengine', 'complexity', 'counting MACs (utils.complexity)')


def sdpa_macs(inputs, outputs):
    """MACs of ``scaled_dot_product_attention(q, k, v)``: q·kᵀ plus weights·v."""
    get_shape = _mmengine_analysis().jit_handles.get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    n, d, m, dv = q[-2], q[-1], k[-2], v[-1]
    return batch * n * m * (d + dv)


STAND_IN = 'allinone_basicsr::sdpa_shape'


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
    FlopAnalyzer = _mmengine_analysis().FlopAnalyzer
    result = FlopAnalyzer(net.eval(), (torch.rand(1, 3, size, size),))
    result.set_op_handle('aten::scaled_dot_product_attention', sdpa_macs, STAND_IN, stand_in_macs)
    result.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return result


def analyse(net, size):
    """(total MACs, SDPA MACs) of one 1×3×size×size forward, attention counted by shape (see the module docstring)."""
    with attention_by_shape():
        result = analyzer(net, size)
        total = result.total()
    return total, result.by_operator().get('scaled_dot_product_attention', 0)


def frozen_parameters(net):
    count = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    if hasattr(net, 'clip_tokenizer'):
        count += net.clip_tokenizer().num_parameters()
    return count
