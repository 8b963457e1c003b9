"""Runtime probes: what a piece of code makes the device do, observed from outside it.

- :class:`RecordHostReads`: every tensor call that makes the host wait for the device on a GPU (``.item()``,
  ``.tolist()``, ``bool(t)``, ...), recorded with its caller. Works on any device, so a CPU run counts the syncs a GPU
  run would make.
- :func:`record_cuda_syncs`: the synchronizing CUDA calls themselves, as CUDA's sync debug mode reports them (a GPU
  only; this also sees syncs that no Python call names, such as a copy from pageable host memory).
- :class:`SdpaBackends`: which kernel each ``scaled_dot_product_attention`` call dispatched to (flash,
  memory-efficient, cuDNN, the CPU's fused kernel, or the math fallback).
"""
import contextlib
import os
import traceback
import warnings

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

HOST_READS = {'item', 'tolist', 'cpu', 'numpy', '__bool__', '__int__', '__float__', '__index__', 'nonzero'}


class RecordHostReads(TorchFunctionMode):
    """Records every tensor call that makes the host wait for the device (on a GPU), with its caller, in ``calls``
    (``'item (loss_guard.py:25)'``).

    Not counted: reads inside ``torch.optim``, of the optimizers' step counters, which are CPU tensors even when the
    weights are on a GPU (unless ``capturable``)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in HOST_READS:
            stack = traceback.extract_stack()[:-1]
            if not any('/torch/optim/' in frame.filename for frame in stack):
                caller = stack[-1]
                self.calls.append(f'{name} ({os.path.basename(caller.filename)}:{caller.lineno})')
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def record_cuda_syncs():
    """Yields a list that receives one ``'file.py:line'`` entry per synchronizing CUDA call made inside the block
    (CUDA's sync debug mode in its warning setting; the Python line that made the call). Needs CUDA."""
    calls = []
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try:
            yield calls
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for w in caught:
        if 'synchroniz' in str(w.message):
            calls.append(f'{os.path.basename(w.filename)}:{w.lineno}')
        else:  # not ours: hand it on
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


# the aten ops ``scaled_dot_product_attention`` dispatches to, by backend
SDPA_KERNELS = {
    '_scaled_dot_product_flash_attention': 'flash',
    '_scaled_dot_product_flash_attention_for_cpu': 'flash (CPU)',
    '_scaled_dot_product_efficient_attention': 'memory-efficient',
    '_scaled_dot_product_cudnn_attention': 'cuDNN',
    '_scaled_dot_product_fused_attention_overrideable': 'fused (device plug-in)',
}


class _SdpaCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _SdpaKernels(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.kernels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SDPA_KERNELS:
            self.kernels.append(SDPA_KERNELS[name])
        return func(*args, **(kwargs or {}))


class SdpaBackends:
    """``with SdpaBackends() as sdpa: net(x)``; then ``sdpa.calls`` (how many attention calls) and
    ``sdpa.summary()`` ('memory-efficient ×12', 'math ×3' for calls that reached no fused kernel, or 'no SDPA')."""

    def __enter__(self):
        self._calls, self._kernels = _SdpaCalls(), _SdpaKernels()
        self._calls.__enter__()
        self._kernels.__enter__()
        return self

    def __exit__(self, *exc):
        self._kernels.__exit__(*exc)
        self._calls.__exit__(*exc)

    @property
    def calls(self):
        return self._calls.count

    def counts(self):
        """{backend: calls}; the calls that dispatched to no fused kernel count as 'math'."""
        counts = {}
        for kernel in self._kernels.kernels:
            counts[kernel] = counts.get(kernel, 0) + 1
        fused = sum(counts.values())
        if self.calls > fused:
            counts['math'] = self.calls - fused
        return counts

    def summary(self):
        counts = self.counts()
        return ', '.join(f'{name} ×{n}' for name, n in sorted(counts.items())) if counts else 'no SDPA'
