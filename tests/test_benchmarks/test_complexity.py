"""benchmarks/complexity.py: the SDPA handle counts attention (mmengine alone counts 0), on small modules; attention
counted by shape (not computed while tracing) gives exactly the figures of the computed attention."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'benchmarks'))
import complexity  # noqa: E402

from allinone_basicsr.archs.promptdsa_arch import PromptDSANet, SpatialSelfAttention  # noqa: E402
from allinone_basicsr.utils import complexity as measures  # noqa: E402

from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402


def test_sdpa_handle_counts_both_attention_products():
    from mmengine.analysis import FlopAnalyzer
    attn = SpatialSelfAttention(16, 2)
    analyzer = FlopAnalyzer(attn, (torch.rand(1, 16, 12, 10),))
    assert analyzer.by_operator().get('scaled_dot_product_attention', 0) == 0  # mmengine alone
    analyzer = FlopAnalyzer(attn, (torch.rand(1, 16, 12, 10),))
    analyzer.set_op_handle('aten::scaled_dot_product_attention', measures.sdpa_macs)
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


# ------------------------------------------------------------------ attention counted by shape (issue 20): same figures

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions on a shared machine: one intra-op thread is several times faster than spinning two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _old_way(net, size):
    """The analysis with the real attention computed while tracing (mmengine plus the SDPA handle only): its
    (total, SDPA) and every operator's and module's count."""
    from mmengine.analysis import FlopAnalyzer
    analyzer = FlopAnalyzer(net.eval(), (torch.rand(1, 3, size, size),))
    analyzer.set_op_handle('aten::scaled_dot_product_attention', measures.sdpa_macs)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = analyzer.total()
    return (total, analyzer.by_operator().get('scaled_dot_product_attention', 0)), analyzer.by_operator(), \
        analyzer.by_module()


def _fast_way(net, size):
    with measures.attention_by_shape():
        analyzer = measures.analyzer(net, size)
        analyzer.total()
    return complexity.analyse(net, size), analyzer.by_operator(), analyzer.by_module()


TINY_CLIP = {'image_size': 28, 'patch_size': 7, 'width': 64, 'layers': 2, 'head_width': 32}
TINY_NETS = {
    'PromptDSANet global': lambda: PromptDSANet(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                                prompt_net='resnet18', heads=[1, 2, 4, 8]),
    'PromptDSANet window': lambda: PromptDSANet(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=0,
                                                prompt_net=None, spatial_window=8),
    'SESymUNet': lambda: ARCH_REGISTRY.get('SESymUNet')(
        width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1],
        cross_attn_inner_dims=[32, 32, 64], cross_attn_heads=[1, 2, 4], middle_cross_attn_inner_dim=64,
        middle_cross_attn_heads=4, patch_sizes=[4, 4, 2], middle_patch_size=2, clip_vision_cfg=TINY_CLIP),
    'SymUNet': lambda: ARCH_REGISTRY.get('SymUNet')(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1,
                                                    dec_blk_nums=[1, 1, 1]),
}


@pytest.mark.filterwarnings('ignore::UserWarning')
@pytest.mark.parametrize('name', sorted(TINY_NETS))
@pytest.mark.parametrize('size', [24, 32])
def test_attention_by_shape_gives_the_figures_of_the_computed_attention(name, size):
    """The benchmark's figures (total, SDPA) and every operator's and module's count equal those of the old way,
    which computes the attention; exactly (integers), on tiny networks where the old way is cheap."""
    torch.manual_seed(0)
    net = TINY_NETS[name]()
    with torch.no_grad():
        (old, old_ops, old_modules), (new, new_ops, new_modules) = _old_way(net, size), _fast_way(net, size)
    assert new == old
    assert new_ops == old_ops
    assert new_modules == old_modules
    if name.startswith(('PromptDSANet', 'SESymUNet')):
        assert new[1] > 0  # there is attention to count


@pytest.mark.filterwarnings('ignore:.*torch.jit.trace. is deprecated', 'ignore::torch.jit.TracerWarning')
def test_stand_in_replaces_the_attention_only_while_tracing():
    """In the trace the stand-in's node takes the place of the real op (not computed: zeros of its shape); outside
    a trace and after the context the real function runs."""
    real = F.scaled_dot_product_attention
    q, k, v = torch.rand(1, 2, 6, 4), torch.rand(1, 2, 5, 4), torch.rand(1, 2, 5, 3)
    net = SpatialSelfAttention(8, 2)
    with measures.attention_by_shape():
        assert torch.equal(F.scaled_dot_product_attention(q, k, v), real(q, k, v))  # not tracing: the real one
        graph, _ = torch.jit._get_trace_graph(net, (torch.rand(1, 8, 6, 5),))
        kinds = [node.kind() for node in graph.nodes()]
        out = torch.jit.trace(lambda a, b, c: F.scaled_dot_product_attention(a, b, c), (q, k, v),
                              check_trace=False)(q, k, v)
    assert F.scaled_dot_product_attention is real
    assert measures.STAND_IN in kinds and 'aten::scaled_dot_product_attention' not in kinds
    assert out.shape == (1, 2, 6, 3) and not out.any()


def test_benchmark_rows_use_the_fast_analysis(monkeypatch, capsys):
    """The script's table on a tiny PromptDSANet: the figures of the old way."""
    net = TINY_NETS['PromptDSANet window']
    monkeypatch.setattr(complexity, 'METHODS', ('Tiny',))
    monkeypatch.setattr(complexity.ARCH_REGISTRY, 'get', lambda name: (lambda **kw: net_instance))
    torch.manual_seed(0)
    net_instance = net()
    with torch.no_grad():
        old = [_old_way(net_instance, s)[0] for s in (24, 16)]
    monkeypatch.setattr(sys, 'argv', ['complexity.py', '--sizes', '24', '16'])
    complexity.main()
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[3:] == [f'{t / 1e9:,.1f}' for t, _ in old] + [f'{s / 1e9:,.1f}' for _, s in old]
