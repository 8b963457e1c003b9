"""PromptIR: a 4-level Restormer whose decoder is conditioned by learned prompts (Potlapalli et al., NeurIPS 2023).

Faithful to the official ``net/model.py`` (va1shn9v/PromptIR): same constructor keywords, same state-dict keys
(including six 1×1 convs the official forward never uses, so official checkpoints load with ``strict=True``), same
outputs (checked against the official code's tiny reference outputs: tests/test_archs/test_official_reference.py).
"""
import torch
from torch import nn
from torch.nn import functional as F

from allinone_basicsr.utils.arch_options import check_arch_options

from basicsr.utils.registry import ARCH_REGISTRY
from .restormer_blocks import Downsample, OverlapPatchEmbed, TransformerBlock, Upsample, crop_output, pad_to_multiple


class PromptGenBlock(nn.Module):
    """Prompt generation: a softmax-weighted sum of ``prompt_len`` learned prompts, the weights predicted from the
    global average of the feature map; resized (bilinear) to the feature size and passed through a 3×3 conv.

    Args:
        prompt_dim (int): Channels of each prompt.
        prompt_len (int): Number of prompt components.
        prompt_size (int): Spatial size of the learned prompts.
        lin_dim (int): Channels of the conditioning feature map.
    """

    def __init__(self, prompt_dim=128, prompt_len=5, prompt_size=96, lin_dim=192):
        super().__init__()
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(lin_dim, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False)

    def forward(self, x, channel_gate=None):
        """``channel_gate`` (B, prompt_dim), optional: scales the prompt's channels per sample before the 3×3 conv
        (PromptDSANet's prompt information; PromptIR has none)."""
        weights = F.softmax(self.linear_layer(x.mean(dim=(-2, -1))), dim=1)  # (B, prompt_len)
        prompt = torch.einsum('bl,lchw->bchw', weights, self.prompt_param[0])
        if channel_gate is not None:  # per-sample channel scale: commutes with the bilinear resize
            prompt = prompt * channel_gate[:, :, None, None]
        prompt = F.interpolate(prompt, x.shape[-2:], mode='bilinear')
        return self.conv3x3(prompt)


@check_arch_options
class _PromptIRLayout(nn.Module):
    """The PromptIR U-Net that PromptIR and PromptDSANet share: levels, prompt steps, refinement; the options and
    their defaults are PromptIR's (documented there). Contract for subclasses:

    - ``block_class``: the transformer block of every stage and prompt step, built as
      ``block_class(channels, heads, ffn_expansion_factor=..., bias=..., LayerNorm_type=..., **block_options)``;
    - ``block_options`` (keyword-only, not an option): extra keywords of ``block_class`` (PromptDSANet's spatial
      branch);
    - ``_add_layers_after_prompts(prompt_dims, widths)``: called between the prompt generators and the encoder, where
      the official PromptIR creates six layers its forward never uses (creation order = the random initialisation);
    - ``_prompt(x, level, channel_gate)``: the prompt step, which subclasses may extend.
    """
    block_class = TransformerBlock
    arch_display_name = 'PromptIR'  # in option messages: "PromptIR's default"

    def __init__(self,
                 inp_channels=3,
                 out_channels=3,
                 dim=48,
                 num_blocks=(4, 6, 6, 8),
                 num_refinement_blocks=4,
                 heads=(1, 2, 4, 8),
                 ffn_expansion_factor=2.66,
                 bias=False,
                 LayerNorm_type='WithBias',
                 prompt_dims=(64, 128, 320),
                 prompt_sizes=(64, 32, 16),
                 prompt_len=5,
                 *,
                 block_options=None):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4 or len(prompt_dims) != 3 or len(prompt_sizes) != 3:
            raise ValueError(f'{type(self).__name__}: num_blocks and heads need 4 entries, prompt_dims and '
                             'prompt_sizes 3')
        self._block_opt = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type,
                               **(block_options or {}))
        p1, p2, p3 = prompt_dims
        c1, c2, c3, c4 = dim, dim * 2, dim * 4, dim * 8
        stage, block = self._stage, self._block

        def conv1x1(cin, cout):
            return nn.Conv2d(cin, cout, kernel_size=1, bias=bias)

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.prompt1 = PromptGenBlock(p1, prompt_len, prompt_sizes[0], lin_dim=c2)
        self.prompt2 = PromptGenBlock(p2, prompt_len, prompt_sizes[1], lin_dim=c3)
        self.prompt3 = PromptGenBlock(p3, prompt_len, prompt_sizes[2], lin_dim=c4)
        self._add_layers_after_prompts((p1, p2, p3), (c1, c2, c3, c4), bias)

        self.encoder_level1 = stage(num_blocks[0], c1, heads[0])
        self.down1_2 = Downsample(c1)
        self.encoder_level2 = stage(num_blocks[1], c2, heads[1])
        self.down2_3 = Downsample(c2)
        self.encoder_level3 = stage(num_blocks[2], c3, heads[2])
        self.down3_4 = Downsample(c3)
        self.latent = stage(num_blocks[3], c4, heads[3])

        # prompt interaction blocks all use heads[2], as the official code
        self.noise_level3 = block(c4 + p3, heads[2])
        self.reduce_noise_level3 = conv1x1(c4 + p3, c3)
        self.up4_3 = Upsample(c3)
        self.reduce_chan_level3 = conv1x1(c2 + c3, c3)
        self.decoder_level3 = stage(num_blocks[2], c3, heads[2])

        self.noise_level2 = block(c3 + p2, heads[2])
        self.reduce_noise_level2 = conv1x1(c3 + p2, c3)
        self.up3_2 = Upsample(c3)
        self.reduce_chan_level2 = conv1x1(c2 + c2, c2)
        self.decoder_level2 = stage(num_blocks[1], c2, heads[1])

        self.noise_level1 = block(c2 + p1, heads[2])
        self.reduce_noise_level1 = conv1x1(c2 + p1, c2)
        self.up2_1 = Upsample(c2)
        self.decoder_level1 = stage(num_blocks[0], c2, heads[0])
        self.refinement = stage(num_refinement_blocks, c2, heads[0])
        self.output = nn.Conv2d(c2, out_channels, kernel_size=3, padding=1, bias=bias)

    def _add_layers_after_prompts(self, prompt_dims, widths, bias):
        """Nothing here; :class:`PromptIR` adds the official unused layers."""

    def _block(self, channels, num_heads):
        return self.block_class(channels, num_heads, **self._block_opt)

    def _stage(self, num, channels, num_heads):
        return nn.Sequential(*[self._block(channels, num_heads) for _ in range(num)])

    def _prompt(self, x, level, channel_gate=None):
        """Prompt generation + interaction at decoder step ``level`` (3 = latent, 2, 1)."""
        names = ('prompt', 'noise_level', 'reduce_noise_level')
        gen, block, reduce = (getattr(self, f'{name}{level}') for name in names)
        return reduce(block(torch.cat([x, gen(x, channel_gate)], 1)))

    def restore(self, inp, channel_gates=(None, None, None)):
        """The U-Net on an input whose sides are multiples of 8; ``channel_gates`` for prompt steps 1, 2, 3."""
        enc1 = self.encoder_level1(self.patch_embed(inp))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))

        x = self._prompt(latent, 3, channel_gates[2])
        x = self.reduce_chan_level3(torch.cat([self.up4_3(x), enc3], 1))
        x = self.decoder_level3(x)

        x = self._prompt(x, 2, channel_gates[1])
        x = self.reduce_chan_level2(torch.cat([self.up3_2(x), enc2], 1))
        x = self.decoder_level2(x)

        x = self._prompt(x, 1, channel_gates[0])
        x = self.decoder_level1(torch.cat([self.up2_1(x), enc1], 1))
        return self.output(self.refinement(x)) + inp


@ARCH_REGISTRY.register()
@check_arch_options
class PromptIR(_PromptIRLayout):
    """PromptIR (official layout; ``dim`` 48 and the default prompt sizes give the paper model, 35.59M params).

    Encoder: 3×3 embedding, three Restormer levels with Downsample (dim, 2·dim, 4·dim), latent at 8·dim. Decoder:
    at the latent and after decoder levels 3 and 2, a PromptGenBlock conditioned on the features generates a
    prompt that is concatenated, mixed by a transformer block and reduced by a 1×1 conv; Upsample + concatenated
    skip (+ 1×1 reduction at levels 3, 2); refinement blocks at 2·dim; 3×3 output conv; global residual.

    The official model needs H, W to be multiples of 8. This one reflect-pads the input to a multiple of 8 and
    crops the output back, so any size works (identical outputs for multiples of 8).

    Args:
        inp_channels (int): Input channels. Default: 3.
        out_channels (int): Output channels. Default: 3.
        dim (int): Channels of level 1. Default: 48.
        num_blocks (list[int]): Blocks of encoder/decoder levels 1-3 and of the latent. Default: [4, 6, 6, 8].
        num_refinement_blocks (int): Refinement blocks. Default: 4.
        heads (list[int]): Attention heads of levels 1-3 and the latent. Default: [1, 2, 4, 8].
        ffn_expansion_factor (float): GDFN expansion. Default: 2.66.
        bias (bool): Bias in the convolutions. Default: False.
        LayerNorm_type (str): 'WithBias' or 'BiasFree'. Default: 'WithBias'.
        decoder (bool): Prompt blocks in the decoder. Must be True: with False the official forward fails (the
            8·dim latent meets an Upsample built for 4·dim), so this raises a ValueError. Default: True.
        prompt_dims (list[int]): Prompt channels at decoder levels 1, 2 and the latent. Default: [64, 128, 320]
            (official, hard-coded there).
        prompt_sizes (list[int]): Spatial size of the learned prompts, same order. Default: [64, 32, 16].
        prompt_len (int): Prompt components per block. Default: 5.
    """

    def __init__(self, decoder=True, **layout_opt):
        if not decoder:
            raise ValueError('PromptIR(decoder=False) is not supported: the official forward fails without the prompt '
                             'blocks (the 8*dim latent meets an Upsample built for 4*dim). Use decoder: true.')
        super().__init__(**layout_opt)
        self.decoder = decoder

    def _add_layers_after_prompts(self, prompt_dims, widths, bias):
        """Six 1×1 convs in the official state dict that its forward never uses: kept so official checkpoints load
        strictly (created where the official code creates them, so seeded initialisations match)."""
        (p1, p2, p3), (c1, c2, c3, _) = prompt_dims, widths
        for name, cin, cout in (('chnl_reduce1', p1, p1), ('chnl_reduce2', p2, p2), ('chnl_reduce3', p3, p3 * 4 // 5),
                                ('reduce_noise_channel_1', c1 + p1, c1), ('reduce_noise_channel_2', c2 + p2, c2),
                                ('reduce_noise_channel_3', c3 + p3 * 4 // 5, c3)):
            setattr(self, name, nn.Conv2d(cin, cout, kernel_size=1, bias=bias))

    def forward(self, inp_img):
        h, w = inp_img.shape[-2:]
        return crop_output(self.restore(pad_to_multiple(inp_img, 8)), h, w)
