"""Mixed precision and compilation for AllInOneModel: ``train.amp`` / ``val.amp`` and ``train.compile`` /
``val.compile``.

- ``amp: bf16`` runs the network's forward under ``torch.autocast`` in bfloat16 (CUDA and CPU); ``amp: fp16`` in
  float16 with a ``GradScaler`` (its state travels in the training state, so resume stays exact). Weights,
  gradients, the optimizer, EMA and checkpoints stay float32; the losses are computed in float32 on the output
  cast back. The blocks keep their numerically sensitive parts in float32 (MDTA's norms and softmax: see
  ``archs/restormer_blocks.py``). ``~`` (default) is float32.
- ``compile: true`` runs the forward through ``torch.compile``; a mapping instead of ``true`` gives its keywords
  (``{mode: max-autotune}``, ``{backend: aot_eager}``; the keys ``option_check.COMPILE_KEYS`` allows). The module
  itself is unchanged, so checkpoints keep their keys (no ``_orig_mod.``); when compiling fails (no compiler, an
  unsupported op), the run says why once and continues eagerly in float32 semantics as configured.
"""
import contextlib
import functools

import torch

from allinone_basicsr.utils.options import PRECISIONS

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def compile_options(value):
    """The ``torch.compile`` keywords of a ``compile`` option (``true``: none; a mapping: its keys), or None for off."""
    if not value:
        return None
    return dict(value) if isinstance(value, dict) else {}


def without_cudnn_autotuning(fn):
    """Runs ``fn`` with ``torch.backends.cudnn.benchmark`` off, then restores it (validation and test: images of many
    sizes would each be autotuned)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = benchmark
    return wrapper


def amp_dtype(value, key):
    """The autocast dtype an option names (``bf16``, ``fp16``), or None for ``~`` / ``fp32``."""
    if value not in PRECISIONS and value is not None:  # the option check's rule, for models built without it
        raise ValueError(f'{key}: {value!r} is not a precision; valid: bf16, fp16, ~ (float32)')
    return AMP_DTYPES.get(value)


def autocast(device, dtype):
    """``torch.autocast`` on ``device``'s type in ``dtype``; nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device, dtype):
    """A GradScaler for float16 training (bfloat16 has float32's exponent range and needs none), else None."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


class Compiled:
    """``module``'s forward through ``torch.compile``, falling back to the eager module (once, with a warning naming
    the error) if compiling or running the compiled graph fails; an error the eager module raises too is raised."""

    def __init__(self, module, what, logger, options=None):
        self.module, self.what, self.logger = module, what, logger
        self.compiled = torch.compile(module, **(options or {}))
        self.failed = False

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # any compiler failure: fall back; the eager call re-raises real errors
                self.failed = True
                self.logger.warning(f'{self.what}: torch.compile failed ({type(err).__name__}: '
                                    f'{str(err).splitlines()[0] if str(err) else ""}); running eagerly instead.')
        return self.module(*args, **kwargs)


class TrainPrecision:
    """The precision of a training step (``train.amp``, ``train.compile``): the forward under autocast (through
    ``torch.compile`` when asked), the backward of the float32 loss (scaled for float16), then unscaling, clipping
    (``train.grad_clip``) and the optimizer step (skipped by the scaler when float16 gradients overflowed).
    ``state_dict`` is the scaler's (None without one): it travels in the training state."""

    def __init__(self, train_opt, device, net, logger):
        self.device, self.dtype = device, amp_dtype(train_opt.get('amp'), 'train.amp')
        self.scaler = grad_scaler(device, self.dtype)
        options = compile_options(train_opt.get('compile'))
        self.forward = Compiled(net, 'train.compile', logger, options) if options is not None else net
        clip = train_opt.get('grad_clip')
        self.grad_clip = {'max_norm': float(clip)} if clip is not None and not isinstance(clip, dict) else clip

    def __call__(self, *args, **kwargs):
        with autocast(self.device, self.dtype):
            return self.forward(*args, **kwargs)

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer, parameters):
        if self.scaler:
            self.scaler.unscale_(optimizer)  # clip the true gradients
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, **self.grad_clip)
        if self.scaler:  # float16: skips the step when the scaled gradients overflowed, then adapts the scale
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, state):
        if self.scaler and state:
            self.scaler.load_state_dict(state)


class EvalPrecision:
    """The inference forward of validation / test (``val.amp``; ``val.compile`` or ``train.compile``, read at each
    call) of whichever network is passed (its compiled form is made once per network)."""

    def __init__(self, opt, device, logger):
        self.opt, self.device, self.logger, self.compiled = opt, device, logger, None

    def __call__(self, net, *args, **kwargs):
        val, train = self.opt.get('val') or {}, self.opt.get('train') or {}
        forward = net
        options = compile_options(val.get('compile') or train.get('compile'))
        if options is not None:
            if self.compiled is None or self.compiled.module is not net:
                self.compiled = Compiled(net, 'val.compile', self.logger, options)
            forward = self.compiled
        with torch.no_grad(), autocast(self.device, amp_dtype(val.get('amp'), 'val.amp')):
            return forward(*args, **kwargs)
