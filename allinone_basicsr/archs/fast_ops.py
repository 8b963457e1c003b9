"""The fast formulations of the Restormer blocks' operations: the same outputs as the official formulas (float32
bit for bit, lower precisions within their rounding; ``tests/test_archs/test_fast_blocks.py``,
``test_bf16_blocks.py``, ``test_mdta_precision.py``), fewer passes over the H·W-long maps.

* Layout: feature maps stay in channels-last memory (:func:`channels_last`): oneDNN's 1×1 and depthwise
  convolutions are several times faster on it on CPU, and cuDNN's tensor-core kernels take it under autocast.
* MDTA's channel attention (:func:`channel_attention`): q and k are L2-normalised *after* the C/h × C/h product
  (the logits divided by the outer product of the norms) instead of normalising the two H·W-long maps (float32);
  in float16, where the raw product overflows from 256² on, they are normalised first, as the official code does;
  in bfloat16, normalised first in one pass per map with a hand-written backward that writes the q/k gradients
  channels-last (:class:`_BFloat16ChannelAttention`; norms, temperature and softmax in float32).
* The value mixing is folded into the output projection (:func:`attend_and_project`: ``W_out · blockdiag(attn)``, a
  C×C matrix per sample), so one 1×1 convolution applies both.
* Small low-precision 1×1 convolutions on the CPU as one matmul (:func:`pointwise_conv`).
* Attention over tokens through :func:`aligned_attention`, in the form the fused SDPA kernels accept.
"""
import torch
from torch.nn import functional as F


def channels_last(x):
    """``x`` in channels-last memory (a no-op when it already is); shape and values unchanged."""
    return x.contiguous(memory_format=torch.channels_last)


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
    autocast = autocast_enabled(q.device.type)
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
    if autocast_enabled(q.device.type):
        q, k = q.to(torch.get_autocast_dtype(q.device.type)), k.to(torch.get_autocast_dtype(q.device.type))
    q, k = q.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1)  # (B, heads, d, HW)
    if torch.compiler.is_compiling():
        # torch.compile: the same formula in plain autograd ops (the compiler fuses the elementwise passes itself;
        # the per-head loop of the hand-written backward would be traced over symbolic sizes)
        q_unit, k_unit = (F.normalize(t.float(), dim=-1, eps=eps).to(t.dtype) for t in (q, k))
        cosines = (q_unit @ k_unit.transpose(-1, -2)).float()
        return (cosines * temperature.float()).softmax(dim=-1).to(q.dtype)
    return _BFloat16ChannelAttention.apply(q, k, temperature, eps)


# _per_head_matmul: several heads of maps under this many pixels take one batched matmul, whose operand copies (the
# heads of a channels-last map are strided) cost less than a BLAS call per sample and head; from this size on the
# copies cost more. The crossing point measured on 2-core AVX-512 hosts; outputs are equal either way.
PER_HEAD_MM_MIN_PIXELS = 2048


def _per_head_matmul(a, b, out):
    """``a @ b`` into ``out``, all (B, heads, ·, ·), as one ``torch.mm`` per sample and head: BLAS takes each
    head's strided matrix of a channels-last map as it is (a leading dimension), whereas ``bmm`` copies operands
    whose batch stride is not a whole matrix, as the heads of a channels-last map are. Several heads of maps under
    2048 pixels, and other devices: one batched matmul (a loop of small calls or kernel launches would cost more
    than the copies)."""
    if a.device.type != 'cpu' or (a.shape[1] > 1 and max(a.shape[-2:]) < PER_HEAD_MM_MIN_PIXELS):
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


def autocast_enabled(device_type):
    """Whether autocast is on for this device type (False for types autocast does not know, such as 'meta')."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _low_precision(t):
    """Whether ``t`` is computed on in a low precision: a float16/bfloat16 tensor, or autocast on for its device."""
    return t.dtype not in (torch.float32, torch.float64) or autocast_enabled(t.device.type)


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


# pointwise_conv: low-precision maps of at most this many pixels (32×32: the deep levels, where the weights hold as
# many numbers as the maps or more) take one matmul, without oneDNN's per-call reordering of the weights, which
# there costs as much as the product itself. float32 always takes the convolution (bit for bit the official one).
MATMUL_MAX_PIXELS = 1024


def pointwise_conv(x, weight, bias=None):
    """1×1 convolution of ``x``; ``weight`` is (C_out, C_in, 1, 1).

    bfloat16 / float16 on the CPU, on a dense channels-last map of at most 32×32 pixels: one matmul on the
    (pixels, C_in) view instead, which is the same product without oneDNN's per-call reordering of the weights (at
    the deep levels the weights are as large as the maps: 510×192 or 1021×384 against 1024 or 256 pixels), ~15–30%
    less time forward + backward there. Elsewhere (and always in float32, whose results stay bit for bit those of
    the convolution): ``F.conv2d``.
    """
    b, c, h, w = x.shape
    if (h * w > MATMUL_MAX_PIXELS or x.device.type != 'cpu' or not _low_precision(x)
            or not x.is_contiguous(memory_format=torch.channels_last)):
        return F.conv2d(x, weight, bias)
    y = torch.mm(x.permute(0, 2, 3, 1).reshape(b * h * w, c), weight.view(weight.shape[0], c).t())
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.view(b, h, w, -1).permute(0, 3, 1, 2)


SDPA_HEAD_ALIGNMENT = 8  # CUDA's memory-efficient kernel: head sizes multiple of 8 (fp16/bf16), 4 (fp32, sm80+)


def aligned_attention(q, k, v, scale):
    """``F.scaled_dot_product_attention(q, k, v, scale=scale)`` for (..., tokens, d) inputs, in a form that the fused
    CUDA kernels take for any head size d and dtype (and the fused CPU kernel always takes): contiguous, head size
    a multiple of :data:`SDPA_HEAD_ALIGNMENT`.

    A head size that is not a multiple of :data:`SDPA_HEAD_ALIGNMENT` is zero-padded to one: the padded entries add
    0 to every q·k, and the padded columns of v give output columns of 0, which are dropped, so the result is the
    attention of the unpadded inputs (equal within float rounding: the kernel sums in another order). ``scale`` is
    explicit because the default, ``1/√d``, would change with the padded d. Contiguous inputs have the unit last-dim
    stride the fused kernels need (otherwise SDPA falls back to the math kernel, which stores tokens × tokens). No
    kernel is forced: ``torch.nn.attention.sdpa_kernel`` changes process-wide flags, which races between the
    threads of DataParallel. Under a jit trace (the complexity analysis) nothing is padded, so the counted MACs are
    the model's.
    """
    d = q.shape[-1]
    if k.shape[-1] != d or v.shape[-1] != d:
        raise ValueError(f'aligned_attention: q, k, v need one head size, got {d}, {k.shape[-1]}, {v.shape[-1]}')
    # Not in a trace: the complexity analysis (a jit trace) counts the model's MACs, which padding does not change.
    pad = 0 if torch.jit.is_tracing() else -d % SDPA_HEAD_ALIGNMENT
    if pad:  # one copy either way: the padded tensor, or the contiguous one
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out[..., :d] if pad else out
