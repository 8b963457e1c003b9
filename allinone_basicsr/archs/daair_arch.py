"""DaAIR: degradation-aware low-rank experts with a supervised router and an EMA controller (seed paper 001).

Zamfir et al., "Efficient Degradation-aware Any Image Restoration". No official code exists; the layout and every
default follow ``shared/specs/daair.md`` (numbers the paper does not state are assumptions there, kept as defaults
and exposed as options).

- Restormer-style 4-level U-Net (MDTA, GDFN, LayerNorm, pixel-(un)shuffle down/up from ``restormer_blocks``),
  concatenated skips fused by a 1×1 conv at every level, plain Restormer refinement blocks, global residual.
- Every encoder and decoder block starts with a **DaLe** (degradation-aware learner): a low-rank *agnostic*
  expert (1×1 down-projection to rank C/ρ, then a Conv2Former convolutional modulation) seen by every sample,
  multiplied by one *specialised* expert per degradation chosen per sample by a router (GAP → linear → top-1),
  then one shared 1×1 up-projection. The batch is split into per-expert groups (index_select), not looped over.
- Decoder blocks replace self-attention by cross-attention whose keys come from a **controller**: a copy of the
  encoder's agnostic expert at the same level, updated only by ``θ ← α·θ + (1−α)·θ_enc`` after every optimizer step
  (:meth:`DaAIR.after_optimizer_step`). Its weights are buffers: in the state dict, never in the optimizer.
- ``forward(x, return_task_logits=True)`` also returns every router's logits (for ``TaskClassificationLoss``);
  ``task_labels`` routes by the given classes instead of the routers' votes (optional teacher forcing).
"""
import torch
import torch.nn.functional as F
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY
from .arch_util import check_arch_options
from .restormer_blocks import (GDFN, MDTA, Downsample, LayerNorm, OverlapPatchEmbed, Upsample, crop_output,
                               attend_and_project, channel_attention, pad_to_multiple, transformer_stage)


class LowRankExpert(nn.Module):
    """1×1 down-projection (C → rank) and a Conv2Former convolutional modulation on the rank channels:
    ``z + proj(DW_k(GELU(a(LN z))) ⊙ v(LN z))`` with ``z = down(x)``."""

    def __init__(self, dim, rank, kernel_size=11, bias=False):
        super().__init__()
        self.down = nn.Conv2d(dim, rank, 1, bias=False)
        self.norm = LayerNorm(rank, 'WithBias')
        self.attn = nn.Conv2d(rank, rank, 1, bias=bias)
        self.attn_dw = nn.Conv2d(rank, rank, kernel_size, padding=kernel_size // 2, groups=rank, bias=bias)
        self.value = nn.Conv2d(rank, rank, 1, bias=bias)
        self.proj = nn.Conv2d(rank, rank, 1, bias=bias)

    def forward(self, x):
        z = self.down(x)
        n = self.norm(z)
        return z + self.proj(self.attn_dw(F.gelu(self.attn(n))) * self.value(n))


def parameters_to_buffers(module):
    """Turn every parameter of ``module`` into a buffer of the same name (kept in the state dict, never trained)."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().clone())
    return module


class DaLe(nn.Module):
    """Degradation-aware learner: agnostic expert ⊙ routed specialised expert, then a shared up-projection.

    Returns ``(features, router_logits)``. Each sample goes to one expert (``task_labels`` if given, else the
    router's argmax); with ``gate_by_prob`` the expert output is scaled by the router's probability of that expert,
    so the restoration loss trains the router too.
    """

    def __init__(self, dim, rank, num_experts, kernel_size=11, bias=False, gate_by_prob=True):
        super().__init__()
        self.num_experts = num_experts
        self.gate_by_prob = gate_by_prob
        self.agnostic = LowRankExpert(dim, rank, kernel_size, bias)
        self.experts = nn.ModuleList(LowRankExpert(dim, rank, kernel_size, bias) for _ in range(num_experts))
        self.router = nn.Linear(dim, num_experts, bias=False)
        self.up = nn.Conv2d(rank, dim, 1, bias=False)

    def route(self, h, choice):
        """Run each sample through expert ``choice[b]``: group the batch by expert, run each group once, restore
        the batch order.

        An expert whose group is empty still runs (on zero samples, which costs nothing), so every expert's weights
        are in the autograd graph with a zero gradient. DistributedDataParallel then needs no unused-parameter search
        (``find_unused_parameters``) although a rank's batch often holds no sample of some class.
        """
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=self.num_experts).tolist()
        groups = h.index_select(0, order).split(counts)
        outs = [expert(group) for expert, group in zip(self.experts, groups)]
        return torch.cat(outs).index_select(0, torch.argsort(order))

    def forward(self, h, task_labels=None):
        logits = self.router(h.mean(dim=(2, 3)))
        choice = task_labels if task_labels is not None else logits.argmax(dim=1)
        specialised = self.route(h, choice)
        if self.gate_by_prob:
            specialised = specialised * logits.softmax(dim=1).gather(1, choice[:, None])[:, :, None, None]
        return self.up(self.agnostic(h) * specialised), logits


class ControllerCrossAttention(nn.Module):
    """MDTA-style (channel) cross-attention: queries and values from the DaLe features, keys from the controller
    features (rank channels, lifted to C by a 1×1 and a 3×3 depthwise conv)."""

    def __init__(self, dim, rank, num_heads, bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.qv_dwconv = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2, bias=bias)
        self.k = nn.Conv2d(rank, dim, 1, bias=bias)
        self.k_dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, features, controller_features):
        q, v = self.qv_dwconv(self.qv(features)).chunk(2, dim=1)
        k = self.k_dwconv(self.k(controller_features))
        return attend_and_project(v, channel_attention(q, k, self.num_heads, self.temperature), self.project_out)


class DaAIRBlock(nn.Module):
    """Pre-norm block. Encoder: ``x + MDTA(DaLe(LN x))``; decoder (with a controller):
    ``x + XAttn(q, v = DaLe(LN x), k = controller(LN x))``; then ``x + GDFN(LN x)`` in both."""

    def __init__(self, dim, num_heads, rank, num_experts, ffn_expansion_factor, bias, LayerNorm_type, kernel_size,
                 gate_by_prob, decoder=False):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.dale = DaLe(dim, rank, num_experts, kernel_size, bias, gate_by_prob)
        if decoder:
            self.controller = parameters_to_buffers(LowRankExpert(dim, rank, kernel_size, bias))
            self.attn = ControllerCrossAttention(dim, rank, num_heads, bias)
        else:
            self.controller = None
            self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x, logits, task_labels=None):
        h = self.norm1(x)
        f, block_logits = self.dale(h, task_labels)
        logits.append(block_logits)
        x = x + (self.attn(f, self.controller(h)) if self.controller is not None else self.attn(f))
        return x + self.ffn(self.norm2(x))


@ARCH_REGISTRY.register()
@check_arch_options
class DaAIR(nn.Module):
    """DaAIR (defaults: ``shared/specs/daair.md`` §6, ≈6.2M parameters with 3 experts).

    Args:
        inp_channels (int): Input channels. Default: 3.
        out_channels (int): Output channels. Default: 3.
        dim (int): Width of level 1; doubled per level. Default: 32 (assumption).
        num_blocks (list[int]): Encoder blocks per level, level 1 to latent. Default: [2, 3, 3, 4] (assumption).
        num_dec_blocks (list[int]): Decoder blocks per level, **level 1 first** (level 1, 2, 3).
            Default: [2, 3, 3] (assumption).
        num_refinement_blocks (int): Plain Restormer blocks at level 1 after the decoder. Default: 2.
        heads (list[int]): Attention heads per level. Default: [1, 2, 4, 8].
        ffn_expansion_factor (float): GDFN expansion. Default: 2.0 (assumption).
        bias (bool): Bias in the convolutions. Default: False.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'. Default: 'WithBias'.
        num_experts (int): Specialised experts = degradation classes (3-task: 3, 5-task: 5). Default: 3.
        rank_ratio (int): ρ: expert rank = level width / ρ. Default: 8 (assumption).
        expert_kernel_size (int): Depthwise kernel of the Conv2Former modulation. Default: 11 (assumption).
        controller_momentum (float): α of the controller update θ ← α·θ + (1−α)·θ_enc. Default: 0.999 (assumption).
        gate_by_prob (bool): Scale the routed expert by its router probability. Default: True.
    """
    has_task_logits = True

    def __init__(self,
                 inp_channels=3,
                 out_channels=3,
                 dim=32,
                 num_blocks=(2, 3, 3, 4),
                 num_dec_blocks=(2, 3, 3),
                 num_refinement_blocks=2,
                 heads=(1, 2, 4, 8),
                 ffn_expansion_factor=2.0,
                 bias=False,
                 LayerNorm_type='WithBias',
                 num_experts=3,
                 rank_ratio=8,
                 expert_kernel_size=11,
                 controller_momentum=0.999,
                 gate_by_prob=True):
        super().__init__()
        levels = len(num_blocks)
        if len(heads) != levels or len(num_dec_blocks) != levels - 1:
            raise ValueError(f'num_blocks {list(num_blocks)} and heads {list(heads)} need one entry per level, '
                             f'num_dec_blocks {list(num_dec_blocks)} one per level except the latent')
        if not 0.0 <= controller_momentum <= 1.0:
            raise ValueError(f'controller_momentum must be in [0, 1], got {controller_momentum}')
        widths = [dim * 2**level for level in range(levels)]
        for width in widths:
            if width % rank_ratio:
                raise ValueError(f'rank_ratio {rank_ratio} does not divide the level width {width}')
        self.num_experts = num_experts
        self.controller_momentum = controller_momentum
        opt = dict(num_experts=num_experts, ffn_expansion_factor=ffn_expansion_factor, bias=bias,
                   LayerNorm_type=LayerNorm_type, kernel_size=expert_kernel_size, gate_by_prob=gate_by_prob)

        def stage(level, count, decoder):
            return nn.ModuleList(DaAIRBlock(widths[level], heads[level], widths[level] // rank_ratio,
                                            decoder=decoder, **opt) for _ in range(count))

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim, bias=False)
        self.encoders = nn.ModuleList(stage(level, n, False) for level, n in enumerate(num_blocks))
        self.downs = nn.ModuleList(Downsample(widths[level]) for level in range(levels - 1))
        self.ups = nn.ModuleList(Upsample(widths[level + 1]) for level in range(levels - 1))
        self.fusions = nn.ModuleList(nn.Conv2d(2 * widths[level], widths[level], 1, bias=bias)
                                     for level in range(levels - 1))
        self.decoders = nn.ModuleList(stage(level, n, True) for level, n in enumerate(num_dec_blocks))
        self.refinement = transformer_stage(num_refinement_blocks, dim, heads[0], ffn_expansion_factor, bias,
                                            LayerNorm_type)
        self.output = nn.Conv2d(dim, out_channels, 3, padding=1, bias=bias)
        self.padder_size = 2**(levels - 1)

        # controller j of decoder level l follows encoder block min(j, last) of level l; it starts as a copy
        self._controller_pairs = [
            (block.controller, self.encoders[level][min(j, len(self.encoders[level]) - 1)].dale.agnostic)
            for level, decoder in enumerate(self.decoders) for j, block in enumerate(decoder)]
        with torch.no_grad():
            for controller, source in self._controller_pairs:
                assert [n for n, _ in controller.named_buffers()] == [n for n, _ in source.named_parameters()]
                for buf, param in zip(controller.buffers(), source.parameters()):
                    buf.copy_(param)

    def controller_pairs(self):
        """(controller, encoder agnostic expert) for every decoder block."""
        return self._controller_pairs

    @torch.no_grad()
    def after_optimizer_step(self):
        """θ_ctrl ← α·θ_ctrl + (1−α)·θ_enc for every controller (called by AllInOneModel after each step)."""
        alpha = self.controller_momentum
        for controller, source in self._controller_pairs:
            for buf, param in zip(controller.buffers(), source.parameters()):
                buf.mul_(alpha).add_(param.detach(), alpha=1 - alpha)

    def forward(self, inp, return_task_logits=False, task_labels=None):
        h, w = inp.shape[-2:]
        x_in = pad_to_multiple(inp, self.padder_size)
        logits = []
        x = self.patch_embed(x_in)
        skips = []
        for level, blocks in enumerate(self.encoders):
            for block in blocks:
                x = block(x, logits, task_labels)
            if level < len(self.downs):
                skips.append(x)
                x = self.downs[level](x)
        for level in reversed(range(len(self.decoders))):
            x = self.fusions[level](torch.cat([self.ups[level](x), skips[level]], dim=1))
            for block in self.decoders[level]:
                x = block(x, logits, task_labels)
        out = crop_output(self.output(self.refinement(x)) + x_in, h, w)
        return (out, logits) if return_task_logits else out
