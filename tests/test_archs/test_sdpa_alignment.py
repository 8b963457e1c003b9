"""Every ``scaled_dot_product_attention`` call of PromptDSANet and SE-SymUNet gets inputs that CUDA's fused kernels
take in fp32, fp16 and bf16: head sizes (the last dim of q, k, v) multiples of 8 and a unit last-dim stride.

The CUDA kernels cannot run here, so the calls of one forward are recorded (``F.scaled_dot_product_attention``
replaced by a recording wrapper) for every option file whose network uses SDPA and for the tiny configs the other
tests use. Pretrained weights are replaced by random init (as test_options.py does). For the full SE-SymUNet configs
the CLIP tower keeps its real width (1024, the cross-attentions' context width) with one block at a 28-pixel input,
which leaves the cross-attentions' head sizes (inner dim / heads, from the option file) as they are; the tower's own
attention takes PyTorch's fused MultiheadAttention path, not this function.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_promptdsa_arch import TINY as PROMPTDSA_TINY
from test_se_symunet_arch import TINY as SE_SYMUNET_TINY

from allinone_basicsr.archs.promptdsa_arch import PromptDSANet, SpatialSelfAttention
from allinone_basicsr.archs.symunet_arch import CrossAttention, SESymUNet

pytestmark = pytest.mark.filterwarnings('ignore:CLIP .* has random weights')

OPTIONS = Path(__file__).resolve().parents[2] / 'options'
SDPA_ARCHS = {'PromptDSANet': PromptDSANet, 'SESymUNet': SESymUNet}
OPTION_FILES = sorted(str(p.relative_to(OPTIONS)) for p in OPTIONS.rglob('*.yml')
                      if yaml.safe_load(p.read_text())['network_g']['type'] in SDPA_ARCHS)
SMALL_CLIP = {'layers': 1, 'image_size': 28}  # keeps the model's width (and head width); one block, 2×2 patches
# the tiny networks of the other tests (test_promptdsa_arch, also used by test_fast_blocks; test_se_symunet_arch;
# test_distributed; test_complexity) and the unaligned widths named in issue 23
TINY_CONFIGS = {
    'promptdsa_arch_tiny': dict(PROMPTDSA_TINY, type='PromptDSANet'),
    'distributed_tiny': {'type': 'PromptDSANet', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 0,
                         'heads': [1, 2, 4, 8], 'prompt_dims': [8, 16, 40], 'prompt_sizes': [16, 8, 4],
                         'prompt_net': 'resnet18', 'spatial_window': 8},
    'complexity_tiny': {'type': 'PromptDSANet', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 0,
                        'prompt_net': None},
    **{f'dim{dim}': {'type': 'PromptDSANet', 'dim': dim, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 0,
                     'prompt_net': None} for dim in (32, 40, 56, 64)},
    'se_symunet_tiny': dict(SE_SYMUNET_TINY, type='SESymUNet'),
    'se_symunet_odd_heads': dict(SE_SYMUNET_TINY, type='SESymUNet', cross_attn_inner_dims=[26, 26, 52],
                                 middle_cross_attn_inner_dim=60),
}
# SpatialSelfAttention as test_promptdsa_arch, test_complexity and the memory test build it: (dim, heads, window)
MODULE_CONFIGS = [(8, 2, None), (8, 2, 4), (16, 2, None), (16, 1, None), (13, 1, None)]
_RECORDED = {}  # network options -> recorded calls (several option files share a network)


def _network_options(name):
    opt = dict(yaml.safe_load((OPTIONS / name).read_text())['network_g'])
    for key in ('clip_pretrained', 'prompt_net_pretrained'):
        if opt.get(key):
            opt[key] = None
    if opt['type'] == 'SESymUNet' and not opt.get('clip_vision_cfg'):
        opt['clip_vision_cfg'] = SMALL_CLIP
    return opt


def record_sdpa_calls(net, inp, monkeypatch):
    """(last-dim size, last-dim stride, contiguous) of q, k and v of every SDPA call of ``net(inp)``."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        calls.append([(t.shape[-1], t.stride(-1), t.is_contiguous()) for t in (q, k, v)])
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', recording)
    with torch.no_grad():
        net(inp)
    monkeypatch.undo()
    return calls


def network_calls(net_opt, monkeypatch, size=32):
    """The SDPA calls of one forward of the network at ``size``², recorded once per network options."""
    key = json.dumps(net_opt, sort_keys=True)
    if key not in _RECORDED:
        opt = dict(net_opt)
        net = SDPA_ARCHS[opt.pop('type')](**opt).eval()
        calls = record_sdpa_calls(net, torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)),
                                  monkeypatch)
        # every attention module ran (SE-SymUNet's last refinement excepted: nothing reads it)
        modules = sum(isinstance(m, (SpatialSelfAttention, CrossAttention)) for m in net.modules())
        assert len(calls) >= modules - isinstance(net, SESymUNet) > 0
        _RECORDED[key] = calls
    return _RECORDED[key]


def assert_aligned(calls):
    bad = [c for c in calls if any(d % 8 or stride != 1 or not contiguous for d, stride, contiguous in c)]
    assert not bad, f'{len(bad)} of {len(calls)} SDPA calls: (head size, last-dim stride, contiguous) of q, k, v: ' \
                    f'{sorted({tuple(c[0]) for c in bad})}'


@pytest.mark.parametrize('name', OPTION_FILES)
def test_every_sdpa_call_of_an_option_file_is_aligned(name, monkeypatch):
    assert_aligned(network_calls(_network_options(name), monkeypatch))


@pytest.mark.parametrize('name', sorted(TINY_CONFIGS))
def test_every_sdpa_call_of_a_tiny_config_is_aligned(name, monkeypatch):
    assert_aligned(network_calls(TINY_CONFIGS[name], monkeypatch))


@pytest.mark.parametrize('dim, heads, window', MODULE_CONFIGS)
def test_every_sdpa_call_of_a_tiny_spatial_attention_is_aligned(dim, heads, window, monkeypatch):
    calls = record_sdpa_calls(SpatialSelfAttention(dim, heads, window=window), torch.randn(2, dim, 8, 12),
                              monkeypatch)
    assert len(calls) == 1
    assert_aligned(calls)


def test_option_files_of_both_archs_are_checked():
    types = {yaml.safe_load((OPTIONS / n).read_text())['network_g']['type'] for n in OPTION_FILES}
    assert types == set(SDPA_ARCHS) and any(n.startswith('demo/') for n in OPTION_FILES)
    se_full = _network_options('train_se_symunet.yml')
    heads = [d // h for d, h in zip(se_full['cross_attn_inner_dims'], se_full['cross_attn_heads'])]
    assert heads + [se_full['middle_cross_attn_inner_dim'] // se_full['middle_cross_attn_heads']] == [
        1024, 512, 256, 128]  # the real config's cross-attention head sizes (no CLIP override changes them)
