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

How they compute (channels-last maps, MDTA's attention folded into its output projection, the bfloat16 path of the
channel attention, small 1×1 convolutions as matmuls) is ``fast_ops``: the same outputs as the official formulas.
GDFN computes its gate and value halves by two convolutions with halves of the same weights, so the backward pass
never concatenates their full-size activation gradients, only the small weight gradients. Under bfloat16 autocast
the residual stream, LayerNorm outputs and GELU gate stay in bfloat16 (LayerNorm computes its statistics in float32
internally), so there is no cast of the maps between blocks.
"""
import torch
from torch import nn
from torch.nn import functional as F

from .fast_ops import attend_and_project, autocast_enabled, channel_attention, channels_last, pointwise_conv


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
        if autocast_enabled(x.device.type):  # one cast per weight, not one per half (each half is a new tensor)
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
