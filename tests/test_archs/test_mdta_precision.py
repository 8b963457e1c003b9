"""MDTA stays finite in float16 (autocast or float16 weights and inputs) at 256² and beyond, and close to float32.

The raw product q·kᵀ over the pixels grows with H·W: with q and k of unit scale and correlated (as in trained
nets), its diagonal is about H·W = 65536 at 256², past float16's largest value 65504, so the product-then-divide
form of ``channel_attention`` gave inf/NaN in float16. In low precision it now normalises q and k first (the
official form; bfloat16 through the hand-written ``_BFloat16ChannelAttention``, which rounds the unit vectors
once, so a cosine near 1 stays exactly 1: its product-then-divide draft gave the temperature 4.9e-1 here);
float32 keeps the fast form, bit for bit.

The attention layers here get q = k = v = the input (plus a small random mix), of unit scale: that is the case
which overflows. Stated tolerance, against the float32 result of the same weights and input: every output within
2e-3 (float16) / 2e-2 (bfloat16) of the largest |float32 output|; every gradient within 4e-3 / 4e-2 of its tensor's
largest |float32 gradient| (measured: about 1e-3 / 1e-2 and 1e-3 / 7e-3, the rounding of the 1×1 and depthwise
convolutions in low precision), but 10 times that for the temperature's: one number summed over every logit whose
terms cancel (each softmax row's gradient sums to zero); measured 1.1e-2 / 1.1e-1 (the old product-first form:
NaN / 7.9e-1).
"""
import pytest
import torch
import torch.nn.functional as F

from allinone_basicsr.archs.fast_ops import channel_attention
from allinone_basicsr.archs.restormer_blocks import MDTA, TransformerBlock

from basicsr.utils.registry import ARCH_REGISTRY

OUT_TOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float16: 4e-3, torch.bfloat16: 4e-2}


def unit_scale_attention(net, seed=0):
    """Every MDTA of ``net`` passes its input on as q, k and v (identity 1×1 plus 0.1 of a random mix, a centred
    3×3 depthwise kernel): q and k have the input's scale and are strongly correlated."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, MDTA):
                dim = m.project_out.weight.shape[0]
                eye = torch.eye(dim).repeat(3, 1)[:, :, None, None]
                m.qkv.weight.copy_(eye + 0.1 * torch.randn(3 * dim, dim, 1, 1, generator=gen))
                m.qkv_dwconv.weight.zero_()
                m.qkv_dwconv.weight[:, :, 1, 1] = 1
    return net


def _close(low, ref, tol):
    return (low.float() - ref).abs().max().item() <= tol * ref.abs().max().item()


def _mdta(dim=16, heads=2):
    torch.manual_seed(0)
    return unit_scale_attention(MDTA(dim, heads, bias=False))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_mdta_is_finite_under_autocast_at_256(dtype):
    net = _mdta()
    x = torch.randn(1, 16, 256, 256)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast('cpu', dtype=dtype):
            out = net(x)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert _close(out, ref, OUT_TOL[dtype])


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_mdta_gradients_are_finite_under_autocast_at_256(dtype):
    net = _mdta(8, 1)
    x = torch.randn(1, 8, 256, 256)
    weights = torch.randn(1, 8, 256, 256)

    def grads(enabled):
        inp = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=dtype, enabled=enabled):
            out = net(inp)
        return torch.autograd.grad((out.float() * weights).sum(), [inp, *net.parameters()])

    names = ['input', *dict(net.named_parameters())]
    for name, low, ref in zip(names, grads(True), grads(False)):
        tol = GRAD_TOL[dtype] * (10 if name == 'temperature' else 1)
        assert torch.isfinite(low).all() and _close(low, ref, tol), name


def test_mdta_with_float16_weights_and_inputs_at_256():
    net = _mdta()
    x = torch.randn(1, 16, 256, 256)
    with torch.no_grad():
        ref = net(x)
        out = net.half()(x.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert _close(out, ref, OUT_TOL[torch.float16])


def test_mdta_is_finite_in_float16_at_512():
    net = _mdta(8, 1)
    x = torch.randn(1, 8, 512, 512)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast('cpu', dtype=torch.float16):
            out = net(x)
    assert torch.isfinite(out).all() and _close(out, ref, OUT_TOL[torch.float16])


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_transformer_block_and_symunet_are_finite_under_autocast_at_256(dtype):
    torch.manual_seed(0)
    block = unit_scale_attention(TransformerBlock(8, 2))
    symunet = unit_scale_attention(ARCH_REGISTRY.get('SymUNet')(
        width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1], restormer_heads=[1, 2],
        restormer_middle_heads=2))
    for net, x in ((block, torch.randn(1, 8, 256, 256)), (symunet, torch.rand(1, 3, 256, 256))):
        with torch.no_grad():
            ref = net(x)
            with torch.autocast('cpu', dtype=dtype):
                out = net(x)
        assert torch.isfinite(out).all() and _close(out, ref, OUT_TOL[dtype]), type(net).__name__


def test_float32_keeps_the_fast_form_bit_for_bit():
    """float32 (no autocast): the product over the pixels, then the division by the norms, exactly as before."""
    torch.manual_seed(0)
    q = torch.randn(2, 8, 9, 11).contiguous(memory_format=torch.channels_last)
    k = torch.randn(2, 8, 9, 11).contiguous(memory_format=torch.channels_last)
    temperature = torch.rand(2, 1, 1) + 0.5
    qp, kp = (t.permute(0, 2, 3, 1).reshape(2, 99, 2, 4) for t in (q, k))
    logits = qp.permute(0, 2, 3, 1) @ kp.transpose(1, 2)
    norms = (torch.linalg.vector_norm(t, dim=1).clamp_min(1e-12) for t in (qp, kp))
    q_norm, k_norm = norms
    want = (logits / (q_norm.unsqueeze(-1) * k_norm.unsqueeze(-2)) * temperature).softmax(dim=-1)
    assert torch.equal(channel_attention(q, k, 2, temperature), want)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_low_precision_attention_is_the_normalise_first_formula(dtype):
    """Including an all-zero channel (F.normalize gives a zero vector: logits 0) and a large one."""
    torch.manual_seed(0)
    q = torch.randn(1, 4, 16, 16)
    k = torch.randn(1, 4, 16, 16)
    q[:, 1] = 0
    k[:, 2] = 300.0
    temperature = torch.full((2, 1, 1), 3.0)
    qn = F.normalize(q.to(dtype).float().reshape(1, 2, 2, 256), dim=-1)
    kn = F.normalize(k.to(dtype).float().reshape(1, 2, 2, 256), dim=-1)
    want = (qn @ kn.transpose(-2, -1) * temperature).softmax(-1)
    got = channel_attention(q.to(dtype), k.to(dtype), 2, temperature)
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert torch.allclose(got.float(), want, rtol=0, atol=OUT_TOL[dtype] * 4)
