import pytest
import torch
import torch.nn.functional as F

from allinone_basicsr.archs.restormer_blocks import MDTA, Downsample, LayerNorm, Upsample, crop_to, pad_to_multiple


def manual_layernorm(x, weight, bias):
    """The official Restormer LayerNorm: over channels of the (B, HW, C) view, biased variance, eps 1e-5."""
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)
    mu = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    out = (t - mu) / torch.sqrt(var + 1e-5) * weight if bias is not None else t / torch.sqrt(var + 1e-5) * weight
    if bias is not None:
        out = out + bias
    return out.transpose(1, 2).reshape(b, c, h, w)


@pytest.mark.parametrize('kind', ['WithBias', 'BiasFree'])
def test_layernorm_matches_official_definition(kind):
    torch.manual_seed(0)
    ln = LayerNorm(12, kind)
    with torch.no_grad():
        ln.body.weight.uniform_(0.5, 1.5)
        if ln.body.bias is not None:
            ln.body.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 12, 5, 7) * 3 + 1
    expected = manual_layernorm(x, ln.body.weight, ln.body.bias)
    assert torch.allclose(ln(x), expected, atol=1e-5)
    assert ('body.bias' in ln.state_dict()) == (kind == 'WithBias')


def test_layernorm_type_is_checked():
    with pytest.raises(ValueError, match='WithBias'):
        LayerNorm(4, 'Bias')


def test_mdta_matches_per_head_formula():
    torch.manual_seed(0)
    att = MDTA(8, 2, bias=False)
    x = torch.randn(1, 8, 4, 5)
    qkv = att.qkv_dwconv(att.qkv(x))
    q, k, v = qkv.chunk(3, dim=1)
    outs = []
    for head in range(2):
        sl = slice(4 * head, 4 * head + 4)
        qh = F.normalize(q[0, sl].flatten(1), dim=-1)
        kh = F.normalize(k[0, sl].flatten(1), dim=-1)
        vh = v[0, sl].flatten(1)
        outs.append(((qh @ kh.T) * att.temperature[head]).softmax(-1) @ vh)
    expected = att.project_out(torch.cat(outs).reshape(1, 8, 4, 5))
    assert torch.allclose(att(x), expected, atol=1e-6)


def test_pad_to_multiple_reflects_and_crops_back():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    y = pad_to_multiple(x, 4)
    assert y.shape[-2:] == (8, 8)
    assert torch.equal(y, F.pad(x, (0, 2, 0, 3), mode='reflect'))
    assert torch.equal(crop_to(y, 5, 6), x)


@pytest.mark.parametrize('size', [(1, 1), (2, 3), (3, 17)])
def test_pad_to_multiple_handles_inputs_smaller_than_the_pad(size):
    x = torch.rand(1, 2, *size)
    y = pad_to_multiple(x, 32)
    assert y.shape[-2:] == (32, 32)
    assert torch.equal(crop_to(y, *size), x)


@pytest.mark.parametrize('layout', [torch.contiguous_format, torch.channels_last])
def test_down_and_upsample_return_channels_last_whatever_the_input_layout(layout):
    """pixel_(un)shuffle returns NCHW on CUDA; the blocks convert explicitly (here: NCHW input, same effect)."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 10).contiguous(memory_format=layout)
    down, up = Downsample(8), Upsample(8)
    y_down, y_up = down(x), up(x)
    assert y_down.shape == (2, 16, 3, 5) and y_up.shape == (2, 4, 12, 20)
    assert y_down.is_contiguous(memory_format=torch.channels_last)
    assert y_up.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y_down, F.pixel_unshuffle(F.conv2d(x, down.body[0].weight, padding=1), 2), atol=1e-6)
    assert torch.allclose(y_up, F.pixel_shuffle(F.conv2d(x, up.body[0].weight, padding=1), 2), atol=1e-6)
