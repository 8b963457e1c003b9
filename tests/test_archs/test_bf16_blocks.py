"""bfloat16 mixed precision of the Restormer blocks: ``torch.autocast(dtype=torch.bfloat16)`` around the forward,
float32 master weights, as the bf16 train step of ``benchmarks/speed.py`` runs it.

Stated tolerances (measured values in brackets):

* Tiny SymUNet (two levels, width 8, batch 2, 40×36, so the input is also padded) under bfloat16 autocast, against
  the same float32 network: every output within 1e-2 of the largest |float32 output| [3.6e-3 to 5.1e-3 over three
  seeds]. Every gradient (input and parameters) finite and float32; the input's and every convolution weight's
  within 5e-2 of that tensor's largest |float32 gradient| [at most 2.5e-2]. LayerNorm weights and biases and the
  attention temperatures are checked for finiteness only: each is one sum over every pixel of cancelling bfloat16
  terms (errors up to ~0.6 of their largest entry here, the same with autograd's bfloat16 normalise-first form).
* The bfloat16 channel attention, against the float64 formula (``F.normalize`` then softmax): weights within
  1e-2 [2.8e-3 to 3.6e-3], gradients of q, k within 2e-2 [3.4e-3 to 5.3e-3] and of the temperature within 5e-2
  [1.3e-4 to 1.8e-3] of their largest entry, with an all-zero and a near-zero channel (the eps clamp).
* Its hand-written backward is the derivative: with float64 maps it matches float64 autograd of the formula within
  1e-5 (its d × d algebra runs in float32) [1.2e-7].
* The q/k/v gradient reaches the depthwise convolution's backward channels-last (the autograd normalise-first
  form this replaced fails that check).
"""
import pytest
import torch
import torch.nn.functional as F

from allinone_basicsr.archs import fast_ops
from allinone_basicsr.archs.fast_ops import channel_attention, channels_last
from allinone_basicsr.archs.restormer_blocks import TransformerBlock

from basicsr.utils.registry import ARCH_REGISTRY

TINY = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 2], dec_blk_nums=[2, 1], restormer_heads=[1, 2],
            restormer_middle_heads=4)


def _rel(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def _symunet_run(net, x, weights, bf16):
    net.zero_grad(set_to_none=True)
    inp = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
        out = net(inp)
        loss = (out.float() * weights).sum()  # reduced in float32
    loss.backward()
    grads = {'input': inp.grad, **{name: p.grad for name, p in net.named_parameters()}}
    return out.detach(), grads


@pytest.mark.parametrize('seed', [0, 1])
def test_tiny_symunet_under_bf16_autocast_is_close_to_float32_with_finite_gradients(seed):
    torch.manual_seed(seed)
    net = ARCH_REGISTRY.get('SymUNet')(**TINY)
    x, weights = torch.rand(2, 3, 40, 36), torch.rand(2, 3, 40, 36)
    ref_out, ref_grads = _symunet_run(net, x, weights, bf16=False)
    out, grads = _symunet_run(net, x, weights, bf16=True)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert _rel(out, ref_out) <= 1e-2
    for name, grad in grads.items():
        assert grad is not None and grad.dtype == torch.float32 and torch.isfinite(grad).all(), name
        if name == 'input' or (name.endswith('.weight') and grad.dim() == 4):
            assert _rel(grad, ref_grads[name]) <= 5e-2, name


def _attention_inputs(b=2, c=16, heads=2, h=9, w=11, seed=0):
    """q, k as channel slices of one channels-last qkv map (as MDTA has them), with an all-zero q channel and a
    k channel below the eps clamp."""
    torch.manual_seed(seed)
    qkv = channels_last(torch.randn(b, 3 * c, h, w, dtype=torch.float64))
    qkv[:, 1] = 0
    qkv[:, c + 2] = 1e-14
    temperature = torch.rand(heads, 1, 1, dtype=torch.float64) + 0.5
    return qkv, temperature, torch.randn(b, heads, c // heads, c // heads, dtype=torch.float64)


def _formula(q, k, heads, temperature):
    b, c = q.shape[:2]
    q, k = (F.normalize(t.reshape(b, heads, c // heads, -1), dim=-1) for t in (q, k))
    return (q @ k.transpose(-2, -1) * temperature).softmax(dim=-1)


def _attention_grads(fn, qkv, temperature, grad_out, heads, dtype, autocast):
    x = qkv.detach().to(dtype).requires_grad_()
    t = temperature.detach().float().requires_grad_()
    q, k, _ = x.chunk(3, dim=1)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        attn = fn(q, k, heads, t)
    (attn.double() * grad_out).sum().backward()
    return attn, x.grad, t.grad


@pytest.mark.parametrize('b,c,heads', [(1, 48, 1), (2, 16, 2), (3, 32, 4)])
@pytest.mark.parametrize('autocast', [False, True])
def test_bf16_channel_attention_matches_the_float64_formula(b, c, heads, autocast):
    qkv, temperature, grad_out = _attention_inputs(b, c, heads)
    dtype = torch.float32 if autocast else torch.bfloat16
    attn, grad_x, grad_t = _attention_grads(channel_attention, qkv, temperature, grad_out, heads, dtype, autocast)
    ref, ref_x, ref_t = _attention_grads(_formula, qkv, temperature.double(), grad_out, heads, torch.float64, False)
    assert attn.dtype == torch.bfloat16 and grad_x.dtype == dtype
    assert _rel(attn, ref) <= 1e-2
    assert _rel(grad_x[:, :2 * c], ref_x[:, :2 * c]) <= 2e-2 and not grad_x[:, 2 * c:].any()
    assert _rel(grad_t, ref_t) <= 5e-2


def test_hand_written_backward_is_the_derivative():
    qkv, temperature, grad_out = _attention_inputs(2, 16, 2)

    def hand_written(q, k, heads, t):
        q, k = (fast_ops._pixels_by_channels(m, heads).permute(0, 2, 3, 1) for m in (q, k))
        return fast_ops._BFloat16ChannelAttention.apply(q, k, t, 1e-12)

    got = _attention_grads(hand_written, qkv, temperature.double(), grad_out, 2, torch.float64, False)
    want = _attention_grads(_formula, qkv, temperature.double(), grad_out, 2, torch.float64, False)
    for g, w in zip(got, want):
        assert _rel(g, w) <= 1e-5


def test_compiled_path_computes_the_same_attention(monkeypatch):
    """Under torch.compile the same formula runs as plain autograd ops (no hand-written backward)."""
    qkv, temperature, grad_out = _attention_inputs(2, 16, 2)
    eager = _attention_grads(channel_attention, qkv, temperature, grad_out, 2, torch.bfloat16, False)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    plain = _attention_grads(channel_attention, qkv, temperature, grad_out, 2, torch.bfloat16, False)
    for e, p in zip(eager, plain):
        assert _rel(e, p) <= 1e-2


def test_qkv_gradient_stays_channels_last_under_bf16_autocast():
    """oneDNN's bfloat16 depthwise convolution wants channels-last: a channels-first gradient reaching its
    backward costs a full layout copy of the q/k/v map (the normalise-first autograd form returned one)."""
    torch.manual_seed(0)
    block = TransformerBlock(16, 2)
    seen = []

    def hook_output(module, inputs, out):
        out.register_hook(seen.append)

    block.attn.qkv_dwconv.register_forward_hook(hook_output)
    x = channels_last(torch.randn(1, 16, 12, 12)).bfloat16().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = block(x)
    y.float().square().sum().backward()
    assert len(seen) == 1 and seen[0].dtype == torch.bfloat16
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(x.grad).all() and x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('bias', [True, False])
def test_pointwise_conv_is_the_1x1_convolution(bias):
    """``pointwise_conv``: in bfloat16 on a small channels-last map a matmul on the (pixels, C) view, elsewhere
    ``F.conv2d``; the matmul gives the convolution's values and gradients (bfloat16 rounding apart) and a
    channels-last output; float32, NCHW and large maps take the convolution itself, bit for bit."""
    torch.manual_seed(0)
    w = torch.randn(24, 16, 1, 1, requires_grad=True)
    b = torch.randn(24, requires_grad=True) if bias else None
    x = torch.randn(2, 16, 8, 12).contiguous(memory_format=torch.channels_last)
    for shape, fmt in (((2, 16, 8, 12), torch.contiguous_format), ((1, 16, 40, 40), torch.channels_last)):
        big = torch.randn(shape).contiguous(memory_format=fmt).bfloat16()  # NCHW, or over 1024 pixels
        assert torch.equal(fast_ops.pointwise_conv(big, w.bfloat16(), None), F.conv2d(big, w.bfloat16()))
    assert torch.equal(fast_ops.pointwise_conv(x, w, b), F.conv2d(x, w, b))  # float32
    grads = []
    for fn in (fast_ops.pointwise_conv, F.conv2d):
        xi = x.bfloat16().requires_grad_()
        params = [w] + ([b] if bias else [])
        for p in params:
            p.grad = None
        y = fn(xi, w.bfloat16(), None if b is None else b.bfloat16())
        (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append([y.detach()] + [t.grad.clone() for t in [xi] + params])
    assert grads[0][0].is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(*grads):
        assert _rel(got, want) < 1e-2
