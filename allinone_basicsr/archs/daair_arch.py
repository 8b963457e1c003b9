"""DaAIR: degradation-aware low-rank experts with a supervised router and an EMA controller (arXiv 2405.15475).

Zamfir et al., "Efficient Degradation-aware Any Image Restoration". No official code exists; the layout and every
default follow docs/methods.md §daair-sources (numbers the paper does not state are assumptions there, kept as
defaults and exposed as options).

- Restormer-style 4-level U-Net (MDTA, GDFN, LayerNorm, pixel-(un)shuffle down/up from ``restormer_blocks``),
  concatenated skips fused by a 1×1 conv at every level, plain Restormer refinement blocks, global residual.
- Every encoder and decoder block starts with a **DaLe** (degradation-aware learner): a low-rank *agnostic*
  expert (1×1 down-projection to rank C/ρ, then a Conv2Former convolutional modulation) seen by every sample,
  multiplied by one *specialised* expert per degradation chosen per sample by a router (GAP → linear → top-1),
  then one shared 1×1 up-projection. The whole batch runs in one pass with per-sample expert weights (gathered on
  the device by the routing choice): no per-sample loop, no host sync, every expert in the autograd graph.
- Decoder blocks replace self-attention by cross-attention whose keys come from a **controller**: a copy of the
  encoder's agnostic expert at the same level, updated only by ``θ ← α·θ + (1−α)·θ_enc`` after every optimizer step
  (:meth:`DaAIR.after_optimizer_step`). Its weights are buffers: in the state dict, never in the optimizer.
- ``forward(x, return_task_logits=True)`` also returns every router's logits (for ``TaskClassificationLoss``);
  ``task_labels`` routes by the given classes instead of the routers' votes (optional teacher forcing).
- Ablation switches (paper Table 4): ``agnostic_expert``, ``specialised_experts`` and ``controller`` remove a part
  entirely (no parameters, buffers or compute of it); all three off is the scaled-down Restormer baseline. The
  routing loss is switched in the options (omit ``train.cls_opt``). Defaults: the full model, state dict unchanged.
"""
from operator import attrgetter

import torch
import torch.nn.functional as F
from torch import nn

from allinone_basicsr.utils.arch_options import check_arch_options

from basicsr.utils.registry import ARCH_REGISTRY
from .arch_util import AfterStepArch, TaskLogitsArch
from .fast_ops import attend_and_project, channel_attention, channels_last
from .restormer_blocks import (GDFN, MDTA, Downsample, LayerNorm, OverlapPatchEmbed, Upsample, crop_output,
                               pad_to_multiple, transformer_stage)


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


# A LowRankExpert's parameters in the order DaLe packs them per sample (``DaLe.expert_weights``); the biases exist
# with ``bias=True`` only.
EXPERT_WEIGHTS = ('down.weight', 'norm.body.weight', 'norm.body.bias', 'attn.weight', 'value.weight', 'attn_dw.weight',
                  'proj.weight')
EXPERT_BIASES = ('attn.bias', 'value.bias', 'attn_dw.bias', 'proj.bias')


def parameters_to_buffers(module):
    """Turn every parameter of ``module`` into a buffer of the same name (kept in the state dict, never trained)."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().clone())
    return module


class DaLe(nn.Module):
    """Degradation-aware learner: agnostic expert ⊙ routed specialised expert, then a shared up-projection.

    Returns ``(features, router_logits)``, the features channels-last. Each sample goes to one expert
    (``task_labels`` if given, else the router's argmax); with ``gate_by_prob`` the expert output is scaled by the
    router's probability of that expert, so the restoration loss trains the router too.

    Ablations (paper Table 4): ``agnostic=False`` leaves out the agnostic expert (``up(routed expert)``);
    ``experts=False`` leaves out the specialised experts and the router (``up(agnostic)``; the logits are None).
    At least one of the two must stay (without both there is no DaLe: the block leaves it out).
    """

    def __init__(self, dim, rank, num_experts, kernel_size=11, bias=False, gate_by_prob=True, agnostic=True,
                 experts=True):
        super().__init__()
        if not (agnostic or experts):
            raise ValueError('DaLe needs the agnostic expert or the specialised experts (or both)')
        self.num_experts = num_experts
        self.gate_by_prob = gate_by_prob
        self.rank = rank
        self.kernel_size = kernel_size
        # built in this order (agnostic, experts, router, up) so the full model's initialisation is unchanged
        self.agnostic = LowRankExpert(dim, rank, kernel_size, bias) if agnostic else None
        self.experts = nn.ModuleList(LowRankExpert(dim, rank, kernel_size, bias)
                                     for _ in range(num_experts)) if experts else None
        self.router = nn.Linear(dim, num_experts, bias=False) if experts else None
        self.up = nn.Conv2d(rank, dim, 1, bias=False)
        # The order in which each expert's weights are laid out in one row of the per-sample weight table (attn and
        # value side by side: one product computes both); every parameter of an expert is in it.
        self._packed = []
        if experts:
            self._packed = [name for name in EXPERT_WEIGHTS + EXPERT_BIASES
                            if name in dict(self.experts[0].named_parameters())]
            assert sorted(self._packed) == sorted(n for n, _ in self.experts[0].named_parameters())

    def expert_weights(self, choice):
        """Every weight of expert ``choice[b]`` for each sample b: name → (B, *shape), plus ``'attn+value.weight'``,
        (B, 2·rank, rank), the two 1×1 weights stacked (a view: they are adjacent in the table).

        The experts' parameters are packed into one (experts, P) table on every call (so each one stays in the
        autograd graph, with a zero gradient when no sample chose it) and its rows gathered by ``choice`` on the
        device: no group sizes are read back to the host."""
        getters = [attrgetter(name) for name in self._packed]
        table = torch.stack([torch.cat([get(expert).reshape(-1) for get in getters]) for expert in self.experts])
        rows = table.index_select(0, choice)
        shapes = [get(self.experts[0]).shape for get in getters]
        weights = {name: part.view(-1, *shape) for name, shape, part in
                   zip(self._packed, shapes, rows.split([shape.numel() for shape in shapes], dim=1))}
        start = self._packed.index('attn.weight')
        assert self._packed[start + 1] == 'value.weight'
        offset = sum(shape.numel() for shape in shapes[:start])
        weights['attn+value.weight'] = rows[:, offset:offset + 2 * self.rank**2].view(-1, 2 * self.rank, self.rank)
        return weights

    def route(self, h, choice):
        """Run each sample through expert ``choice[b]`` in one pass over the whole batch with per-sample weights
        (the same function as ``self.experts[choice[b]](h[b])``, one expert's compute per sample).

        The 1×1 convolutions are batched matrix products over the channels-last (B, H·W, C) view, the LayerNorm
        takes each sample's affine, and the depthwise k×k convolution is one grouped convolution (groups = B·rank)
        with each sample's kernels. Nothing depends on how many samples each expert gets: no host sync (grouping the
        samples by expert would read the group sizes back from the device in every block), and the shapes, hence cuDNN's
        autotuned algorithms, stay the same from batch to batch. Every expert's weights are in the graph (see
        :meth:`expert_weights`): DistributedDataParallel needs no unused-parameter search although a rank's batch
        often holds no sample of some class. Returns (B, rank, H, W), channels-last.
        """
        b, c, height, width = h.shape
        r, k = self.rank, self.kernel_size
        w = self.expert_weights(choice)
        x = channels_last(h).permute(0, 2, 3, 1).reshape(b, height * width, c)  # a view of the channels-last map
        z = x @ w['down.weight'].view(b, r, c).transpose(1, 2)  # (B, HW, r)
        n = torch.addcmul(w['norm.body.bias'].unsqueeze(1), F.layer_norm(z, (r, ), eps=self.experts[0].norm.body.eps),
                          w['norm.body.weight'].unsqueeze(1))
        # attn and value: one product with the (r → 2r) matrix of both (adjacent in the weight table)
        attn_value = n @ w['attn+value.weight'].transpose(1, 2)
        if 'attn.bias' in w:
            attn_value = attn_value + torch.cat([w['attn.bias'], w['value.bias']], dim=1).unsqueeze(1)
        a, v = attn_value.split(r, dim=2)
        # depthwise conv of all samples at once: channels (b, i) → b·r + i of one image, laid out channels-last as
        # (H, W, B·r) (for one sample a view, no copy); groups = B·r so each sample's channels get its kernels
        g = F.gelu(a).view(b, height, width, r).permute(1, 2, 0, 3).reshape(1, height, width, b * r)
        d = F.conv2d(g.permute(0, 3, 1, 2), w['attn_dw.weight'].reshape(b * r, 1, k, k),
                     w['attn_dw.bias'].reshape(-1) if 'attn_dw.bias' in w else None, padding=k // 2, groups=b * r)
        d = d.permute(0, 2, 3, 1).view(height, width, b, r).permute(2, 0, 1, 3)  # (B, H, W, r) view
        m = (d * v.view(b, height, width, r)).reshape(b, height * width, r)
        proj_in = z if 'proj.bias' not in w else z + w['proj.bias'].unsqueeze(1)
        out = torch.baddbmm(proj_in, m, w['proj.weight'].view(b, r, r).transpose(1, 2))  # z + proj(...)
        return out.view(b, height, width, r).permute(0, 3, 1, 2)  # (B, r, H, W), channels-last

    def forward(self, h, task_labels=None):
        h = channels_last(h)
        if self.experts is None:  # ablation: the agnostic expert alone, no router
            return channels_last(self.up(self.agnostic(h))), None
        logits = self.router(h.mean(dim=(2, 3)))
        choice = task_labels if task_labels is not None else logits.argmax(dim=1)
        specialised = self.route(h, choice)
        if self.gate_by_prob:
            specialised = specialised * logits.softmax(dim=1).gather(1, choice[:, None])[:, :, None, None]
        modulated = specialised if self.agnostic is None else self.agnostic(h) * specialised
        # channels-last out even where a kernel returns another layout (CUDA); a no-op otherwise
        return channels_last(self.up(modulated)), logits


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
    ``x + XAttn(q, v = DaLe(LN x), k = controller(LN x))``; then ``x + GDFN(LN x)`` in both.

    Without a controller (``controller=False``) a decoder block is an encoder block; without both experts
    (``agnostic`` and ``experts`` False) there is no DaLe: ``x + MDTA(LN x)``, a plain Restormer block."""

    def __init__(self, dim, num_heads, rank, num_experts, ffn_expansion_factor, bias, LayerNorm_type, kernel_size,
                 gate_by_prob, decoder=False, agnostic=True, experts=True, controller=True):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.dale = DaLe(dim, rank, num_experts, kernel_size, bias, gate_by_prob, agnostic, experts) \
            if agnostic or experts else None
        if decoder and controller:
            self.controller = parameters_to_buffers(LowRankExpert(dim, rank, kernel_size, bias))
            self.attn = ControllerCrossAttention(dim, rank, num_heads, bias)
        else:
            self.controller = None
            self.attn = MDTA(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x, logits, task_labels=None):
        h = self.norm1(x)
        f = h
        if self.dale is not None:
            f, block_logits = self.dale(h, task_labels)
            if block_logits is not None:
                logits.append(block_logits)
        x = x + (self.attn(f, self.controller(h)) if self.controller is not None else self.attn(f))
        return x + self.ffn(self.norm2(x))


@ARCH_REGISTRY.register()
@check_arch_options
class DaAIR(TaskLogitsArch, AfterStepArch, nn.Module):
    """DaAIR (defaults: docs/methods.md §daair-sources, ≈6.2M parameters with 3 experts).

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
        agnostic_expert (bool): The degradation-agnostic expert of every DaLe. False: each DaLe is the routed
            specialised expert alone, ``up(E_i(h))`` (no modulation). Default: True.
        specialised_experts (bool): The specialised experts and their routers. False: each DaLe is the agnostic
            expert alone, ``up(A(h))``; the net has no router and no task logits (``has_task_logits`` is False on
            the instance, so ``train.cls_opt`` is ignored with a warning and ``calculate_routing_accuracy`` cannot
            be scored). Default: True.
        controller (bool): The EMA controller of every decoder block. False: decoder blocks use MDTA self-attention
            on the DaLe features, as encoder blocks do; no controller buffers, no key projection. Needs
            ``agnostic_expert`` (the controller is an EMA copy of the encoder's agnostic expert). Default: True.

    Ablations of the paper's Table 4 (3-task average PSNR/SSIM). Its four column headers were stripped from the
    paper text; the reading used (argued from the text in docs/tables.md, "DaAIR Table 4: which column is which")
    is 1 = agnostic expert, 2 = specialised experts, 3 = controller, 4 = routing (auxiliary classification) loss.
    The rows as switches (the loss column is ``train.cls_opt`` in the option file):

    - Baseline, "a scaled-down Restormer" (App. A): ``agnostic_expert``, ``specialised_experts`` and
      ``controller`` all False, no ``cls_opt``. Blocks are plain Restormer blocks (MDTA + GDFN) in DaAIR's U-Net
      (same width, depths, heads, 1×1 skip fusions and refinement), i.e. the model the paper builds DaAIR on by
      adding the modules; a Restormer/PromptIR config of the same size would also change the skeleton (level-1
      decoder at 2C, no level-1 fusion), mixing skeleton and module effects. 31.86/.911.
    - (a) columns 2, 3: ``agnostic_expert=False, controller=False``, no ``cls_opt``. The controller column is
      ticked, but the controller is an EMA copy of the agnostic expert this row lacks (``controller`` needs
      ``agnostic_expert``), so it is left out. 32.12/.911.
    - (b) columns 1, 3, 4: ``specialised_experts=False``. The loss column is ticked, but without specialised
      experts there is no router for it to train: the option file has no ``cls_opt``. 32.41/.913.
    - (c) columns 1, 2, 4: ``controller=False``, with ``cls_opt``. 32.44/.913.
    - (d) columns 1, 2, 3: the full arch without ``cls_opt`` (routers trained only through ``gate_by_prob``).
      32.23/.912.
    - DaAIR, all four: the defaults. 32.51/.913.

    The other reading (3 = routing loss, 4 = controller) is ``tables/daair_table4_alt.yml``; its row (a),
    specialised experts with the routing loss, is ``agnostic_expert=False, controller=False`` with ``cls_opt``.
    """

    @classmethod
    def missing_task_logits(cls, options):
        if not options.get('specialised_experts', True):
            return 'without specialised_experts has no routers'
        return None

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
                 gate_by_prob=True,
                 agnostic_expert=True,
                 specialised_experts=True,
                 controller=True):
        super().__init__()
        levels = len(num_blocks)
        if len(heads) != levels or len(num_dec_blocks) != levels - 1:
            raise ValueError(f'num_blocks {list(num_blocks)} and heads {list(heads)} need one entry per level, '
                             f'num_dec_blocks {list(num_dec_blocks)} one per level except the latent')
        if not 0.0 <= controller_momentum <= 1.0:
            raise ValueError(f'controller_momentum must be in [0, 1], got {controller_momentum}')
        if controller and not agnostic_expert:
            raise ValueError('controller: true needs agnostic_expert: true (the controller is an EMA copy of the '
                             "encoder's agnostic expert); set controller: false as well")
        widths = [dim * 2**level for level in range(levels)]
        for width in widths:
            if width % rank_ratio:
                raise ValueError(f'rank_ratio {rank_ratio} does not divide the level width {width}')
        self.num_experts = num_experts
        self.controller_momentum = controller_momentum
        self.has_task_logits = self.missing_task_logits({'specialised_experts': specialised_experts}) is None
        opt = dict(num_experts=num_experts, ffn_expansion_factor=ffn_expansion_factor, bias=bias,
                   LayerNorm_type=LayerNorm_type, kernel_size=expert_kernel_size, gate_by_prob=gate_by_prob,
                   agnostic=agnostic_expert, experts=specialised_experts, controller=controller)

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
            for level, decoder in enumerate(self.decoders) for j, block in enumerate(decoder)
            if block.controller is not None]
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
