"""Model complexity by mmengine's analysis, with scaled_dot_product_attention counted (mmengine counts it as 0).

Used by ``benchmarks/complexity.py`` and ``allinone_basicsr.tools.compare --macs``.
"""
import torch


def sdpa_macs(inputs, outputs):
    """MACs of ``scaled_dot_product_attention(q, k, v)``: q·kᵀ plus weights·v."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    n, d, m, dv = q[-2], q[-1], k[-2], v[-1]
    return batch * n * m * (d + dv)


def analyse(net, size):
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(net.eval(), (torch.rand(1, 3, size, size),))
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_macs)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analyzer.total(), analyzer.by_operator().get('scaled_dot_product_attention', 0)


def frozen_parameters(net):
    count = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    if hasattr(net, 'clip_tokenizer'):
        count += net.clip_tokenizer().num_parameters()
    return count
