"""SymUNet and SE-SymUNet (Jiao et al., arXiv 2512.10581).

SymUNet is a symmetric U-Net of Restormer blocks with additive skips; SE-SymUNet adds frozen CLIP image tokens,
exchanged with the image features by cross-attention at the bottleneck and at every decoder level.

Faithful to the official ``SymUNet_arch.py`` (WenlongJiao/SymUNet): same constructor keywords, same state-dict
keys, same outputs (checked against the official code's tiny reference outputs and SE-SymUNet's key/shape list:
tests/test_archs/test_official_reference.py). Deviations of SE-SymUNet, both without effect on trained weights:

* the position embeddings added to the image patches are fixed, seeded N(0, 1) tensors (one per token count),
  not fresh random draws that the official code makes at the first forward of every new size, so evaluation is
  reproducible across runs and processes (the official embeddings are never saved either);
* CLIP is not part of the module tree: it is frozen, never optimised and not written into checkpoints. Official
  checkpoints, which hold the whole Hugging Face CLIPModel as ``clip_model.*``, still load
  (:meth:`SESymUNet.load_official_state`): the vision tower is converted and used, the text tower dropped.
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from allinone_basicsr.utils.arch_options import check_arch_options

from basicsr.utils import get_root_logger
from basicsr.utils.registry import ARCH_REGISTRY
from .clip_tokens import (DEFAULT_CLIP_MODEL, FrozenTokenizerSlot, clip_vision_config, embedded_clip_tokenizer,
                          hf_clip_to_open_clip_visual, resolve_clip_model_name, resolve_clip_weights,
                          shared_clip_tokenizer, tower_differences)
from .fast_ops import aligned_attention, channels_last
from .restormer_blocks import crop_output, pad_to_multiple, transformer_stage

POS_CACHE_SIZE = 4  # position embeddings kept per module, device and dtype (one per token count)


@ARCH_REGISTRY.register()
@check_arch_options
class SymUNet(nn.Module):
    """Symmetric Restormer U-Net.

    intro 3×3 conv → per level: Restormer blocks, then a stride-2 2×2 conv (C→2C) → middle blocks → per level:
    1×1 conv (C→2C) + PixelShuffle(2), additive skip from the encoder, Restormer blocks → ending 3×3 conv →
    global residual. Any H, W: the input is reflect-padded to a multiple of ``2**levels * 4`` (the official
    ``padder_size``; 32 for three levels) and the output cropped back.

    Args:
        img_channel (int): Image channels. Default: 3.
        width (int): Channels of the first level; doubled at every level. Default: 48 (paper).
        middle_blk_num (int): Blocks at the bottleneck. Default: 8 (paper).
        enc_blk_nums (list[int]): Blocks per encoder level. Default: [4, 6, 6] (paper).
        dec_blk_nums (list[int]): Blocks per decoder level, deepest first. Default: [6, 6, 4] (paper).
        restormer_heads (list[int]): Attention heads per level, shallowest first (decoders mirror them).
            Default: [1, 2, 4].
        restormer_middle_heads (int): Attention heads at the bottleneck. Default: 8.
        ffn_expansion_factor (float): GDFN expansion. Default: 2.66.
        bias (bool): Bias in the Restormer blocks' convolutions. Default: False.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'. Default: 'WithBias'.
        SE-SymUNet's options (``ignored_options``): accepted and ignored, as the official SymUNet does, so a
            ``network_g`` block written for SESymUNet also builds SymUNet.
    """
    ignored_options = ('clip_model_name', 'cross_attn_inner_dims', 'cross_attn_heads', 'middle_cross_attn_inner_dim',
                       'middle_cross_attn_heads', 'patch_sizes', 'middle_patch_size', 'semantic_start_iter')

    def __init__(self,
                 img_channel=3,
                 width=48,
                 middle_blk_num=8,
                 enc_blk_nums=(4, 6, 6),
                 dec_blk_nums=(6, 6, 4),
                 restormer_heads=(1, 2, 4),
                 restormer_middle_heads=8,
                 ffn_expansion_factor=2.66,
                 bias=False,
                 LayerNorm_type='WithBias'):
        super().__init__()
        levels = len(enc_blk_nums)
        if len(dec_blk_nums) != levels or len(restormer_heads) != levels:
            raise ValueError(f'enc_blk_nums {list(enc_blk_nums)}, dec_blk_nums {list(dec_blk_nums)} and '
                             f'restormer_heads {list(restormer_heads)} must have the same length')
        block_opt = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type)

        self.intro = nn.Conv2d(img_channel, width, 3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1, bias=True)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()

        chan = width
        for num, heads in zip(enc_blk_nums, restormer_heads):
            self.encoders.append(transformer_stage(num, chan, heads, **block_opt))
            self.downs.append(nn.Conv2d(chan, chan * 2, kernel_size=2, stride=2))
            chan *= 2
        self.middle_blks = transformer_stage(middle_blk_num, chan, restormer_middle_heads, **block_opt)
        for num, heads in zip(dec_blk_nums, reversed(restormer_heads)):
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(transformer_stage(num, chan, heads, **block_opt))

        self.padder_size = 2**levels * 4

    def encode(self, x):
        """Encoder levels: returns the bottleneck input and the skips, shallowest first."""
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        return x, skips

    def forward(self, inp):
        h, w = inp.shape[-2:]
        inp = pad_to_multiple(inp, self.padder_size)
        x, skips = self.encode(self.intro(channels_last(inp)))
        x = self.middle_blks(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return crop_output(x, h, w)


class CrossAttention(nn.Module):
    """Multi-head attention of a query sequence over a context sequence, both layer-normalised first.

    Official key names (``norm_query``, ``norm_context``, ``to_q/k/v`` without bias, ``to_out.0``); the softmax
    scale is ``(inner_dim / num_heads) ** -0.5``, passed explicitly to :func:`~.fast_ops.aligned_attention`
    (``scaled_dot_product_attention`` with CUDA-aligned head sizes).
    """

    def __init__(self, query_dim, context_dim, inner_dim, num_heads=8, dropout=0.0):
        super().__init__()
        if inner_dim % num_heads:
            raise ValueError(f'inner dim {inner_dim} is not divisible by {num_heads} heads')
        self.num_heads = num_heads
        self.scale = 1 / math.sqrt(inner_dim // num_heads)  # what SDPA computes by default for the unpadded size
        self.norm_query = nn.LayerNorm(query_dim)
        self.norm_context = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def _heads(self, t):
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, query, context):
        context = self.norm_context(context)
        q = self._heads(self.to_q(self.norm_query(query)))
        k, v = self._heads(self.to_k(context)), self._heads(self.to_v(context))
        out = aligned_attention(q, k, v, self.scale)
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class _PatchTokenAttention(nn.Module):
    """Shared part of the guide and refine steps: the image as p×p patch tokens plus a fixed position embedding.

    Patch token ``i`` holds the ``C·p·p`` values of patch ``i`` (row-major), ordered (channel, row, column), as
    the official ``rearrange('b c (h p1) (w p2) -> b (h w) (c p1 p2)')``; ``pixel_unshuffle`` gives that order.
    """

    def __init__(self, image_dim, patch_size, pos_embed_seed):
        super().__init__()
        self.patch_size = patch_size
        self.patch_dim = image_dim * patch_size**2
        self.pos_embed_seed = pos_embed_seed
        self.alpha = nn.Parameter(torch.tensor(1e-4))
        self._pos_cache = {}  # (device, dtype) -> OrderedDict(num_tokens -> embedding), least recently used first

    def position_embedding(self, num_tokens, device, dtype):
        """A seeded N(0, 1) tensor of shape (1, num_tokens, patch_dim): equal in every run and process.

        Drawn on the CPU (the same numbers on every device) and kept for the last :data:`POS_CACHE_SIZE` token
        counts per device and dtype, so alternating validation sizes do not draw and copy again. One inner cache
        per device: DataParallel's replicas share this dict, and each replica thread only touches its own device's.
        """
        cache = self._pos_cache.setdefault((torch.device(device), dtype), OrderedDict())
        pos = cache.get(num_tokens)
        if pos is None:
            gen = torch.Generator().manual_seed((self.pos_embed_seed * 1000003 + num_tokens) % 2**63)
            pos = torch.randn(1, num_tokens, self.patch_dim, generator=gen).to(device=device, dtype=dtype)
            cache[num_tokens] = pos
            while len(cache) > POS_CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(num_tokens)
        return pos

    def num_tokens(self, height, width):
        """Patch tokens of a ``height`` × ``width`` feature map."""
        return (height // self.patch_size) * (width // self.patch_size)

    def image_tokens(self, image, pos=None):
        """The patch tokens of ``image`` plus the position embedding ``pos`` (float32, cast to the tokens' dtype;
        drawn here when not given)."""
        tokens = F.pixel_unshuffle(image, self.patch_size).flatten(2).transpose(1, 2)
        if pos is None:
            pos = self.position_embedding(int(tokens.shape[1]), tokens.device, torch.float32)
        return tokens + pos.to(tokens.dtype)


class ImageGuidanceAttention(_PatchTokenAttention):
    """Guide step: image patches attend to the CLIP tokens; ``image + alpha * update`` (alpha starts at 1e-4)."""

    def __init__(self, image_dim, text_dim, inner_dim, num_heads=8, patch_size=4, dropout=0.0, pos_embed_seed=0):
        super().__init__(image_dim, patch_size, pos_embed_seed)
        self.attention = CrossAttention(self.patch_dim, text_dim, inner_dim, num_heads, dropout)

    def forward(self, image, tokens, pos=None):
        b, _, h, w = image.shape
        update = self.attention(self.image_tokens(image, pos), tokens)
        update = F.pixel_shuffle(update.transpose(1, 2).reshape(b, -1, h // self.patch_size, w // self.patch_size),
                                 self.patch_size)
        return image + self.alpha * update


class TextRefinementAttention(_PatchTokenAttention):
    """Refine step: the CLIP tokens attend to the image patches; ``tokens + alpha * update``."""

    def __init__(self, text_dim, image_dim, inner_dim, num_heads=8, patch_size=4, dropout=0.0, pos_embed_seed=0):
        super().__init__(image_dim, patch_size, pos_embed_seed)
        self.attention = CrossAttention(text_dim, self.patch_dim, inner_dim, num_heads, dropout)

    def forward(self, tokens, image, pos=None):
        return tokens + self.alpha * self.attention(tokens, self.image_tokens(image, pos))


@ARCH_REGISTRY.register()
@check_arch_options
class SESymUNet(SymUNet):
    """SymUNet with semantic enhancement by frozen CLIP image tokens (official ``SESymUNet``).

    The CLIP tokens ``z`` of the LQ input (see :mod:`.clip_tokens`) meet the image at the bottleneck
    (``x = guide(x, z)``, middle blocks, ``z = refine(z, x)``) and at every decoder level (up + skip,
    ``x = guide(x, z)``, blocks, ``z = refine(z, x)``). The last level's refinement output is never used; its
    parameters exist (official keys) but it is not computed, so DDP needs ``find_unused_parameters: true``.

    Official checkpoints (whole Hugging Face CLIPModel under ``clip_model.*``) load through ``load_state_dict`` /
    ``path.pretrain_network_g``: see :meth:`load_official_state`.

    Args (defaults are the official option file's values; the backbone options are :class:`SymUNet`'s):
        clip_model_name (str): open_clip model name, or the official Hugging Face id
            (``openai/clip-vit-large-patch14`` -> ``ViT-L-14-quickgelu``). Default: ``ViT-L-14-quickgelu``.
        clip_pretrained (str | None): local weight file, open_clip tag (downloads when online), or None for a
            random CLIP (tests and smoke runs only). Default: None.
        clip_vision_cfg (dict | None): overrides of the open_clip vision config (e.g. a tiny tower for tests).
        cross_attn_inner_dims (list[int]): attention width per level, shallowest first. Default: [1024] * 3.
        cross_attn_heads (list[int]): heads per level, shallowest first. Default: [1, 2, 4].
        middle_cross_attn_inner_dim (int): attention width at the bottleneck. Default: 1024.
        middle_cross_attn_heads (int): heads at the bottleneck. Default: 8.
        patch_sizes (list[int]): patch size per level, shallowest first. Default: [4, 4, 4].
        middle_patch_size (int): patch size at the bottleneck. Default: 2.
        semantic_start_iter (int): official two-stage switch; only 0 (single stage, the released recipe) is
            supported, since the official code's other branch calls a method it does not define.
        pos_embed_seed (int): seed of the fixed position embeddings (ours; see the module docstring). Default: 0.
        **backbone_opt: :class:`SymUNet`'s options (img_channel, width, enc_blk_nums, ...).
    """

    def __init__(self,
                 clip_model_name=DEFAULT_CLIP_MODEL,
                 clip_pretrained=None,
                 clip_vision_cfg=None,
                 cross_attn_inner_dims=(1024, 1024, 1024),
                 cross_attn_heads=(1, 2, 4),
                 middle_cross_attn_inner_dim=1024,
                 middle_cross_attn_heads=8,
                 patch_sizes=(4, 4, 4),
                 middle_patch_size=2,
                 semantic_start_iter=0,
                 pos_embed_seed=0,
                 **backbone_opt):
        super().__init__(**backbone_opt)
        width = self.intro.out_channels
        levels = len(self.encoders)
        for key, value in (('cross_attn_inner_dims', cross_attn_inner_dims), ('cross_attn_heads', cross_attn_heads),
                           ('patch_sizes', patch_sizes)):
            if len(value) != levels:
                raise ValueError(f'{key} {list(value)} must have one entry per level ({levels})')
        if semantic_start_iter:
            raise ValueError('semantic_start_iter > 0 (two-stage training) is not supported: the official code '
                             'calls an undefined freeze_semantic_modules() there; use 0')

        model_name, _ = resolve_clip_model_name(clip_model_name)
        weights = resolve_clip_weights(model_name, clip_pretrained)
        vision_overrides = dict(clip_vision_cfg or {})
        text_dim = clip_vision_config(model_name, vision_overrides)['vision_cfg']['width']
        self._clip = FrozenTokenizerSlot(lambda: shared_clip_tokenizer(model_name, weights, vision_overrides))
        self._clip_options = (model_name, weights, vision_overrides)

        seeds = iter(range(pos_embed_seed * 100, pos_embed_seed * 100 + 2 * (levels + 1)))
        chan = width * 2**levels
        self.middle_guide_attention = ImageGuidanceAttention(chan, text_dim, middle_cross_attn_inner_dim,
                                                             middle_cross_attn_heads, middle_patch_size,
                                                             pos_embed_seed=next(seeds))
        self.middle_refine_attention = TextRefinementAttention(text_dim, chan, middle_cross_attn_inner_dim,
                                                               middle_cross_attn_heads, middle_patch_size,
                                                               pos_embed_seed=next(seeds))
        self.decoder_guide_attentions, self.decoder_refine_attentions = nn.ModuleList(), nn.ModuleList()
        multiple = 2**levels * middle_patch_size  # patches must tile every level exactly
        for level in reversed(range(levels)):
            chan //= 2
            opt = dict(inner_dim=cross_attn_inner_dims[level], num_heads=cross_attn_heads[level],
                       patch_size=patch_sizes[level])
            self.decoder_guide_attentions.append(
                ImageGuidanceAttention(chan, text_dim, **opt, pos_embed_seed=next(seeds)))
            self.decoder_refine_attentions.append(
                TextRefinementAttention(text_dim, chan, **opt, pos_embed_seed=next(seeds)))
            multiple = math.lcm(multiple, 2**level * patch_sizes[level])
        self.padder_size = math.lcm(self.padder_size, multiple)

    def clip_tokenizer(self):
        """The frozen CLIP tokenizer (built on first use; not a submodule). It keeps one copy of the tower per device
        and runs the copy on the input's device, so DataParallel's replicas never move a tower another one uses."""
        return self._clip.get()

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """``nn.Module.load_state_dict``; a state dict that embeds the official CLIPModel (``clip_model.*`` keys, or
        a :class:`~allinone_basicsr.utils.checkpoint.NetworkState` that set them apart) goes through
        :meth:`load_official_state`."""
        from allinone_basicsr.utils.checkpoint import CLIP_PREFIX, split_embedded
        state = split_embedded(state_dict)
        if CLIP_PREFIX in state.embedded:
            return self.load_official_state(state, strict, assign)
        return super().load_state_dict(state_dict, strict, assign)

    def load_official_state(self, state_dict, strict=True, assign=False):
        """Load an official SE-SymUNet state dict: the restorer's keys and the Hugging Face ``CLIPModel`` that the
        official network holds as ``clip_model`` (vision and text towers).

        The vision tower (``clip_model.vision_model.*``, ``clip_model.visual_projection.weight``) is converted to the
        open_clip layout (:func:`~.clip_tokens.hf_clip_to_open_clip_visual`) and must fit this network's tower
        (``clip_model_name``, ``clip_vision_cfg``). Without ``clip_pretrained`` it becomes the frozen tower; with
        ``clip_pretrained`` the loaded tower must equal it exactly (a ValueError names the differing tensors
        otherwise). The text tower is dropped. Then the restorer's keys load (``strict`` as given), and the log
        says what was found and used. Checkpoints saved afterwards hold the restorer only.
        """
        from allinone_basicsr.utils.checkpoint import CLIP_PREFIX, split_embedded
        state = split_embedded(state_dict)
        if CLIP_PREFIX not in state.embedded:
            return super().load_state_dict(state, strict, assign)
        visual, counts = hf_clip_to_open_clip_visual(state.embedded[CLIP_PREFIX], CLIP_PREFIX.rstrip('.'))
        model_name, weights, vision_overrides = self._clip_options
        dropped = f'the text tower ({counts["text"]} keys: text_model.*, text_projection, logit_scale)'
        if counts['buffers']:
            dropped += f' and {counts["buffers"]} position_ids buffer(s)'
        found = (f'{type(self).__name__}: the checkpoint embeds the official CLIPModel ({counts["keys"]} '
                 f'{CLIP_PREFIX}* keys): vision tower and visual_projection, {counts["vision"]} keys -> '
                 f'{counts["tensors"]} tensors of the open_clip {model_name} visual tower; dropped {dropped}')
        if weights is None:
            tokenizer = embedded_clip_tokenizer(model_name, visual, vision_overrides)
            used = 'using it as the frozen CLIP tower (network_g.clip_pretrained is not set)'
        else:
            tokenizer = self.clip_tokenizer()
            differences = tower_differences(tokenizer.tower, visual)
            if differences:
                raise ValueError(
                    f'network_g.clip_pretrained ({weights}) differs from the CLIP embedded in the checkpoint: '
                    f'{len(differences)} of {len(visual)} tensors ({"; ".join(differences[:3])}'
                    f'{" ..." if len(differences) > 3 else ""}). The restorer was trained with the embedded tower: '
                    'remove network_g.clip_pretrained to use it, or name the weights it was trained with.')
            used = f'checked equal to network_g.clip_pretrained ({weights}), which is used'
        result = super().load_state_dict(state, strict, assign)
        self._clip = FrozenTokenizerSlot(lambda: tokenizer)
        get_root_logger().info(f'{found}; {used}.')
        return result

    @torch.compiler.disable
    def _frozen_inputs(self, inp, height, width):
        """The CLIP tokens of ``inp`` and the position embeddings of every computed guide / refine step for a padded
        input of ``height`` × ``width``: ([middle guide, middle refine], [(guide, refine) per decoder level]).

        Run eagerly, outside any ``torch.compile`` graph: the frozen tower and the embeddings' seeded generator and
        caches are no graph material, and one graph break here (instead of one in every step) leaves the rest of the
        forward one graph of static shapes."""
        tokens = self.clip_tokenizer()(inp)
        levels = len(self.encoders)

        def pos(step, level):
            return step.position_embedding(step.num_tokens(height >> level, width >> level), inp.device,
                                           torch.float32)

        middle = [pos(self.middle_guide_attention, levels), pos(self.middle_refine_attention, levels)]
        decoder = [(pos(guide, level), pos(refine, level) if level else None)  # the last refinement is not computed
                   for guide, refine, level in
                   zip(self.decoder_guide_attentions, self.decoder_refine_attentions, reversed(range(levels)))]
        return tokens, middle, decoder

    def forward(self, inp):
        h, w = inp.shape[-2:]
        padded = pad_to_multiple(inp, self.padder_size)
        # CLIP sees the raw LQ input, before padding (as official)
        tokens, middle, decoder = self._frozen_inputs(inp, int(padded.shape[-2]), int(padded.shape[-1]))  # also traced
        inp = padded
        x, skips = self.encode(self.intro(channels_last(inp)))
        x = self.middle_blks(self.middle_guide_attention(x, tokens, middle[0]))
        tokens = self.middle_refine_attention(tokens, x, middle[1])
        last = len(self.decoders) - 1
        for i, (up, dec, guide, refine, skip, (guide_pos, refine_pos)) in enumerate(
                zip(self.ups, self.decoders, self.decoder_guide_attentions, self.decoder_refine_attentions,
                    reversed(skips), decoder)):
            x = dec(guide(up(x) + skip, tokens, guide_pos))
            if i < last:  # the official code also computes the last refinement, whose output nothing reads
                tokens = refine(tokens, x, refine_pos)
        x = self.ending(x) + inp
        return crop_output(x, h, w)
