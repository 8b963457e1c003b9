"""The fast Restormer blocks (channels-last, normalisation after the product, value mixing folded into the output
projection, split GDFN) compute the same function, and the same gradients, as the official formulas.

The straightforward implementation below is written from the papers' equations, the way the official code does
it: LayerNorm on the (B, HW, C) view with manual mean/variance, q and k normalised over pixels, ``softmax · v``,
then the output projection, GDFN by ``chunk``. It reads its weights from the state dict by the official keys.

Stated tolerance: on the official tiny SymUNet reference (weights and input from ../shared/reference), every
gradient (input and each parameter) of our float32 model is within 2e-5 · (that tensor's largest |gradient|) +
1e-8 of the straightforward float32 implementation, and no further from the float64 gradient than twice the
straightforward float32 error (plus 1e-5 of the tensor's largest |gradient|): reordering float32 sums is all that
differs.
"""
import pytest
import torch
import torch.nn.functional as F

from allinone_basicsr.archs.fast_ops import attend_and_project, channel_attention
from allinone_basicsr.archs.restormer_blocks import GDFN, MDTA, TransformerBlock

from basicsr.utils.registry import ARCH_REGISTRY


def plain_layernorm(x, p, key):
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)
    mu = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    t = (t - mu) / torch.sqrt(var + 1e-5) * p[f'{key}.body.weight'] + p[f'{key}.body.bias']
    return t.transpose(1, 2).reshape(b, c, h, w)


def plain_conv(x, p, key, groups=1, padding=0, stride=1):
    return F.conv2d(x, p[f'{key}.weight'], p.get(f'{key}.bias'), stride, padding, 1, groups)


def plain_mdta(x, p, key, heads):
    b, c, h, w = x.shape
    qkv = plain_conv(plain_conv(x, p, f'{key}.qkv'), p, f'{key}.qkv_dwconv', groups=3 * c, padding=1)
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in qkv.chunk(3, dim=1))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1) * p[f'{key}.temperature']).softmax(dim=-1)
    return plain_conv((attn @ v).reshape(b, c, h, w), p, f'{key}.project_out')


def plain_gdfn(x, p, key):
    y = plain_conv(plain_conv(x, p, f'{key}.project_in'), p, f'{key}.dwconv', padding=1,
                   groups=p[f'{key}.dwconv.weight'].shape[0])
    x1, x2 = y.chunk(2, dim=1)
    return plain_conv(F.gelu(x1) * x2, p, f'{key}.project_out')


def plain_block(x, p, key, heads):
    x = x + plain_mdta(plain_layernorm(x, p, f'{key}.norm1'), p, f'{key}.attn', heads)
    return x + plain_gdfn(plain_layernorm(x, p, f'{key}.norm2'), p, f'{key}.ffn')


def plain_symunet(inp, p, cfg):
    """SymUNet from its definition: reflect pad to 2^levels·4, intro, encoder / down, middle, up + skip /
    decoder, ending, global residual, crop."""
    h, w = inp.shape[-2:]
    levels = len(cfg['enc_blk_nums'])
    mult = 2**levels * 4
    x_in = F.pad(inp, (0, (-w) % mult, 0, (-h) % mult), mode='reflect')
    x = plain_conv(x_in, p, 'intro', padding=1)
    skips = []
    for i, (num, heads) in enumerate(zip(cfg['enc_blk_nums'], cfg['restormer_heads'])):
        for j in range(num):
            x = plain_block(x, p, f'encoders.{i}.{j}', heads)
        skips.append(x)
        x = plain_conv(x, p, f'downs.{i}', stride=2)
    for j in range(cfg['middle_blk_num']):
        x = plain_block(x, p, f'middle_blks.{j}', cfg['restormer_middle_heads'])
    for i, (num, heads) in enumerate(zip(cfg['dec_blk_nums'], reversed(cfg['restormer_heads']))):
        x = F.pixel_shuffle(plain_conv(x, p, f'ups.{i}.0'), 2) + skips[-1 - i]
        for j in range(num):
            x = plain_block(x, p, f'decoders.{i}.{j}', heads)
    return (plain_conv(x, p, 'ending', padding=1) + x_in)[..., :h, :w]


def _grads(fn, params, inp, weights):
    """Gradients of sum(weights · fn(inp, params)) w.r.t. the input and every parameter."""
    inp = inp.clone().requires_grad_()
    out = fn(inp, params)
    grads = torch.autograd.grad((out * weights).sum(), [inp, *params.values()])
    return out.detach(), dict(zip(['input', *params], grads))


@pytest.fixture(scope='module')
def tiny_reference(reference_dir):
    return torch.load(reference_dir / 'symunet_tiny_reference.pt', weights_only=False)


def test_symunet_gradients_match_the_straightforward_implementation(tiny_reference):
    ref = tiny_reference
    cfg, inp = ref['config'], ref['input'].float()
    net = ARCH_REGISTRY.get('SymUNet')(**cfg)
    net.load_state_dict({k: v.float() for k, v in ref['state_dict'].items()}, strict=True)
    params = dict(net.named_parameters())
    weights = torch.randn(ref['output'].shape, generator=torch.Generator().manual_seed(0))

    def ours(x, p):
        return torch.func.functional_call(net, p, (x, ))

    out, g_ours = _grads(ours, params, inp, weights)
    out_plain, g_plain = _grads(lambda x, p: plain_symunet(x, p, cfg), params, inp, weights)
    params64 = {k: v.detach().double().requires_grad_() for k, v in params.items()}
    _, g_64 = _grads(lambda x, p: plain_symunet(x, p, cfg), params64, inp.double(), weights.double())

    assert torch.allclose(out, out_plain, atol=2e-6)
    assert torch.allclose(out, ref['output'].float(), atol=ref['atol'])
    assert set(g_ours) == set(g_plain) and len(g_ours) == len(params) + 1
    for name in g_ours:
        scale = g_64[name].abs().max().item()
        err_ours = (g_ours[name].double() - g_64[name]).abs().max().item()
        err_plain = (g_plain[name].double() - g_64[name]).abs().max().item()
        assert (g_ours[name] - g_plain[name]).abs().max().item() <= 2e-5 * scale + 1e-8, name
        assert err_ours <= 2 * err_plain + 1e-5 * scale, (name, err_ours, err_plain, scale)


@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('heads', [1, 4])
def test_block_matches_the_straightforward_block_with_gradients(batch, heads):
    """Both paths of attend_and_project (one sample: a folded 1×1 conv; several: a batched product), with bias."""
    torch.manual_seed(0)
    block = TransformerBlock(16, heads, ffn_expansion_factor=2.66, bias=True)
    with torch.no_grad():
        for prm in block.parameters():
            prm.add_(torch.randn_like(prm) * 0.2)
    params = dict(block.named_parameters())
    x = torch.randn(batch, 16, 9, 11)
    weights = torch.randn(batch, 16, 9, 11)
    out, g_ours = _grads(lambda t, p: torch.func.functional_call(block, p, (t, )), params, x, weights)
    out_plain, g_plain = _grads(lambda t, p: plain_block(t, p, '', heads), {f'.{k}': v for k, v in params.items()},
                                x, weights)
    assert torch.allclose(out, out_plain, atol=1e-5)
    for name, grad in g_ours.items():
        expected = g_plain[name if name == 'input' else f'.{name}']
        assert torch.allclose(grad, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()), name


def test_features_stay_channels_last_and_outputs_are_contiguous():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 8, 8)  # ordinary layout in
    for module in (MDTA(16, 2, False), GDFN(16, 2.66, False), TransformerBlock(16, 2)):
        assert module(x).is_contiguous(memory_format=torch.channels_last)
    from test_daair_arch import TINY as DAAIR
    from test_promptdsa_arch import TINY as PROMPTDSA
    from test_promptir_arch import TINY as PROMPTIR
    nets = {'SymUNet': dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1],
                            restormer_heads=[1, 2], restormer_middle_heads=2),
            'PromptIR': PROMPTIR, 'DaAIR': DAAIR, 'PromptDSANet': PROMPTDSA}
    for name, opt in nets.items():
        out = ARCH_REGISTRY.get(name)(**opt).eval()(torch.rand(1, 3, 20, 30))
        assert out.shape == (1, 3, 20, 30) and out.is_contiguous(), name


def test_channel_attention_handles_all_zero_channels_like_normalize():
    """A channel that is zero everywhere: F.normalize gives a zero vector (eps), so its logits are 0."""
    q = torch.randn(1, 4, 3, 3)
    k = torch.randn(1, 4, 3, 3)
    q[:, 1] = 0
    k[:, 2] = 0
    temperature = torch.full((2, 1, 1), 3.0)
    qn = F.normalize(q.reshape(1, 2, 2, 9), dim=-1)
    kn = F.normalize(k.reshape(1, 2, 2, 9), dim=-1)
    expected = (qn @ kn.transpose(-2, -1) * temperature).softmax(-1)
    got = channel_attention(q, k, 2, temperature)
    assert torch.isfinite(got).all() and torch.allclose(got, expected, atol=1e-6)
    v = torch.randn(1, 4, 3, 3)
    proj = torch.nn.Conv2d(4, 4, 1)
    mixed = (expected @ v.reshape(1, 2, 2, 9)).reshape(1, 4, 3, 3)
    assert torch.allclose(attend_and_project(v, got, proj), proj(mixed), atol=1e-6)
