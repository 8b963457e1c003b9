"""check_arch_options: unknown options and options of the wrong type are named before anything is built."""
import warnings

import pytest

import allinone_basicsr  # noqa: F401
from allinone_basicsr.archs.daair_arch import DaAIR
from allinone_basicsr.archs.promptdsa_arch import PromptDSANet
from allinone_basicsr.archs.promptir_arch import PromptIR
from allinone_basicsr.archs.symunet_arch import SESymUNet, SymUNet
from allinone_basicsr.utils import arch_options
from allinone_basicsr.utils.arch_options import check_arch_kwargs, check_arch_options
from allinone_basicsr.utils.option_types import OptionConversionWarning, OptionNotes


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Conversions are warned once per key per process: each test starts with none warned yet."""
    monkeypatch.setattr(arch_options, '_NOTES', OptionNotes())


ARCHS = (SymUNet, SESymUNet, PromptIR, PromptDSANet, DaAIR)

WRONG = [  # arch, option, value, message after "network_g.<option>: <value> (<type>) is not "
    (SymUNet, 'width', 'sixteen', "an int (SymUNet's default: 48)"),
    (SymUNet, 'width', 16.5, "an int (SymUNet's default: 48)"),
    (SymUNet, 'width', True, "an int (SymUNet's default: 48)"),
    (SymUNet, 'width', None, "an int (SymUNet's default: 48)"),
    (SymUNet, 'ffn_expansion_factor', 'wide', "a number (SymUNet's default: 2.66)"),
    (SymUNet, 'bias', 'false', "a bool (SymUNet's default: False)"),
    (SymUNet, 'bias', 0, "a bool (SymUNet's default: False)"),
    (SymUNet, 'LayerNorm_type', 1, "a string (SymUNet's default: 'WithBias')"),
    (SymUNet, 'enc_blk_nums', 4, "a list of ints (SymUNet's default: [4, 6, 6])"),
    (SESymUNet, 'width', 'sixteen', "an int (SESymUNet's default: 48)"),  # SymUNet's option, through **kwargs
    (SESymUNet, 'clip_model_name', None, "a string (SESymUNet's default: 'ViT-L-14-quickgelu')"),
    (SESymUNet, 'clip_vision_cfg', None, None),  # None default: anything
    (PromptIR, 'decoder', 'yes', "a bool (PromptIR's default: True)"),
    (PromptIR, 'prompt_sizes', (64, 32), None),  # a tuple is a list; its length is the arch's business
    (PromptDSANet, 'prompt_net', 50, "a string (PromptDSANet's default: 'resnet50')"),
    (PromptDSANet, 'prompt_dims', 64, "a list of ints (PromptDSANet's default: None; PromptIR's: [64, 128, 320])"),
    (PromptDSANet, 'spatial_window', 'global', None),  # None default: anything (the arch checks it)
    (DaAIR, 'controller_momentum', [0.9], "a number (DaAIR's default: 0.999)"),
    (DaAIR, 'gate_by_prob', 'true', "a bool (DaAIR's default: True)"),
]


@pytest.mark.parametrize('arch,option,value,expected', WRONG, ids=[f'{a.__name__}.{o}={v!r}' for a, o, v, _ in WRONG])
def test_wrong_types_are_named(arch, option, value, expected):
    if expected is None:
        assert check_arch_kwargs(arch, {option: value})[option] == value
        return
    message = f'network_g.{option}: {value!r} ({type(value).__name__}) is not {expected}'
    with pytest.raises(TypeError) as err:
        check_arch_kwargs(arch, {option: value})
    assert str(err.value) == message
    with pytest.raises(TypeError) as err:  # the constructor: the same error, before anything is built
        arch(**{option: value})
    assert str(err.value) == message


def test_list_items_are_checked_against_the_defaults_items():
    with pytest.raises(TypeError, match=r"^network_g\.heads\[2\]: 'four' \(str\) is not an int \(PromptIR's default: "
                                        r'\[1, 2, 4, 8\]\)$'):
        PromptIR(heads=[1, 2, 'four', 8])
    with pytest.raises(ValueError, match=r'^network_g\.cross_attn_heads\[0\]: nan \(float\) is not an int'):
        SESymUNet(cross_attn_heads=[float('nan'), 2, 4])


def test_declared_none_is_accepted():
    """PromptDSANet declares ``prompt_net`` nullable (``nullable_options``): None (no prompt net) passes; so do None
    defaults."""
    assert check_arch_kwargs(PromptDSANet, {'prompt_net': None, 'prompt_dims': None, 'spatial_window': None}) == {
        'prompt_net': None, 'prompt_dims': None, 'spatial_window': None}


def test_conversions():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        checked = check_arch_kwargs(SymUNet, {'width': 16.0, 'middle_blk_num': '2', 'ffn_expansion_factor': 2,
                                              'enc_blk_nums': (1, 2.0, '3'), 'bias': True})
    assert checked == {'width': 16, 'middle_blk_num': 2, 'ffn_expansion_factor': 2, 'enc_blk_nums': (1, 2, 3),
                       'bias': True}
    assert type(checked['width']) is int and all(type(n) is int for n in checked['enc_blk_nums'])
    assert [str(w.message) for w in caught] == [  # strings only; once per key in the process
        "network_g.middle_blk_num: the string '2' is read as the number 2 (write 2 without quotes)",
        "network_g.enc_blk_nums[2]: the string '3' is read as the number 3 (write 3 without quotes)"]
    assert all(w.category is OptionConversionWarning for w in caught)
    notes = []
    check_arch_kwargs(DaAIR, {'controller_momentum': '9.9e-1'}, prefix='net', note=lambda *a: notes.append(a))
    assert notes == [('net.controller_momentum', '9.9e-1', 0.99)]


def test_built_net_uses_the_converted_values():
    with pytest.warns(OptionConversionWarning, match=r'network_g\.width'):
        net = SymUNet(width='8', enc_blk_nums=[1, 1, 1], middle_blk_num=1.0, dec_blk_nums=[1, 1, 1])
    assert net.intro.out_channels == 8 and len(net.middle_blks) == 1


def test_unknown_option_still_lists_the_valid_ones():
    with pytest.raises(TypeError, match=r"SymUNet got unknown option\(s\) \['widht'\]; valid options: .*'width'"):
        SymUNet(widht=8)


def test_every_option_has_a_spec():
    for arch in ARCHS:
        assert set(arch.arch_option_spec) == set(arch.arch_options), arch.__name__


def test_a_decorated_class_of_any_kind():
    @check_arch_options
    class Toy:
        """Args:
            size (int | None): an int, or None (declared in nullable_options).
            names (list[str] | None): names; a docstring alone does not make None valid.
        """
        nullable_options = ('size', )

        def __init__(self, size=3, names=('a', 'b'), mixed=(1, 'x'), scale=1.5, cfg=None):
            self.size, self.names, self.mixed, self.scale = size, names, mixed, scale

    assert Toy(size=None).size is None
    with pytest.raises(TypeError, match=r"^network_g\.names: None \(NoneType\) is not a list of strings"):
        Toy(names=None)
    assert Toy(names=['c']).names == ['c']
    assert Toy(mixed=[None, 2.5]).mixed == [None, 2.5]  # heterogeneous default: items unchecked
    assert Toy(scale=2).scale == 2
    with pytest.raises(TypeError, match=r"^network_g\.names\[0\]: 1 \(int\) is not a string \(Toy's default: "
                                        r"\['a', 'b'\]\)$"):
        Toy(names=[1])
