"""DaLe's dispatch: the whole batch in one pass with per-sample expert weights gathered on the device.

- It computes the per-sample definition ``up(agnostic(h_b) ⊙ expert_{c_b}(h_b) · p_b)``, with the same gradients,
  computed below one sample at a time with the experts' own modules (the straightforward reference).
  Stated tolerance (float32): outputs within 2e-6 (they are of order 1), every gradient within
  1e-5 × the largest |gradient| of its tensor + 1e-8 (measured: about 1e-7 and 3e-7 relative; only the order of
  the float32 sums differs).
- A DaAIR forward and backward read nothing back from the device (no host sync): counted by a torch function mode
  that records every call which, on a GPU, makes the host wait (``item``, ``tolist``, ``cpu``, ``bool(t)``, a
  boolean mask index, ...). The recorder itself is tested to catch each of them, and the old grouping by
  ``bincount().tolist()``.
- The features come out channels-last, whatever the input layout.
"""
import traceback

import pytest
import torch
from test_daair_arch import TINY
from torch.overrides import TorchFunctionMode

from allinone_basicsr.archs.daair_arch import DaAIR, DaLe

# Calls that copy a value to the host (on a GPU: wait for the device) whatever their arguments.
ALWAYS_SYNC = {'item', 'tolist', 'cpu', 'numpy', '__bool__', '__int__', '__float__', '__index__', '__format__',
               '__repr__', 'nonzero', 'argwhere', 'unique', 'unique_consecutive', 'bincount', 'masked_select',
               'equal', 'allclose', 'is_nonzero'}


def _is_bool_tensor(index):
    items = index if isinstance(index, (tuple, list)) else (index, )
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _to_cpu(args, kwargs):
    targets = list(args[1:]) + [kwargs.get('device')]
    return any(str(t) == 'cpu' or isinstance(t, torch.device) and t.type == 'cpu' for t in targets)


class HostSyncRecorder(TorchFunctionMode):
    """Records every tensor call that makes the host wait for the device on a GPU (on the CPU, where the tests run,
    they cost nothing, which is why they go unnoticed): ``self.calls`` lists ``'name (file:line)'``.

    Caught: the calls of ``ALWAYS_SYNC``; indexing with a boolean mask (its size depends on the values);
    ``torch.where(cond)`` with one argument; ``repeat_interleave`` with tensor repeats and no ``output_size``;
    ``.to(...)`` a CPU device. Not seen: what the C++ autograd engine runs in the backward pass (no Python calls)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', str(func))
        self.seen += 1
        sync = (name in ALWAYS_SYNC
                or name in ('__getitem__', '__setitem__') and _is_bool_tensor(args[1])
                or name == 'where' and len(args) + len(kwargs) == 1
                or name == 'repeat_interleave' and isinstance(args[1] if len(args) > 1 else kwargs.get('repeats'),
                                                              torch.Tensor) and kwargs.get('output_size') is None
                or name == 'to' and _to_cpu(args, kwargs))
        if sync:
            caller = traceback.extract_stack()[-2]
            self.calls.append(f'{name} ({caller.filename.rsplit("/", 1)[-1]}:{caller.lineno})')
        return func(*args, **kwargs)


def reference_dale(dale, h, choice):
    """DaLe from its definition, one sample at a time with the experts' own modules."""
    logits = dale.router(h.mean(dim=(2, 3)))
    probs = logits.softmax(dim=1)
    outs = []
    for b in range(h.shape[0]):
        expert = int(choice[b])
        specialised = dale.experts[expert](h[b:b + 1])
        if dale.gate_by_prob:
            specialised = specialised * probs[b, expert]
        outs.append(dale.up(dale.agnostic(h[b:b + 1]) * specialised))
    return torch.cat(outs), logits


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('gate_by_prob', [True, False])
@pytest.mark.parametrize('labels', [[2, 0, 2, 1, 0], [1, 1], [2]])
def test_dispatch_equals_the_per_sample_definition_with_gradients(bias, gate_by_prob, labels):
    torch.manual_seed(0)
    dale = DaLe(dim=8, rank=4, num_experts=3, kernel_size=5, bias=bias, gate_by_prob=gate_by_prob)
    with torch.no_grad():  # non-trivial LayerNorm affine and biases
        for p in dale.parameters():
            p.add_(0.2 * torch.randn_like(p))
    choice = torch.tensor(labels)
    h = torch.randn(len(labels), 8, 6, 7)
    params = dict(dale.named_parameters())
    weights = torch.randn(len(labels), 8, 6, 7)
    results = []
    for fn in (lambda x: dale(x, task_labels=choice), lambda x: reference_dale(dale, x, choice)):
        x = h.clone().requires_grad_()
        out, logits = fn(x)
        loss = (out * weights).sum() + logits.logsumexp(dim=1).sum()
        grads = torch.autograd.grad(loss, [x, *params.values()], allow_unused=True)
        results.append((out.detach(), logits.detach(), dict(zip(['input', *params], grads))))
    (out, logits, grads), (out_ref, logits_ref, grads_ref) = results
    assert torch.allclose(out, out_ref, rtol=0, atol=2e-6)
    assert torch.allclose(logits, logits_ref, rtol=0, atol=1e-6)  # the mean over pixels: another order (layout)
    for name, grad in grads.items():
        expected = grads_ref[name]
        if expected is None:  # an expert no sample chose: no gradient in the reference, an exact zero here
            assert grad is not None and torch.count_nonzero(grad) == 0, name
            continue
        tol = 1e-5 * expected.abs().max().item() + 1e-8
        assert (grad - expected).abs().max().item() <= tol, name
    unused = {f'experts.{e}.' for e in range(3)} - {f'experts.{e}.' for e in labels}
    assert all(grads_ref[n] is None for n in params if n[:10] in unused)


def test_dispatch_keeps_the_state_dict_keys():
    dale = DaLe(dim=8, rank=2, num_experts=2, kernel_size=3)
    assert sorted(k for k in dale.state_dict() if k.startswith('experts.0.')) == [
        'experts.0.attn.weight', 'experts.0.attn_dw.weight', 'experts.0.down.weight', 'experts.0.norm.body.bias',
        'experts.0.norm.body.weight', 'experts.0.proj.weight', 'experts.0.value.weight']


@pytest.mark.parametrize('batch', [1, 3])
def test_dale_output_is_channels_last_for_any_input_layout(batch):
    dale = DaLe(dim=8, rank=4, num_experts=3, kernel_size=3)
    h = torch.randn(batch, 8, 5, 6)  # ordinary (NCHW) layout
    out, _ = dale(h)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert dale.route(h, torch.arange(batch) % 3).is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(dale(h.contiguous(memory_format=torch.channels_last))[0], out, rtol=0, atol=1e-6)


# ------------------------------------------------------------------ host syncs
_T = torch.tensor([1.0, 2.0, 0.0])
SYNCING_CALLS = {
    'item': lambda: _T[0].item(), 'tolist': lambda: _T.tolist(), 'cpu': lambda: _T.cpu(), 'numpy': lambda: _T.numpy(),
    '__bool__': lambda: 1 if _T[0] > 0 else 0, '__int__': lambda: int(_T[0]), '__float__': lambda: float(_T[0]),
    '__index__': lambda: [0, 1, 2][_T.long()[1]], '__format__': lambda: f'{_T[0]:.1f}', 'nonzero': lambda: _T.nonzero(),
    'torch.nonzero': lambda: torch.nonzero(_T), 'mask': lambda: _T[_T > 1], 'to': lambda: _T.to('cpu'),
    'unique': lambda: torch.unique(_T), 'bincount': lambda: torch.bincount(_T.long()),
    'where': lambda: torch.where(_T > 1), 'repeat_interleave': lambda: _T.repeat_interleave(_T.long()),
    'equal': lambda: torch.equal(_T, _T)}


@pytest.mark.parametrize('name', SYNCING_CALLS)
def test_the_recorder_catches_each_host_read(name):
    with HostSyncRecorder() as record:
        SYNCING_CALLS[name]()
    assert record.calls, name


def test_the_recorder_passes_device_side_routing_and_catches_the_old_grouping():
    choice = torch.tensor([2, 0, 2])
    h = torch.randn(3, 4)
    with HostSyncRecorder() as record:  # what the new dispatch does: all on the device
        table = torch.stack([torch.randn(5) for _ in range(3)])
        table.index_select(0, choice).split([2, 3], dim=1)
        torch.argsort(choice, stable=True), h.argmax(dim=1), h.softmax(1).gather(1, choice[:, None])
        int(h.shape[0]), h.reshape(3, 2, 2).permute(1, 0, 2).contiguous()
    assert record.calls == [] and record.seen > 5
    with HostSyncRecorder() as record:  # the old DaLe.route grouped the batch with sizes read on the host
        order = torch.argsort(choice, stable=True)
        h.index_select(0, order).split(torch.bincount(choice, minlength=3).tolist())
    assert [c.split()[0] for c in record.calls] == ['bincount', 'tolist']


@pytest.mark.parametrize('labels', [None, [0, 0, 2]])
def test_daair_forward_and_backward_read_nothing_back_from_the_device(labels):
    """One step of DaAIR (blind routing and teacher forcing, an expert without a sample): no host sync at all. The
    old ``bincount(choice).tolist()`` grouping gave 2 per DaLe (9 DaLes here, 20 in the full config)."""
    torch.manual_seed(0)
    net = DaAIR(**TINY)
    task_labels = None if labels is None else torch.tensor(labels)
    with HostSyncRecorder() as record:
        out, logits = net(torch.rand(3, 3, 16, 16), return_task_logits=True, task_labels=task_labels)
        (out.abs().mean() + sum(lg.logsumexp(dim=1).mean() for lg in logits)).backward()
    assert record.calls == [], record.calls
    assert record.seen > 200  # the mode saw the forward
    assert all(p.grad is not None for p in net.parameters())
