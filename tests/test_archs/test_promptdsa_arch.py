"""PromptDSANet: shapes, the dual block, spatial attention (global and windowed), the prompt block, the prompt net
(no download, local weights, BatchNorm policy), sizes against PromptIR, and linear attention memory."""

import pytest
import torch
import torch.nn.functional as F
from pipeline_util import run_python

from allinone_basicsr.archs.promptdsa_arch import DsaBlock, PromptDSANet, PromptNet, SpatialSelfAttention
from allinone_basicsr.archs.promptir_arch import PromptIR
from allinone_basicsr.archs.restormer_blocks import TransformerBlock

TINY = dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, prompt_net='resnet18')


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('shape', [(1, 3, 37, 45), (2, 3, 16, 24)])
def test_output_shape_and_one_logit_column_per_class(shape):
    net = PromptDSANet(**TINY, num_classes=5).eval()
    with torch.no_grad():
        out, logits = net(torch.rand(shape), return_task_logits=True)
    assert out.shape == shape and len(logits) == 1 and logits[0].shape == (shape[0], 5)
    assert net.prompt_dims == [20, 44, 108]  # [64, 128, 320] scaled by 16/48, multiples of 4


def test_dual_block_with_spatial_weight_zero_is_the_channel_branch():
    torch.manual_seed(0)
    dsa = DsaBlock(16, 2)
    with torch.no_grad():
        for p in dsa.parameters():
            p.add_(0.1 * torch.randn_like(p))
        dsa.w_spatial.zero_()
        dsa.w_channel.fill_(1.0)
    plain = TransformerBlock(16, 2)
    state = {k: v for k, v in dsa.state_dict().items() if k in plain.state_dict()}
    plain.load_state_dict(state, strict=True)  # same key names for the channel branch
    x = torch.randn(2, 16, 9, 11)
    assert torch.allclose(dsa(x), plain(x), atol=1e-6)
    assert DsaBlock(16, 2, spatial=False).state_dict().keys() == plain.state_dict().keys()


def _plain_spatial(attn, x, window=None):
    """Softmax attention over pixels written out (math), per window when ``window`` is set."""
    b, c, h, w = x.shape
    q, k, v = attn.qkv_dwconv(attn.qkv(x)).chunk(3, dim=1)
    heads, d = attn.num_heads, c // attn.num_heads

    def attend(q, k, v):  # (B, C, n) each
        q, k, v = (t.reshape(t.shape[0], heads, d, -1).transpose(-2, -1) for t in (q, k, v))
        weights = torch.softmax((q / attn.alpha) @ k.transpose(-2, -1), dim=-1)
        return (weights @ v).transpose(-2, -1).reshape(q.shape[0], c, -1)

    if window is None:
        out = attend(q.flatten(2), k.flatten(2), v.flatten(2)).reshape(b, c, h, w)
    else:
        out = torch.zeros_like(q)
        for y in range(0, h, window):
            for xx in range(0, w, window):
                sl = (slice(None), slice(None), slice(y, y + window), slice(xx, xx + window))
                out[sl] = attend(q[sl].flatten(2), k[sl].flatten(2), v[sl].flatten(2)).reshape(out[sl].shape)
    return attn.project_out(out)


@pytest.mark.parametrize('window', [None, 4])
def test_spatial_attention_equals_plain_softmax_attention(window):
    torch.manual_seed(0)
    attn = SpatialSelfAttention(8, 2, window=window)
    with torch.no_grad():
        attn.alpha.mul_(torch.tensor([0.5, 2.0]).view(2, 1, 1))
    x = torch.randn(2, 8, 8, 12)
    assert torch.allclose(attn(x), _plain_spatial(attn, x, window), atol=1e-5)
    assert attn.alpha.shape == (2, 1, 1)
    assert torch.allclose(SpatialSelfAttention(8, 2).alpha, torch.full((2, 1, 1), 2.0))  # init √d, d = 4


def test_windowed_attention_pads_sizes_that_are_not_multiples():
    attn = SpatialSelfAttention(8, 2, window=4)
    assert attn(torch.randn(1, 8, 9, 7)).shape == (1, 8, 9, 7)


def test_prompt_block_weights_sum_to_one_and_prompt_info_scales_channels():
    torch.manual_seed(0)
    net = PromptDSANet(**TINY).eval()
    gen = net.prompt2
    x = torch.randn(2, 64, 6, 10)  # decoder step 2 sees 4·dim channels
    gate = torch.rand(2, 44) + 0.5
    weights = F.softmax(gen.linear_layer(x.mean(dim=(-2, -1))), dim=1)
    assert torch.allclose(weights.sum(dim=1), torch.ones(2))
    components = gen.prompt_param[0]  # (L, Cp, S, S): Σ_l w_l (P_c[l] ⊙ P_i), resized, 3×3 conv
    mixed = sum(weights[:, i, None, None, None] * components[i] * gate[:, :, None, None] for i in range(5))
    want = gen.conv3x3(F.interpolate(mixed, (6, 10), mode='bilinear'))
    assert torch.allclose(gen(x, gate), want, atol=1e-5)
    # the prompt information starts at exactly 1 (zero-initialised linear layers): PromptIR's prompts
    _, gates = net.prompt_net(torch.rand(2, 3, 32, 32))
    assert all(torch.equal(g, torch.ones_like(g)) for g in gates)
    assert [g.shape[1] for g in gates] == net.prompt_dims


def test_no_download_local_weights_and_batchnorm_policy(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError('a download was attempted')

    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', no_network)
    monkeypatch.setattr(torch.hub, 'download_url_to_file', no_network)
    random_init = PromptNet([4, 8, 12], backbone='resnet18')
    random_init.train()
    assert all(m.training for m in random_init.modules() if isinstance(m, torch.nn.BatchNorm2d))  # BN learns
    import torchvision
    weights = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(weights, tmp_path / 'resnet18.pth')
    pretrained = PromptNet([4, 8, 12], backbone='resnet18', pretrained=str(tmp_path / 'resnet18.pth'))
    assert torch.equal(pretrained.body.conv1.weight, weights['conv1.weight'])
    pretrained.train()
    bns = [m for m in pretrained.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and pretrained.classifier.training  # frozen statistics only
    with pytest.raises(FileNotFoundError, match=r'network_g.prompt_net_pretrained: not found: .*nope.pth'):
        PromptNet([4], backbone='resnet18', pretrained=str(tmp_path / 'nope.pth'))
    with pytest.raises(ValueError, match=r"prompt_net 'vgg16' is not supported; valid: \['resnet18'"):
        PromptNet([4], backbone='vgg16')
    net = PromptDSANet(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=0).eval()  # ResNet-50, random init
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_sizes_against_promptir():
    full = PromptDSANet()
    assert count(full) == 70_695_144  # spec §5: 46.13M restorer + 1.05M prompt information + classifier + ResNet-50
    assert count(full.prompt_net.body) == 23_508_032
    reduced = PromptDSANet(spatial_attention=False, pim_conv=False, prompt_net=None)
    promptir = PromptIR()
    unused = sum(count(getattr(promptir, n)) for n in (
        'chnl_reduce1', 'chnl_reduce2', 'chnl_reduce3',
        'reduce_noise_channel_1', 'reduce_noise_channel_2', 'reduce_noise_channel_3'))
    assert count(reduced) == count(promptir) - unused == 35_376_967  # = PromptIR's used layers
    with pytest.raises(ValueError, match='no task logits'):
        PromptDSANet(**dict(TINY, prompt_net=None))(torch.rand(1, 3, 8, 8), return_task_logits=True)


def test_spatial_attention_memory_is_linear_in_pixels():
    """A 128×128 map (16,384 tokens): the attention matrix alone would be 1 GiB per head; the fused kernel keeps the
    peak far below, for an aligned head size (16) and one that is padded (13 -> 16). SDPA receives only inputs that
    the fused kernel takes (no silent N×N math fallback), whatever the layout given to the helper."""
    code = '''
import resource, torch
from allinone_basicsr.archs.promptdsa_arch import SpatialSelfAttention
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for dim in (16, 13):
    attn = SpatialSelfAttention(dim, 1)
    x = torch.randn(1, dim, 128, 128, requires_grad=True)
    attn(x).sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
'''
    proc = run_python(['-c', code], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth_mb = float(proc.stdout.strip().splitlines()[-1])
    assert growth_mb < 256, f'peak memory grew {growth_mb:.0f} MB: the N×N attention matrix is 1024 MB'
    from torch.nn.attention import SDPBackend

    from allinone_basicsr.archs.fast_ops import aligned_attention
    calls = []

    def recording(q, k, v, **kwargs):
        calls.append(torch._fused_sdp_choice(q, k, v, **kwargs))
        return sdpa(q, k, v, **kwargs)

    sdpa = F.scaled_dot_product_attention
    q = torch.randn(1, 2, 13, 64).transpose(-2, -1)  # non-unit last-dim stride and an unaligned head size
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, 'scaled_dot_product_attention', recording)
        aligned_attention(q, q, q, scale=1.0)
        aligned_attention(q[..., :8], q[..., :8], q[..., :8], scale=1.0)  # aligned, non-unit stride
    assert calls == [SDPBackend.FLASH_ATTENTION.value] * 2  # the fused CPU kernel
    assert torch._fused_sdp_choice(q, q, q) == SDPBackend.MATH.value  # what SDPA alone would do with q


@pytest.mark.parametrize('d', [4, 13, 16, 59])
def test_aligned_attention_equals_sdpa_values_and_gradients(d):
    """Zero-padding the head size to a multiple of 8 changes nothing but float rounding (stated tolerance 1e-6 on
    unit-scale values and gradients; measured 0 to 2e-7). The scale stays the caller's, not 1/√(padded d)."""
    from allinone_basicsr.archs.fast_ops import aligned_attention
    gen = torch.Generator().manual_seed(d)
    inputs = [torch.randn(2, 3, 37, d, generator=gen, requires_grad=True) for _ in range(3)]
    grad = torch.randn(2, 3, 37, d, generator=gen)
    out = aligned_attention(*inputs, scale=d ** -0.5)
    want = F.scaled_dot_product_attention(*inputs)
    assert out.shape == want.shape and torch.allclose(out, want, atol=1e-6, rtol=0)
    grads = torch.autograd.grad(out, inputs, grad)
    for g, w in zip(grads, torch.autograd.grad(want, inputs, grad)):
        assert torch.allclose(g, w, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match='one head size'):
        aligned_attention(inputs[0], inputs[1], inputs[2][..., :1], scale=1.0)


def test_forward_sets_no_process_wide_attention_flag(monkeypatch):
    """``sdpa_kernel`` flips process-wide backend flags on entry and exit, which races between DataParallel's replica
    threads (one thread's exit re-enables what another thread's entry disabled). A forward must set none."""
    setters = [n for n in dir(torch._C) if n.startswith('_set_sdp_') or n.startswith('_set_math_sdp_')]
    assert '_set_sdp_use_math' in setters
    calls = []
    for name in setters:
        monkeypatch.setattr(torch._C, name, lambda *args, _name=name: calls.append(_name))
    net = PromptDSANet(**TINY).eval()
    with torch.no_grad():
        net(torch.rand(1, 3, 16, 16))
        SpatialSelfAttention(8, 2, window=4)(torch.randn(1, 8, 8, 8))
    assert calls == []


def test_unknown_option_lists_own_and_promptir_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['window'\]") as err:
        PromptDSANet(window=8)
    for option in ('spatial_window', 'prompt_net_pretrained', 'dim', 'num_blocks', 'prompt_sizes'):
        assert f"'{option}'" in str(err.value)
