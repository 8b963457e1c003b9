"""benchmarks/complexity.py: the SDPA handle counts attention (mmengine alone counts 0), on small modules."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
import complexity  # noqa: E402

from allinone_basicsr.archs.promptdsa_arch import PromptDSANet, SpatialSelfAttention  # noqa: E402


def test_sdpa_handle_counts_both_attention_products():
    from mmengine.analysis import FlopAnalyzer
    attn = SpatialSelfAttention(16, 2)
    analyzer = FlopAnalyzer(attn, (torch.rand(1, 16, 12, 10),))
    assert analyzer.by_operator().get('scaled_dot_product_attention', 0) == 0  # mmengine alone
    analyzer = FlopAnalyzer(attn, (torch.rand(1, 16, 12, 10),))
    analyzer.set_op_handle('aten::scaled_dot_product_attention', complexity.sdpa_macs)
    n = 12 * 10
    assert analyzer.by_operator()['scaled_dot_product_attention'] == 2 * n * n * 16  # q·kᵀ and weights·v


def test_analyse_counts_global_attention_of_a_whole_net():
    net = PromptDSANet(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=0, prompt_net=None)
    shapes = []
    for m in net.modules():
        if isinstance(m, SpatialSelfAttention):
            m.register_forward_hook(lambda mod, inp, out: shapes.append(inp[0].shape))
    with torch.no_grad():
        total, sdpa = complexity.analyse(net, 32)
    modules = sum(isinstance(m, SpatialSelfAttention) for m in net.modules())
    assert modules == 10 and len(shapes) % modules == 0  # (the tracer may run the forward more than once)
    assert sdpa == sum(2 * (s[2] * s[3])**2 * s[1] for s in shapes[:modules])  # 2·N²·C per attention
    assert total > sdpa
