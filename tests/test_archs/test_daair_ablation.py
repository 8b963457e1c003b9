"""DaAIR's ablation switches (paper Table 4): each removed part is really gone (no parameters, no buffers, no
compute), the outputs change, the remaining blocks compute what the docstring says, and the defaults are the full
model exactly as before the switches existed (state-dict keys, sizes, outputs)."""
import hashlib

import pytest
import torch

from allinone_basicsr.archs.daair_arch import DaAIR
from allinone_basicsr.archs.restormer_blocks import MDTA

from basicsr.utils.registry import ARCH_REGISTRY

TINY = dict(dim=8, num_blocks=[1, 1, 1, 2], num_dec_blocks=[1, 2, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4],
            rank_ratio=4, expert_kernel_size=5)
ALL_ON = dict(agnostic_expert=True, specialised_experts=True, controller=True)
ROWS = {  # Table 4 rows as switches (the routing-loss column is train.cls_opt, not an arch option; row (d) is the
    # full arch without it): docs/tables.md, "DaAIR Table 4: which column is which"
    'baseline': dict(agnostic_expert=False, specialised_experts=False, controller=False),
    'a': dict(agnostic_expert=False, controller=False),
    'b': dict(specialised_experts=False),
    'c': dict(controller=False),
}


def build(seed=0, **options):
    torch.manual_seed(seed)
    return DaAIR(**TINY, **options).eval()


def keys(net):
    return set(net.state_dict())


def shape_digest(net):
    text = ';'.join(f'{k}:{tuple(v.shape)}' for k, v in net.state_dict().items())
    return len(net.state_dict()), hashlib.sha256(text.encode()).hexdigest()[:16]


def trainable(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def image(seed=1, shape=(2, 3, 20, 24)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ the full model
def test_defaults_are_the_full_model_as_before_the_switches():
    """Recorded from the arch before the switches were added: the full-size key/shape digest and sizes, and the
    seeded tiny model's output (so the initialisation order and the forward are unchanged too)."""
    full = ARCH_REGISTRY.get('DaAIR')()
    assert shape_digest(full) == (925, '36262de009953ec3')
    assert trainable(full) == 6_169_418 and sum(b.numel() for b in full.buffers()) == 20_752
    net = build()
    assert shape_digest(net) == (427, '33b7ed4ee8e398fa')
    with torch.no_grad():
        out, logits = net(image(), return_task_logits=True)
    assert out.double().sum().item() == pytest.approx(1514.2477779723704, rel=1e-6)
    assert out.double().square().sum().item() == pytest.approx(1061.111534931624, rel=1e-6)
    assert sum(lg.double().sum().item() for lg in logits) == pytest.approx(-0.9317399859428406, abs=1e-5)
    assert net.has_task_logits and len(logits) == sum(TINY['num_blocks']) + sum(TINY['num_dec_blocks'])


def test_switches_all_on_equal_the_defaults():
    default, explicit = build(), build(**ALL_ON)
    assert list(default.state_dict()) == list(explicit.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(default(image()), explicit(image()))


def test_switches_are_typed_options():
    assert {'agnostic_expert', 'specialised_experts', 'controller'} <= set(DaAIR.arch_options)
    for key in ('agnostic_expert', 'specialised_experts', 'controller'):
        assert DaAIR.arch_option_spec[key][0] is True
    with pytest.raises(TypeError, match=r"network_g.controller: 'maybe' \(str\) is not a bool"):
        DaAIR(**TINY, controller='maybe')
    with pytest.raises(ValueError, match='controller: true needs agnostic_expert: true'):
        DaAIR(**TINY, agnostic_expert=False)


# --------------------------------------------------------------------------------------------- removed = gone
def test_without_agnostic_expert_its_parameters_are_gone():
    full, ablated = build(controller=False), build(**ROWS['a'])  # (a): no controller either (it copies A)
    removed = {k for k in keys(full) if '.dale.agnostic.' in k}
    assert removed and keys(ablated) == keys(full) - removed
    assert all(block.dale.agnostic is None for stage in (*ablated.encoders, *ablated.decoders) for block in stage)
    assert trainable(ablated) == trainable(full) - sum(full.state_dict()[k].numel() for k in removed)


def test_without_specialised_experts_the_experts_and_routers_are_gone():
    full, ablated = build(), build(**ROWS['b'])
    removed = {k for k in keys(full) if '.dale.experts.' in k or '.dale.router.' in k}
    assert removed and keys(ablated) == keys(full) - removed
    assert trainable(ablated) == trainable(full) - sum(full.state_dict()[k].numel() for k in removed)
    assert not ablated.has_task_logits and DaAIR.has_task_logits  # the instance says so; the class is unchanged
    with torch.no_grad():
        out, logits = ablated(image(), return_task_logits=True)
    assert logits == [] and out.shape == image().shape


def test_without_controller_no_buffers_and_decoders_self_attend():
    full, ablated = build(), build(**ROWS['c'])
    assert list(ablated.buffers()) == [] and ablated.controller_pairs() == []
    assert not [k for k in keys(ablated) if '.controller.' in k]
    assert [k for k in keys(full) if '.controller.' in k]
    for blocks in ablated.decoders:
        for block in blocks:
            assert block.controller is None and isinstance(block.attn, MDTA)
    # the only difference: decoder controllers (buffers) and cross-attention replaced by self-attention
    assert all(k.startswith('decoders.') for k in keys(full) ^ keys(ablated))
    assert {k.split('.attn.')[1] for k in keys(full) - keys(ablated) if '.controller.' not in k} == {
        'qv.weight', 'qv_dwconv.weight', 'k.weight', 'k_dwconv.weight'}
    state = {k: v.clone() for k, v in ablated.state_dict().items()}
    ablated.after_optimizer_step()  # nothing to follow: a no-op
    assert all(torch.equal(v, ablated.state_dict()[k]) for k, v in state.items())


def test_baseline_is_a_plain_restormer_unet():
    net = build(**ROWS['baseline'])
    assert not [k for k in keys(net) if '.dale.' in k or '.controller.' in k] and list(net.buffers()) == []
    assert not net.has_task_logits and trainable(net) < trainable(build())
    x = torch.randn(2, TINY['dim'], 12, 12)
    for block in (*net.encoders[0], *net.decoders[0]):
        assert {name for name, _ in block.named_children()} == {'norm1', 'attn', 'norm2', 'ffn'}
        with torch.no_grad():
            y = x + block.attn(block.norm1(x))
            want = y + block.ffn(block.norm2(y))
            assert torch.allclose(block(x, []), want, atol=1e-6)
    full = ARCH_REGISTRY.get('DaAIR')
    sizes = {row: trainable(full(**switches)) for row, switches in ROWS.items()}
    assert sizes['baseline'] == 5_760_202  # the DaAIR backbone alone (spec §1.6: "5.8M"), a 6M-class Restormer


@pytest.mark.parametrize('row', sorted(ROWS))
def test_ablated_dale_computes_what_is_left(row):
    net = build(**ROWS[row])
    block = net.encoders[0][0]
    h = torch.randn(3, TINY['dim'], 10, 11)
    labels = torch.tensor([2, 0, 1])
    with torch.no_grad():
        if block.dale is None:
            assert row == 'baseline'
            return
        out, logits = block.dale(h, task_labels=labels)
        dale = block.dale
        if dale.experts is None:  # (b): the agnostic expert alone
            assert logits is None and dale.router is None
            want = dale.up(dale.agnostic(h))
        else:
            probs = logits.softmax(1)
            routed = torch.cat([dale.experts[int(e)](h[b:b + 1]) * probs[b, int(e)] for b, e in enumerate(labels)])
            want = dale.up(routed if dale.agnostic is None else dale.agnostic(h) * routed)
        assert torch.allclose(out, want, atol=1e-5)


@pytest.mark.parametrize('row', sorted(ROWS))
def test_removing_a_part_changes_the_output(row):
    """The ablated net with the full net's weights for every part it kept: the output differs from the full net's
    (the removed part contributed), and every kept weight loaded (only removed parts are missing)."""
    full, ablated = build(), build(**ROWS[row])
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the initial values (zero-mean outputs hide parts)
    shared = {k: v for k, v in full.state_dict().items() if k in keys(ablated)
              and v.shape == ablated.state_dict()[k].shape}
    missing, unexpected = ablated.load_state_dict(shared, strict=False)
    assert not unexpected
    for key in missing:  # only the decoders' self-attention that replaces the cross-attention is new
        assert key.startswith('decoders.') and '.attn.' in key, key
    with torch.no_grad():
        difference = (full(image()) - ablated(image())).abs().max().item()
    assert difference > 1e-4


@pytest.mark.parametrize('row', sorted(ROWS))
def test_every_parameter_of_an_ablation_gets_a_gradient(row):
    net = build(**ROWS[row]).train()
    out, logits = net(image(shape=(2, 3, 16, 16)), return_task_logits=True, task_labels=torch.tensor([0, 2]))
    (out.abs().mean() + sum(lg.sum() for lg in logits)).backward()
    assert not [name for name, p in net.named_parameters() if p.grad is None]
