"""SymUNet: a symmetric U-Net of Restormer blocks with additive skips (Jiao et al., seed paper 000).

Faithful to the official ``SymUNet_arch.py`` (WenlongJiao/SymUNet): same constructor keywords, same
state-dict keys, same outputs (checked against ``shared/reference/symunet_tiny_reference.pt``).
"""
from torch import nn

from basicsr.utils.registry import ARCH_REGISTRY
from .arch_util import check_arch_options
from .restormer_blocks import crop_to, pad_to_multiple, transformer_stage


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
        clip_model_name, cross_attn_inner_dims, cross_attn_heads, middle_cross_attn_inner_dim,
        middle_cross_attn_heads, patch_sizes, middle_patch_size, semantic_start_iter: accepted and ignored, as
            the official SymUNet does, so a ``network_g`` block written for SESymUNet also builds SymUNet.
    """

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
                 LayerNorm_type='WithBias',
                 clip_model_name=None,
                 cross_attn_inner_dims=None,
                 cross_attn_heads=None,
                 middle_cross_attn_inner_dim=None,
                 middle_cross_attn_heads=None,
                 patch_sizes=None,
                 middle_patch_size=None,
                 semantic_start_iter=None):
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

    def forward(self, inp):
        h, w = inp.shape[-2:]
        inp = pad_to_multiple(inp, self.padder_size)
        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = decoder(up(x) + skip)
        x = self.ending(x) + inp
        return crop_to(x, h, w)
