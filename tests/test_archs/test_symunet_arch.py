import pytest
import torch

from basicsr.utils.registry import ARCH_REGISTRY


def tiny(**kw):
    opt = dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1])
    opt.update(kw)
    return ARCH_REGISTRY.get('SymUNet')(**opt).eval()


@pytest.mark.parametrize('size', [(1, 1), (7, 5), (31, 33), (32, 32), (50, 70)])
def test_any_input_size_gives_same_size_output(size):
    net = tiny()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape


def test_global_residual_zero_ending_returns_input():
    net = tiny()
    torch.nn.init.zeros_(net.ending.weight)
    torch.nn.init.zeros_(net.ending.bias)
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(net(x), x)


def test_official_sesymunet_keywords_are_accepted_and_ignored():
    net = tiny(clip_model_name='openai/clip-vit-large-patch14', cross_attn_inner_dims=[1024] * 3,
               cross_attn_heads=[1, 2, 4], middle_cross_attn_inner_dim=1024, middle_cross_attn_heads=8,
               patch_sizes=[4, 4, 4], middle_patch_size=2, semantic_start_iter=0)
    assert not any('guid' in k or 'refine' in k for k in net.state_dict())


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(TypeError) as err:
        tiny(widht=16)
    assert 'widht' in str(err.value) and 'width' in str(err.value) and 'enc_blk_nums' in str(err.value)


def test_mismatched_level_lists_raise():
    with pytest.raises(ValueError, match='same length'):
        tiny(dec_blk_nums=[1, 1])


def test_gradients_flow_to_every_parameter():
    net = tiny().train()
    net(torch.rand(1, 3, 16, 16)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())
