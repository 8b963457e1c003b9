"""Restormer building blocks shared by every arch of the package (SymUNet, SE-SymUNet, PromptIR, DaAIR,
PromptDSANet).

The module and parameter names follow the official Restormer / PromptIR / SymUNet code (``norm1.body.weight``,
``attn.qkv_dwconv.weight``, ``ffn.project_in.weight`` ...), so their checkpoints load with ``strict=True``.

Blocks (Zamir et al., "Restormer", CVPR 2022):
    LayerNorm          channel LayerNorm of a B×C×H×W map, 'WithBias' or 'BiasFree'
    MDTA               multi-Dconv-head transposed attention (attention across channels); its core is
                       ``channel_attention`` + ``attend_and_project``, also used by DaAIR
    GDFN               gated-Dconv feed-forward network
    TransformerBlock   x + MDTA(LN(x)), then x + GDFN(LN(x))
    OverlapPatchEmbed  3×3 conv embedding
    Downsample / Upsample   3×3 conv + pixel (un)shuffle, halving / doubling the resolution
    pad_to_multiple    reflect padding to a multiple (any input size), with ``crop_to`` to undo it
                       (``crop_output`` for an arch's output: contiguous)

Speed (same outputs as the official formulas, see ``tests/test_archs/test_fast_blocks.py``):

* Feature maps are kept in channels-last memory (``torch.channels_last``): oneDNN's 1×1 and depthwise
  convolutions are several times faster on it on CPU, and the channel LayerNorm becomes a plain last-dim
  ``F.layer_norm`` on a permuted view (no copy). Tensors keep their logical B×C×H×W shape.
* MDTA: q and k are L2-normalised *after* the C/h × C/h product (dividing the logits by the outer product of the
  norms) instead of normalising the two H·W-long maps (float32; in float16, where the raw product overflows from
  256² on, they are normalised first, as the official code does); the value mixing is folded into the output
  projection (``W_out · blockdiag(attn)``, a C×C matrix), so one 1×1 convolution applies both.
* GDFN: the two halves (gate and value) are computed by two convolutions with halves of the same weights, so the
  backward pass never concatenates their (full-size) activation gradients, only the small weight gradients.

Mixed precision (bfloat16 autocast, float32 master weights; ``tests/test_archs/test_bf16_blocks.py``): every
convolution runs in bfloat16 on channels-last maps, the oneDNN layout for it (a channels-first gradient reaching a
bfloat16 depthwise convolution's backward costs a full layout copy). The residual stream, LayerNorm outputs and
GELU gate stay in bfloat16 (LayerNorm computes its statistics in float32 internally and takes the float32 weights
as they are, so there is no cast of the maps between blocks). MDTA's channel attention in bfloat16 is
``_BFloat16ChannelAttention``: float32 norms, softmax, temperature and d × d matrices, bfloat16 only for the
H·W-long maps and the products over them, and a hand-written backward that writes the q/k gradients
channels-last (see its docstring for what stays float32 and why).
"""
import torch
from torch import nn
from torch.nn import functional as F


def channels_last(x):
    """``x`` in channels-last memory (a no-op when it already is); shape and values unchanged."""
    return x.contiguous(memory_format=torch.channels_last)


class _ChannelNormBase(nn.Module):
    """Normalises over the channel dim (dim 1) of a B×C×H×W tensor; eps as in the official code."""
    eps = 1e-5

    def __init__(self, dim, with_bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter('bias', None)


class WithBiasLayerNorm(_ChannelNormBase):
    """Standard LayerNorm over channels: (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, dim):
        super().__init__(dim, with_bias=True)

    def forward(self, x):
        x = channels_last(x)  # then the permuted view below is contiguous: layer_norm reads it in place
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class BiasFreeLayerNorm(_ChannelNormBase):
    """Restormer's bias-free LayerNorm: x / sqrt(var + eps) * weight (the mean is not subtracted)."""

    def __init__(self, dim):
        super().__init__(dim, with_bias=False)

    def forward(self, x):
        x = channels_last(x)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)


LAYERNORM_TYPES = ('WithBias', 'BiasFree')


class LayerNorm(nn.Module):
    """Channel LayerNorm for B×C×H×W maps.

    Args:
        dim (int): Number of channels.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'. Default: 'WithBias'.
    """

    def __init__(self, dim, LayerNorm_type='WithBias'):
        super().__init__()
        if LayerNorm_type not in LAYERNORM_TYPES:
            raise ValueError(f'LayerNorm_type {LayerNorm_type!r} is not one of {list(LAYERNORM_TYPES)}')
        self.body = BiasFreeLayerNorm(dim) if LayerNorm_type == 'BiasFree' else WithBiasLayerNorm(dim)

    def forward(self, x):
        return self.body(x)


class MDTA(nn.Module):
    """Multi-Dconv head transposed attention: attention maps are C/heads × C/heads per head.

    q, k, v come from a 1×1 conv and a 3×3 depthwise conv; q and k are L2-normalised over pixels and the
    logits are scaled by a learnable per-head temperature.

    Args:
        dim (int): Number of channels.
        num_heads (int): Number of heads (must divide dim).
        bias (bool): Bias in the convolutions.
    """

    def __init__(self, dim, num_heads, bias):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'MDTA: num_heads {num_heads} does not divide dim {dim}')
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        qkv = pointwise_conv(channels_last(x), self.qkv.weight, self.qkv.bias)
        q, k, v = self.qkv_dwconv(qkv).chunk(3, dim=1)
        return attend_and_project(v, channel_attention(q, k, self.num_heads, self.temperature), self.project_out)


def _pixels_by_channels(t, num_heads):
    """(B, C, H, W) → (B, H·W, heads, C/heads); a view when ``t`` is channels-last (a channel slice is fine)."""
    b, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(b, h * w, num_heads, c // num_heads)


def channel_attention(q, k, num_heads, temperature, eps=1e-12):
    """MDTA's attention weights, (B, heads, C/heads, C/heads): softmax over j of
    ``temperature · <q_i, k_j> / (max(|q_i|, eps) · max(|k_j|, eps))``, dot products and norms over the pixels.

    float32/float64 (no autocast): equal to normalising q and k first (``F.normalize(·, dim=-1)`` as the official
    code does), but the division happens on the small C/h × C/h logits instead of two H·W-long maps.

    float16 inputs or float16 autocast: the raw products grow with the pixel count (H·W · |q|·|k|: 65536 at 256²
    with unit activations, float16's largest value is 65504), so there q and k are normalised first, as in the
    official code (cosines, at most 1 in magnitude, finite at any size).

    bfloat16 inputs or bfloat16 autocast: normalised first too, but in one pass per map and with a hand-written
    backward that keeps the gradients channels-last (``_BFloat16ChannelAttention``; norms, temperature and softmax
    in float32). The result has the low precision dtype (q's, or the autocast dtype).
    """
    q, k = _pixels_by_channels(q, num_heads), _pixels_by_channels(k, num_heads)
    autocast = _autocast_enabled(q.device.type)
    if q.dtype in (torch.float32, torch.float64) and not autocast:
        logits = q.permute(0, 2, 3, 1) @ k.transpose(1, 2)  # (B, heads, d, HW) @ (B, heads, HW, d)
        q_norm = torch.linalg.vector_norm(q, dim=1).clamp_min(eps)  # (B, heads, d)
        k_norm = torch.linalg.vector_norm(k, dim=1).clamp_min(eps)
        return (logits / (q_norm.unsqueeze(-1) * k_norm.unsqueeze(-2)) * temperature).softmax(dim=-1)
    low = torch.get_autocast_dtype(q.device.type) if autocast else q.dtype
    if low == torch.float16 or q.dtype == torch.float16:
        return _low_precision_channel_attention(q, k, temperature, eps)
    return _bfloat16_channel_attention(q, k, temperature, eps)


def _bfloat16_channel_attention(q, k, temperature, eps):
    """``channel_attention`` in bfloat16 (or under bfloat16 autocast) on the (B, HW, heads, d) views."""
    if _autocast_enabled(q.device.type):
        q, k = q.to(torch.get_autocast_dtype(q.device.type)), k.to(torch.get_autocast_dtype(q.device.type))
    q, k = q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1)  # (B, heads, d, HW)
    if torch.compiler.is_compiling():
        # torch.compile: the same formula in plain autograd ops (the compiler fuses the elementwise passes itself;
        # the per-head loop of the hand-written backward would be traced over symbolic sizes)
        q_unit, k_unit = (F.normalize(t.float(), dim=-1, eps=eps).to(t.dtype) for t in (q, k))
        cosines = (q_unit @ k_unit.transpose(-1, -2)).float()
        return (cosines * temperature.float()).softmax(dim=-1).to(q.dtype)
    return _BFloat16ChannelAttention.apply(q, k, temperature, eps)


def _per_head_matmul(a, b, out):
    """``a @ b`` into ``out``, all (B, heads, ·, ·), as one ``torch.mm`` per sample and head: BLAS takes each
    head's strided matrix of a channels-last map as it is (a leading dimension), whereas ``bmm`` copies operands
    whose batch stride is not a whole matrix, as the heads of a channels-last map are. Several heads of maps under
    2048 pixels, and other devices: one batched matmul (a loop of small calls or kernel launches would cost more
    than the copies)."""
    if a.device.type != 'cpu' or (a.shape[1] > 1 and max(a.shape[-2:]) < 2048):
        # several heads of small maps: one batched matmul, whose copies cost less than a call per head
        return out.copy_(a @ b)
    for a_i, b_i, out_i in zip(a.unbind(0), b.unbind(0), out.unbind(0)):
        for a_ij, b_ij, out_ij in zip(a_i.unbind(0), b_i.unbind(0), out_i.unbind(0)):
            torch.mm(a_ij, b_ij, out=out_ij)
    return out


class _BFloat16ChannelAttention(torch.autograd.Function):
    """softmax(temperature · (q kᵀ) / (|q| ⊗ |k|)) for bfloat16 q, k of shape (B, heads, d, HW) (channels-last
    strides: the pixel dim is the strided one), with a hand-written backward.

    Forward: float32 norms, then q and k normalised in one pass each (bfloat16 in, float32 division, bfloat16 out)
    and their product over the pixels as one bfloat16 matmul per sample and head (float32 accumulation inside
    oneDNN / cuBLAS), with no float32 copy of the H·W-long maps. Autograd's version of this (float32 copies,
    division, cast back) cost three full-size passes each way, and its gradient came back channels-first, which
    forced a layout copy of the whole q/k/v gradient before the depthwise convolution's backward (oneDNN's
    bfloat16 convolutions want channels-last).

    Backward, with c = cosines, g = gradient of the softmax input times the temperature, G = g / (|q| ⊗ |k|):
    ``dq = G k - diag(r) q`` with ``r_i = Σ_j g_ij c_ij / |q_i|²`` (0 where |q_i| ≤ eps, the clamp), and the same
    for k with Gᵀ: one matmul written straight into a channels-last buffer plus one fused multiply-add per map,
    instead of autograd's matmul, norm backward, cast and accumulation passes.
    """

    @staticmethod
    def forward(ctx, q, k, temperature, eps):
        with torch.autocast(q.device.type, enabled=False):
            b, heads, d, _ = q.shape
            # float32 norms: the squares (each rounded once to bfloat16, unbiased) are summed in float32
            q_norm, k_norm = (t.square().sum(-1, dtype=torch.float32).sqrt() for t in (q, k))
            q_clamped, k_clamped = q_norm.clamp_min(eps), k_norm.clamp_min(eps)
            # unit vectors, divided in float32 and rounded once to bfloat16 (F.normalize's formula; the float32
            # quotient of one head's map stays in cache, and writing bfloat16 straight through ``out=`` takes a
            # slow mixed-dtype path); their product is the cosines, rounded once: a cosine near ±1 (q_i ∥ k_j)
            # rounds to ±1 exactly instead of carrying the 2^-9 rounding of a |q||k|-sized product, which the
            # temperature's gradient (a sum of cancelling terms over every logit) would amplify
            q_unit, k_unit = ((t / n.unsqueeze(-1)).to(t.dtype) for t, n in ((q, q_clamped), (k, k_clamped)))
            cosines = _per_head_matmul(q_unit, k_unit.transpose(-1, -2), q.new_empty(b, heads, d, d)).float()
            # float32 for the temperature and the softmax (small d × d matrices, so cheap): each row of weights sums
            # to 1 up to float32 rounding before its one rounding to bfloat16
            attn = (cosines * temperature.float()).softmax(dim=-1)
        ctx.save_for_backward(q, k, temperature, cosines, attn, q_clamped, k_clamped)
        ctx.masks = (q_norm > eps, k_norm > eps)
        return attn.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_attn):
        q, k, temperature, cosines, attn, q_norm, k_norm = ctx.saved_tensors
        q_mask, k_mask = ctx.masks
        with torch.autocast(q.device.type, enabled=False):
            # float32 throughout on the d × d matrices (softmax backward, temperature, norms); only the two
            # full-size terms of each map's gradient are bfloat16 (``_channels_last_grad``)
            grad_attn = grad_attn.float()
            grad_logits = attn * (grad_attn - (grad_attn * attn).sum(-1, keepdim=True))
            grad_temperature = None
            if ctx.needs_input_grad[2]:
                grad_temperature = (grad_logits * cosines).sum((0, 2, 3)).view_as(temperature).to(temperature.dtype)
            g = grad_logits * temperature.float()
            gc = g * cosines
            g = g / (q_norm.unsqueeze(-1) * k_norm.unsqueeze(-2))
            r = (gc.sum(-1) / q_norm.square() * q_mask).unsqueeze(-1).to(q.dtype)
            s = (gc.sum(-2) / k_norm.square() * k_mask).unsqueeze(-1).to(k.dtype)
            g = g.to(q.dtype)
            grad_q = _channels_last_grad(g, k, r, q)
            grad_k = _channels_last_grad(g.transpose(-1, -2), q, s, k)
        return grad_q, grad_k, grad_temperature, None


def _channels_last_grad(g, other, r, own):
    """``g @ other - r * own`` for (B, heads, d, HW) maps, as a (B, heads, d, HW) view of a (B, HW, heads, d)
    buffer: channels-last order, the layout the q/k/v gradient and the depthwise convolution's backward need.
    Both terms in bfloat16 (float32 accumulation inside the matmul, one rounding each), as in autograd's
    bfloat16 backward of the normalise-first form."""
    b, heads, d, hw = own.shape
    buf = own.new_empty(b, hw, heads, d)
    # per head, the (HW, d) matrix otherᵀ gᵀ = (g other)ᵀ, written straight into the channels-last buffer
    _per_head_matmul(other.transpose(-1, -2), g.transpose(-1, -2), buf.permute(0, 2, 1, 3))
    return buf.permute(0, 2, 3, 1).addcmul_(own, r, value=-1)


def _autocast_enabled(device_type):
    """Whether autocast is on for this device type (False for types autocast does not know, such as 'meta')."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _low_precision(t):
    """Whether ``t`` is computed on in a low precision: a float16/bfloat16 tensor, or autocast on for its device."""
    return t.dtype not in (torch.float32, torch.float64) or _autocast_enabled(t.device.type)


def _low_precision_channel_attention(q, k, temperature, eps):
    """``channel_attention`` for float16/bfloat16 (or under autocast) on the (B, HW, heads, d) views: normalise
    first, then the product of the unit vectors in the low precision."""
    dtype = q.dtype

    def unit(t):
        # float32 for the norm: the sum of squares over the pixels overflows float16 (H·W · |t|², 65536 at 256²)
        norm = torch.linalg.vector_norm(t, dim=1, keepdim=True, dtype=torch.float32).clamp_min(eps)
        # float32 for the division too (t is promoted, 1 / norm is not rounded to float16, where it could under- or
        # overflow), then the unit vector (entries at most 1) back to the low precision for the product
        return (t / norm).to(dtype)

    logits = unit(q).permute(0, 2, 3, 1) @ unit(k).transpose(1, 2)  # cosines, in [-1, 1]
    # float32 for the temperature scaling and the softmax over the small d × d logits: cheap, and each row of
    # weights sums to 1 up to float32 rounding before its one rounding to the low precision
    return (logits.float() * temperature.float()).softmax(dim=-1).to(dtype)


def attend_and_project(v, attn, project_out):
    """``project_out(attn · v)``: v's channels mixed per head by ``attn`` (B, heads, d, d), then the 1×1
    ``project_out`` conv, applied as one 1×1 convolution with the folded C×C matrix ``W_out · blockdiag(attn)``."""
    b, c, h, w = v.shape
    if b == 1 and v.device.type == 'cpu' and _low_precision(v):
        return _attend_and_project_one_sample(v, attn, project_out)
    heads, d = attn.shape[1], attn.shape[2]
    weight = project_out.weight.view(-1, heads, d)
    folded = torch.einsum('ohi,bhij->bohj', weight, attn).reshape(b, -1, c)  # (B, C_out, C) per sample
    if b == 1:
        return F.conv2d(channels_last(v), folded.view(-1, c, 1, 1), project_out.bias)
    y = _pixels_by_channels(v, 1).flatten(2) @ folded.transpose(1, 2)  # (B, HW, C_out)
    if project_out.bias is not None:
        y = y + project_out.bias
    return y.view(b, h, w, -1).permute(0, 3, 1, 2)


def _attend_and_project_one_sample(v, attn, project_out):
    """``attend_and_project`` of one sample in bfloat16 / float16 on the CPU, in as few operations as possible (at
    small sizes the per-operation cost dominates): the folded matrix by one matmul (per head), then one matmul on
    v's strided (HW, C) view, with no channels-last copy of the channel slice v (BLAS takes the leading
    dimension; a convolution needs a dense input); the output is channels-last."""
    _, c, h, w = v.shape
    heads, d = attn.shape[1], attn.shape[2]
    if heads == 1:
        folded = torch.mm(project_out.weight.view(-1, d), attn.view(d, d))  # (C_out, C)
    else:
        weight = project_out.weight.view(-1, heads, d).transpose(0, 1)  # (heads, C_out, d)
        folded = torch.bmm(weight, attn.view(heads, d, d)).transpose(0, 1).reshape(-1, c)
    y = torch.mm(_pixels_by_channels(v, 1).reshape(h * w, c), folded.t())
    if project_out.bias is not None:
        y = y + project_out.bias.to(y.dtype)
    return y.view(1, h, w, -1).permute(0, 3, 1, 2)


def pointwise_conv(x, weight, bias=None):
    """1×1 convolution of ``x``; ``weight`` is (C_out, C_in, 1, 1).

    bfloat16 / float16 on the CPU, on a dense channels-last map of at most 32×32 pixels: one matmul on the
    (pixels, C_in) view instead, which is the same product without oneDNN's per-call reordering of the weights (at
    the deep levels the weights are as large as the maps: 510×192 or 1021×384 against 1024 or 256 pixels), ~15–30%
    less time forward + backward there. Elsewhere (and always in float32, whose results stay bit for bit those of
    the convolution): ``F.conv2d``.
    """
    b, c, h, w = x.shape
    if (h * w > 1024 or x.device.type != 'cpu' or not _low_precision(x)
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return F.conv2d(x, weight, bias)
    y = torch.mm(x.permute(0, 2, 3, 1).reshape(b * h * w, c), weight.view(weight.shape[0], c).t())
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.view(b, h, w, -1).permute(0, 3, 1, 2)


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: 1×1 expand to 2·hidden, 3×3 depthwise, GELU(x1)·x2, 1×1 project.

    Args:
        dim (int): Number of channels.
        ffn_expansion_factor (float): hidden = int(dim * ffn_expansion_factor).
        bias (bool): Bias in the convolutions.
    """

    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.hidden = hidden
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def _halves(self, x):
        """project_in then dwconv for the first (gate) and second (value) half of the hidden channels, each with
        its half of the weights. ``chunk`` splits every weight once, so in the backward pass the two halves'
        gradients are joined by one concatenation per weight (slicing each half on its own zero-pads both
        gradients to the full weight and adds them)."""
        params = (self.project_in.weight, self.project_in.bias, self.dwconv.weight, self.dwconv.bias)
        if _autocast_enabled(x.device.type):  # one cast per weight, not one per half (each half is a new tensor)
            params = [None if t is None else t.to(torch.get_autocast_dtype(x.device.type)) for t in params]
        w_in, b_in, w_dw, b_dw = (None if t is None else t.chunk(2) for t in params)
        b_in, b_dw = b_in or (None, None), b_dw or (None, None)
        return [F.conv2d(pointwise_conv(x, w_in[i], b_in[i]), w_dw[i], b_dw[i], padding=1, groups=self.hidden)
                for i in (0, 1)]

    def forward(self, x):
        gate, value = self._halves(channels_last(x))
        return pointwise_conv(F.gelu(gate) * value, self.project_out.weight, self.project_out.bias)


class TransformerBlock(nn.Module):
    """Restormer transformer block: x + MDTA(LN(x)), then x + GDFN(LN(x)).

    Args:
        dim (int): Number of channels.
        num_heads (int): MDTA heads.
        ffn_expansion_factor (float): GDFN expansion. Default: 2.66.
        bias (bool): Bias in the convolutions. Default: False.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'. Default: 'WithBias'.
    """

    def __init__(self, dim, num_heads, ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias'):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = channels_last(x)
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def transformer_stage(num_blocks, dim, num_heads, ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias'):
    """``nn.Sequential`` of ``num_blocks`` TransformerBlocks of one width (one U-Net level)."""
    return nn.Sequential(*[
        TransformerBlock(dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type) for _ in range(num_blocks)
    ])


class OverlapPatchEmbed(nn.Module):
    """3×3 convolution from the image to ``embed_dim`` feature channels."""

    def __init__(self, in_c=3, embed_dim=48, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    """Halve the resolution, double the channels: 3×3 conv to C/2, then PixelUnshuffle(2)."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x):
        # channels-last out explicitly: on CUDA pixel_unshuffle returns a contiguous (NCHW) tensor, which every
        # following block would convert back (on the CPU it keeps channels-last input channels-last: a no-op)
        return channels_last(self.body(x))


class Upsample(nn.Module):
    """Double the resolution, halve the channels: 3×3 conv to 2C, then PixelShuffle(2)."""

    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x):
        # channels-last out explicitly: on CUDA pixel_shuffle returns a contiguous (NCHW) tensor (see Downsample)
        return channels_last(self.body(x))


def pad_to_multiple(x, multiple, mode='reflect'):
    """Pad the bottom/right of a B×C×H×W tensor so H and W become multiples of ``multiple``.

    Reflect padding as in the official code. When the pad is as large as the image (tiny inputs), reflect
    padding is applied in several steps, each smaller than the current size, so any size works (a 1-pixel
    side falls back to replicate).
    """
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    while pad_h or pad_w:
        h, w = x.shape[-2:]
        step_h, step_w = min(pad_h, h - 1), min(pad_w, w - 1)
        if (pad_h and step_h <= 0) or (pad_w and step_w <= 0):
            return F.pad(x, (0, pad_w, 0, pad_h), mode='replicate')
        x = F.pad(x, (0, step_w, 0, step_h), mode=mode)
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return x


def crop_to(x, h, w):
    """Undo :func:`pad_to_multiple`: keep the top-left h×w (a view)."""
    return x[..., :h, :w]


def crop_output(x, h, w):
    """An arch's final crop: :func:`crop_to` as a contiguous (B×C×H×W-ordered) tensor, so outputs have the usual
    layout even though the features were channels-last."""
    return crop_to(x, h, w).contiguous()
