"""PromptDSANet: PromptIR with multi-head dual (channel + spatial) self-attention and a ResNet prompt net (Rong
et al., "All-In-One Image Restoration", AAAI; no public code, the paper gives no name).

Built on :class:`~.promptir_arch.PromptIR`'s layout (levels, prompt steps) following
docs/methods.md §promptdsanet-sources:

- **Dsa block** (replaces every Restormer block): a channel branch (MDTA) and a spatial branch (global multi-head
  attention over pixels through :func:`aligned_attention`, whose inputs the fused flash / memory-efficient
  kernels accept, so memory stays linear in the pixel count), each with its own LayerNorm and residual, fused as
  ``w_c·X̂_C + w_p·X̂_P``; then the GDFN. ``spatial_window`` (opt-in deviation) computes the spatial branch within
  non-overlapping windows instead.
- **Prompt Block** = PIM(PGM(P_c, P_i, F), F): PromptIR's prompt generation with each prompt's channels scaled by
  the prompt information ``P_i = 1 + Linear(g)`` from the prompt net, then a Dsa block on [F; P], a 1×1 conv and
  (new) a 3×3 conv.
- **Prompt net**: a torchvision ResNet (50 by default) on the ImageNet-normalised degraded input; its pooled
  features ``g`` give every P_i and the degradation logits (``has_task_logits``; trained by TaskClassificationLoss).
  Weights come from a local file (``prompt_net_pretrained``) or random init; nothing is downloaded. BatchNorm
  statistics are frozen only with pretrained weights.
"""
import math
import os

import torch
from torch import nn

from allinone_basicsr.utils.arch_options import check_arch_options

from basicsr.utils.registry import ARCH_REGISTRY
from .arch_util import TaskLogitsArch
from .fast_ops import aligned_attention, channels_last
from .promptir_arch import _PromptIRLayout
from .restormer_blocks import GDFN, MDTA, LayerNorm, crop_output, crop_to, pad_to_multiple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SpatialSelfAttention(nn.Module):
    """MHPSA: multi-head attention over pixels. q, k, v from a 1×1 and a 3×3 depthwise conv; logits ``q·k / α``
    with a learnable α per head (init √d); global, or within ``window``×``window`` tiles when ``window`` is set."""

    def __init__(self, dim, num_heads, bias=False, window=None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'SpatialSelfAttention: num_heads {num_heads} does not divide dim {dim}')
        self.num_heads, self.window = num_heads, window
        self.alpha = nn.Parameter(torch.full((num_heads, 1, 1), math.sqrt(dim // num_heads)))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def _windows(self, t, b, h, w):
        """(b, h, w, c) pixels -> (b', tokens, c): the whole map, or one row of tokens per window."""
        c = t.shape[-1]
        if not self.window:
            return t.reshape(b, h * w, c)
        s = self.window
        return t.reshape(b, h // s, s, w // s, s, c).transpose(2, 3).reshape(-1, s * s, c)

    def _tokens(self, t):
        """(B, C, H, W) map -> (B', heads, tokens, d), a view when possible (:func:`aligned_attention` makes the one
        copy). Read through the channels-last view, so a global map costs one copy."""
        b, c, h, w = t.shape
        t = self._windows(t.permute(0, 2, 3, 1), b, h, w)
        return t.reshape(t.shape[0], t.shape[1], self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x):
        b, c, h, w = x.shape
        if self.window:
            x = pad_to_multiple(x, self.window)
        hp, wp = x.shape[-2:]
        q, k, v = (self._tokens(t) for t in self.qkv_dwconv(self.qkv(channels_last(x))).chunk(3, dim=1))
        out = aligned_attention(q / self.alpha, k, v, scale=1.0)  # fused kernel: memory linear in the tokens
        out = out.transpose(1, 2).reshape(out.shape[0], -1, c)  # (B', tokens, C)
        if self.window:
            s = self.window
            out = out.reshape(b, hp // s, wp // s, s, s, c).transpose(2, 3)
        out = out.reshape(b, hp, wp, c).permute(0, 3, 1, 2)  # channels-last map, like the other branches
        return crop_to(self.project_out(out), h, w)


class DsaBlock(nn.Module):
    """Dual self-attention block: ``Y = w_c·(X + MDTA(LN_c X)) + w_p·(X + MHPSA(LN_p X))``, then ``Y + GDFN(LN Y)``.

    With ``spatial=False`` it is exactly a Restormer TransformerBlock (same keys: norm1, attn, norm2, ffn).
    """

    def __init__(self, dim, num_heads, ffn_expansion_factor=2.66, bias=False, LayerNorm_type='WithBias',
                 spatial=True, spatial_window=None):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = MDTA(dim, num_heads, bias)
        self.spatial = spatial
        if spatial:
            self.norm_spatial = LayerNorm(dim, LayerNorm_type)
            self.attn_spatial = SpatialSelfAttention(dim, num_heads, bias, spatial_window)
            self.w_channel = nn.Parameter(torch.tensor(0.5))
            self.w_spatial = nn.Parameter(torch.tensor(0.5))
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = GDFN(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        y = x + self.attn(self.norm1(x))
        if self.spatial:
            y = self.w_channel * y + self.w_spatial * (x + self.attn_spatial(self.norm_spatial(x)))
        return y + self.ffn(self.norm2(y))


def _frozen_bn_train(module, mode=True):
    """``train()`` that keeps every BatchNorm in eval mode (frozen statistics)."""
    nn.Module.train(module, mode)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


class PromptNet(nn.Module):
    """ResNet on the degraded image -> pooled features g, degradation logits, and the prompt information per level.

    Args:
        prompt_dims (list[int]): Channels of the prompts to modulate (one ``1 + Linear(g)`` each, zero-initialised so
            training starts from PromptIR's prompts).
        num_classes (int): Degradation classes (logit columns).
        backbone (str): torchvision ResNet name ('resnet50', 'resnet18', ...). Default: 'resnet50'.
        pretrained (str | None): Local torchvision state-dict file (e.g. ``resnet50-0676ba61.pth``), or None for random
            init. No download ever happens.
    """

    def __init__(self, prompt_dims, num_classes=3, backbone='resnet50', pretrained=None):
        super().__init__()
        import torchvision
        valid = ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152']
        if backbone not in valid:
            raise ValueError(f'prompt_net {backbone!r} is not supported; valid: {valid}')
        self.body = getattr(torchvision.models, backbone)(weights=None)
        self.pretrained = pretrained
        if pretrained:
            path = os.path.expanduser(pretrained)
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f'network_g.prompt_net_pretrained: not found: {pretrained}. Put the torchvision ImageNet weights '
                    f'there (for resnet50: resnet50-0676ba61.pth from download.pytorch.org/models/) or set it to ~ '
                    f'(random init)')
            state = torch.load(path, map_location='cpu', weights_only=True)
            self.body.load_state_dict(state.get('state_dict', state), strict=True)
        features = self.body.fc.in_features
        self.body.fc = nn.Identity()
        self.classifier = nn.Linear(features, num_classes)
        self.prompt_info = nn.ModuleList(nn.Linear(features, p) for p in prompt_dims)
        for linear in self.prompt_info:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode=True):
        if self.pretrained:  # ImageNet statistics stay; with random init BN must learn its statistics
            return _frozen_bn_train(self, mode)
        return super().train(mode)

    def forward(self, img):
        g = self.body((img - self.mean) / self.std)
        return self.classifier(g), [1 + linear(g) for linear in self.prompt_info]


@ARCH_REGISTRY.register()
@check_arch_options
class PromptDSANet(_PromptIRLayout, TaskLogitsArch):
    """PromptDSANet (defaults: docs/methods.md §promptdsanet-sources; dim 48 gives the PromptIR-sized restorer).

    Args (PromptIR's options — dim, num_blocks, heads, ... — plus):
        prompt_dims (list[int] | None): Prompt channels at decoder steps 1, 2, 3. Default None: PromptIR's
            [64, 128, 320] scaled by dim/48 and rounded to a multiple of 4 (the PIM heads), so small configs stay small.
        num_classes (int): Degradation classes = logit columns. Default: 3.
        prompt_net (str | None): torchvision ResNet for the prompt information ('resnet50'); None = no prompt net
            (P_i ≡ 1, no logits: PromptIR's prompt generation). Default: 'resnet50'.
        prompt_net_pretrained (str | None): Local ResNet weight file; None = random init. Default: None.
        spatial_attention (bool): The spatial branch of every Dsa block (False = channel attention only). Default: True.
        spatial_window (int | None): Window size of the spatial attention (None = global, the paper). A window is a
            deviation, for big images on small machines. Default: None.
        pim_conv (bool): The 3×3 conv that ends each PIM (new relative to PromptIR). Default: True.
    """
    block_class = DsaBlock
    nullable_options = ('prompt_net', )  # ~: no prompt net (P_i = 1, no logits)

    @classmethod
    def missing_task_logits(cls, options):
        return None if options.get('prompt_net', 'resnet50') else 'without a prompt net has no task logits'

    def __init__(self,
                 prompt_dims=None,
                 num_classes=3,
                 prompt_net='resnet50',
                 prompt_net_pretrained=None,
                 spatial_attention=True,
                 spatial_window=None,
                 pim_conv=True,
                 **promptir_opt):
        dim, bias = promptir_opt.get('dim', 48), promptir_opt.get('bias', False)
        if prompt_dims is None:
            prompt_dims = [max(4, round(p * dim / 48 / 4) * 4) for p in (64, 128, 320)]
        super().__init__(prompt_dims=prompt_dims, **promptir_opt,
                         block_options=dict(spatial=spatial_attention, spatial_window=spatial_window))
        self.prompt_dims = list(prompt_dims)
        self.has_task_logits = self.missing_task_logits({'prompt_net': prompt_net}) is None
        widths = (dim * 2, dim * 4, dim * 4)  # output widths of prompt steps 1, 2, 3
        self.pim_convs = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1, bias=bias) for c in widths) if pim_conv else None
        self.prompt_net = PromptNet(prompt_dims, num_classes, prompt_net, prompt_net_pretrained) if prompt_net else None

    def _prompt(self, x, level, channel_gate=None):
        x = super()._prompt(x, level, channel_gate)
        return self.pim_convs[level - 1](x) if self.pim_convs is not None else x

    def forward(self, inp_img, return_task_logits=False, task_labels=None):
        """``task_labels`` is accepted for the model's teacher forcing and unused: the prompts follow the image."""
        h, w = inp_img.shape[-2:]
        inp = pad_to_multiple(inp_img, 8)
        logits, gates = None, (None, None, None)
        if self.prompt_net is not None:
            logits, gates = self.prompt_net(inp_img)
        out = crop_output(self.restore(inp, gates), h, w)
        if return_task_logits:
            if logits is None:
                raise ValueError('PromptDSANet without a prompt net (prompt_net: ~) has no task logits')
            return out, [logits]
        return out
