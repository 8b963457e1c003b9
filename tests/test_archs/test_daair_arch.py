"""DaAIR: shapes, size, routing (one pass with per-sample expert weights), the EMA controller, task logits, and a
toy routing run."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from allinone_basicsr.archs.daair_arch import DaAIR, DaLe, LowRankExpert
from allinone_basicsr.losses.task_classification_loss import TaskClassificationLoss
from allinone_basicsr.metrics.routing_accuracy_metric import calculate_routing_accuracy, routing_vote

from basicsr.utils.registry import ARCH_REGISTRY

TINY = dict(dim=8, num_blocks=[1, 1, 1, 2], num_dec_blocks=[1, 2, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4],
            rank_ratio=4, expert_kernel_size=5)


def count(net):
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize('num_experts, low, high', [(3, 6.0e6, 6.5e6), (5, 6.0e6, 6.5e6)])
def test_default_size_is_about_6m(num_experts, low, high):
    net = ARCH_REGISTRY.get('DaAIR')(num_experts=num_experts)
    assert low <= count(net) <= high  # paper: 6M; spec: 6.0M ± 0.5M
    assert count(net) == {3: 6_169_418, 5: 6_378_634}[num_experts]  # this exact configuration
    assert sum(b.numel() for b in net.buffers()) == 20_752  # controllers (not trainable)


@pytest.mark.parametrize('shape', [(1, 3, 37, 53), (2, 3, 16, 16), (3, 3, 9, 13)])
def test_output_shape_equals_input_shape_and_logits(shape):
    net = DaAIR(**TINY).eval()
    with torch.no_grad():
        out, logits = net(torch.rand(shape), return_task_logits=True)
        plain = net(torch.rand(shape))
    assert out.shape == plain.shape == shape
    blocks = sum(TINY['num_blocks']) + sum(TINY['num_dec_blocks'])
    assert len(logits) == blocks and all(lg.shape == (shape[0], 3) for lg in logits)


class CountCalls(TorchFunctionMode):
    """Counts the torch calls made inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def test_dale_runs_each_sample_through_its_expert_once():
    torch.manual_seed(0)
    dale = DaLe(dim=8, rank=4, num_experts=3, kernel_size=3).eval()
    h = torch.randn(5, 8, 6, 7)
    labels = torch.tensor([2, 0, 2, 1, 0])
    out, logits = dale(h, task_labels=labels)
    probs = logits.softmax(1)
    for b in range(5):  # each sample equals the unbatched formula with its own expert
        e = int(labels[b])
        want = dale.up(dale.agnostic(h[b:b + 1]) * dale.experts[e](h[b:b + 1]) * probs[b, e])
        assert torch.allclose(out[b:b + 1], want, atol=1e-5)
    blind, _ = dale(h)  # inference: the router's argmax, no labels
    vote = logits.argmax(1)
    assert torch.allclose(blind, dale(h, task_labels=vote)[0])
    # one expert's compute per sample (not every expert on every sample) ...
    with FlopCounterMode(display=False) as routed, torch.no_grad():
        dale.route(h, labels)
    with FlopCounterMode(display=False) as one, torch.no_grad():
        dale.experts[0](h[:1])
    assert routed.get_total_flops() == 5 * one.get_total_flops() > 0
    # ... in one pass over the batch, not looped over the samples: as many calls for 5 samples as for 1
    calls = []
    for batch in (h, h[:1]):
        with CountCalls() as counter, torch.no_grad():
            dale.route(batch, labels[:batch.shape[0]])
        calls.append(counter.count)
    assert calls[0] == calls[1]


def test_every_parameter_gets_a_gradient_when_an_expert_gets_no_sample():
    """An expert with no sample in the batch is still in the autograd graph (its weights are packed into the
    per-sample weight table every forward), so every parameter gets a gradient: DistributedDataParallel needs no
    unused-parameter search (a rank's batch often lacks a class)."""
    torch.manual_seed(0)
    net = DaAIR(**TINY)
    out, logits = net(torch.rand(2, 3, 16, 16), return_task_logits=True, task_labels=torch.tensor([0, 0]))
    (out.abs().mean() + sum(lg.sum() for lg in logits)).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing, missing
    for block in (net.encoders[0][0], net.decoders[0][0]):  # experts 1 and 2 saw no sample: zero gradient
        for expert in block.dale.experts[1:]:
            assert all(torch.count_nonzero(p.grad) == 0 for p in expert.parameters())
        assert any(torch.count_nonzero(p.grad) > 0 for p in block.dale.experts[0].parameters())


def test_controller_ema_step_equals_formula_and_leaves_encoder_untouched():
    torch.manual_seed(0)
    net = DaAIR(**TINY, controller_momentum=0.9)
    pairs = net.controller_pairs()
    assert len(pairs) == sum(TINY['num_dec_blocks'])
    for controller, source in pairs:  # initialised as copies of the encoder's agnostic expert, same level
        assert all(torch.equal(b, p) for b, p in zip(controller.buffers(), source.parameters()))
    # level 2 has 2 decoder blocks but 1 encoder block: both follow encoder block 0 of level 2
    assert pairs[1][1] is pairs[2][1] is net.encoders[1][0].dale.agnostic
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        for b in net.buffers():
            b.copy_(torch.randn_like(b))
    before_ctrl = [b.clone() for c, _ in pairs for b in c.buffers()]
    before_enc = {k: v.clone() for k, v in net.named_parameters()}
    net.after_optimizer_step()
    after_ctrl = [b for c, _ in pairs for b in c.buffers()]
    enc = [p for _, s in pairs for p in s.parameters()]
    for old, new, theta in zip(before_ctrl, after_ctrl, enc):
        assert torch.allclose(new, 0.9 * old + 0.1 * theta, atol=1e-6)
    assert all(torch.equal(v, dict(net.named_parameters())[k]) for k, v in before_enc.items())


def test_controller_gets_no_gradient_and_is_not_a_parameter():
    net = DaAIR(**TINY)
    names = [n for n, _ in net.named_parameters()]
    assert not [n for n in names if '.controller.' in n]
    ctrl_buffers = [n for n, _ in net.named_buffers() if '.controller.' in n]
    assert ctrl_buffers and all(n in net.state_dict() for n in ctrl_buffers)
    x = torch.rand(2, 3, 16, 16)
    net(x).mean().backward()
    assert all(not b.requires_grad and b.grad is None for b in net.buffers())
    # gradient flows *through* the controller to what feeds it (its key projection is trained)
    assert net.decoders[0][0].attn.k.weight.grad.abs().sum() > 0
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad])
    in_opt = {id(p) for g in optimizer.param_groups for p in g['params']}
    assert not in_opt & {id(b) for b in net.buffers()}


def test_state_dict_round_trip_restores_the_controller_exactly():
    torch.manual_seed(0)
    net = DaAIR(**TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    for _ in range(3):
        net.after_optimizer_step()
    other = DaAIR(**TINY)
    other.load_state_dict(net.state_dict(), strict=True)
    for (a, _), (b, _) in zip(net.controller_pairs(), other.controller_pairs()):
        assert all(torch.equal(x, y) for x, y in zip(a.buffers(), b.buffers()))
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), other.eval()(x))
    # the EMA in the copy follows its own modules (deep copies keep the controller pairing)
    clone = copy.deepcopy(net)
    clone.after_optimizer_step()
    assert clone.controller_pairs()[0][0] is clone.decoders[0][0].controller


def test_low_rank_expert_is_conv2former_modulation():
    torch.manual_seed(0)
    e = LowRankExpert(dim=6, rank=3, kernel_size=5)
    x = torch.randn(2, 6, 9, 9)
    z = e.down(x)
    n = F.layer_norm(z.permute(0, 2, 3, 1), (3,), e.norm.body.weight, e.norm.body.bias).permute(0, 3, 1, 2)
    want = z + e.proj(e.attn_dw(F.gelu(e.attn(n))) * e.value(n))
    assert torch.allclose(e(x), want, atol=1e-5)


def test_unknown_option_and_bad_config():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['experts'\].*num_experts"):
        DaAIR(experts=3)
    with pytest.raises(ValueError, match='rank_ratio 3 does not divide'):
        DaAIR(rank_ratio=3)


def test_task_classification_loss_and_routing_accuracy():
    logits = [torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]]), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])]
    target = torch.tensor([0, 2])
    loss = TaskClassificationLoss()(logits, target)
    want = 0.01 * (F.cross_entropy(logits[0], target) + F.cross_entropy(logits[1], target)) / 2
    assert torch.allclose(loss, want)
    assert TaskClassificationLoss(loss_weight=1.0)(logits[0], target) == pytest.approx(
        F.cross_entropy(logits[0], target).item())
    # labels are range-checked by AllInOneModel on the loader's CPU labels (no device sync; see
    # tests/test_reliability/test_gpu_paths.py::test_labels_outside_the_arch_classes_name_both)
    assert routing_vote(logits).tolist() == [0, 2]
    assert calculate_routing_accuracy(logits, torch.tensor([0, 1])) == 0.5


def _toy_batch(gen, n):
    """Smooth random images, degraded three visibly different ways: noise, bright streaks, haze."""
    clean = F.interpolate(torch.rand(n, 3, 6, 6, generator=gen), size=24, mode='bilinear', align_corners=False)
    labels = torch.arange(n) % 3
    lq = clean.clone()
    lq[labels == 0] += 0.2 * torch.randn(lq[labels == 0].shape, generator=gen)
    streaks = (torch.rand(n, 1, 1, 24, generator=gen) > 0.8).float().expand(n, 1, 24, 24)
    lq[labels == 1] = torch.maximum(lq[labels == 1], streaks[labels == 1])
    lq[labels == 2] = 0.4 * lq[labels == 2] + 0.6 * 0.9
    return lq.clamp(0, 1), clean, labels


def test_classification_loss_drives_routing_accuracy_above_90_percent():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = DaAIR(**TINY)
    cls = TaskClassificationLoss(loss_weight=0.5)
    optim = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(100):  # without clipping, some seeds spike late and lose a class (measured: 8/8 seeds at 100%)
        lq, gt, labels = _toy_batch(gen, 12)
        out, logits = net(lq, return_task_logits=True)
        loss = F.l1_loss(out, gt) + cls(logits, labels)
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
        optim.step()
        net.after_optimizer_step()
    lq, _, labels = _toy_batch(torch.Generator().manual_seed(123), 60)
    with torch.no_grad():
        _, logits = net.eval()(lq, return_task_logits=True)  # blind: no labels
    assert calculate_routing_accuracy(logits, labels) > 0.9
