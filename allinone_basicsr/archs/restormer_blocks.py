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
  norms) instead of normalising the two H·W-long maps (float32; in float16/bfloat16 or under autocast, where the
  raw product overflows float16 from 256² on, they are normalised first, as the official code does); the value
  mixing is folded into the output projection (``W_out · blockdiag(attn)``, a C×C matrix), so one 1×1
  convolution applies both.
* GDFN: the two halves (gate and value) are computed by two convolutions with slices of the same weights, so the
  backward pass never concatenates their gradients.
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
        q, k, v = self.qkv_dwconv(self.qkv(channels_last(x))).chunk(3, dim=1)
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

    float16/bfloat16 inputs or autocast: the raw products grow with the pixel count (H·W · |q|·|k|: 65536 at 256²
    with unit activations, float16's largest value is 65504), so there q and k are normalised first, as in the
    official code (cosines, at most 1 in magnitude, finite at any size). The result has q's dtype.
    """
    q, k = _pixels_by_channels(q, num_heads), _pixels_by_channels(k, num_heads)
    if q.dtype in (torch.float32, torch.float64) and not _autocast_enabled(q.device.type):
        logits = q.permute(0, 2, 3, 1) @ k.transpose(1, 2)  # (B, heads, d, HW) @ (B, heads, HW, d)
        q_norm = torch.linalg.vector_norm(q, dim=1).clamp_min(eps)  # (B, heads, d)
        k_norm = torch.linalg.vector_norm(k, dim=1).clamp_min(eps)
        return (logits / (q_norm.unsqueeze(-1) * k_norm.unsqueeze(-2)) * temperature).softmax(dim=-1)
    return _low_precision_channel_attention(q, k, temperature, eps)


def _autocast_enabled(device_type):
    """Whether autocast is on for this device type (False for types autocast does not know, such as 'meta')."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


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
    heads, d = attn.shape[1], attn.shape[2]
    weight = project_out.weight.view(-1, heads, d)
    folded = torch.einsum('ohi,bhij->bohj', weight, attn).reshape(b, -1, c)  # (B, C_out, C) per sample
    if b == 1:
        return F.conv2d(channels_last(v), folded.view(-1, c, 1, 1), project_out.bias)
    y = _pixels_by_channels(v, 1).flatten(2) @ folded.transpose(1, 2)  # (B, HW, C_out)
    if project_out.bias is not None:
        y = y + project_out.bias
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

    def _half(self, x, half):
        """project_in then dwconv for the first (gate) or second (value) half of the hidden channels."""
        part = slice(half * self.hidden, (half + 1) * self.hidden)
        bias_in, bias_dw = (None if conv.bias is None else conv.bias[part] for conv in (self.project_in, self.dwconv))
        y = F.conv2d(x, self.project_in.weight[part], bias_in)
        return F.conv2d(y, self.dwconv.weight[part], bias_dw, padding=1, groups=self.hidden)

    def forward(self, x):
        x = channels_last(x)
        return self.project_out(F.gelu(self._half(x, 0)) * self._half(x, 1))


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
