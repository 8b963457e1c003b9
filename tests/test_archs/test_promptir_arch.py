import pytest
import torch

from basicsr.utils.registry import ARCH_REGISTRY

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 4, 8], prompt_dims=[8, 16, 40],
            prompt_sizes=[16, 8, 4])


@pytest.mark.parametrize('size', [(1, 1), (13, 9), (24, 40), (33, 17)])
def test_any_input_size(size):
    net = ARCH_REGISTRY.get('PromptIR')(**TINY).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        assert net(x).shape == x.shape


def test_odd_input_is_reflect_padded_to_8_and_cropped_back():
    net = ARCH_REGISTRY.get('PromptIR')(**TINY).eval()
    x = torch.rand(1, 3, 13, 22)
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode='reflect')
    with torch.no_grad():
        assert torch.allclose(net(x), net(padded)[..., :13, :22], atol=1e-6)


def test_official_unused_layers_exist_but_take_no_gradient():
    net = ARCH_REGISTRY.get('PromptIR')(**TINY)
    net(torch.rand(1, 3, 16, 16)).mean().backward()
    unused = {n for n, p in net.named_parameters() if p.grad is None}
    assert unused == {'chnl_reduce1.weight', 'chnl_reduce2.weight', 'chnl_reduce3.weight',
                      'reduce_noise_channel_1.weight', 'reduce_noise_channel_2.weight', 'reduce_noise_channel_3.weight'}


def test_decoder_false_and_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match='decoder'):
        ARCH_REGISTRY.get('PromptIR')(**dict(TINY, decoder=False))
    with pytest.raises(TypeError, match='valid options'):
        ARCH_REGISTRY.get('PromptIR')(**dict(TINY, prompt_length=5))
