"""Timing train steps fairly: bare steps (forward, L1, backward, AdamW) of any network, interleaved rounds,
channels-last conversion, and whether ``torch.compile`` can run. Used by the GPU check and ``benchmarks/speed.py``.

Functions take ``torch`` as an argument where the benchmarks call them in worker processes that set their thread
count before anything imports torch's kernels."""


def step_fns(torch, net, x, target, opt, dev, bf16=False, run=None):
    """(train step, no-grad forward) of ``net`` (called through ``run``, e.g. its compiled wrapper).

    bf16: ``torch.autocast(dtype=torch.bfloat16)`` around the forward and the loss, the L1 loss reduced in float32
    (the output is cast up first); backward and AdamW outside, on the float32 master weights. On CUDA each call ends
    with a synchronize, so a wall clock around it measures the step."""
    run = net if run is None else run  # not `run or net`: a compiled module has no truth value (len() raises)

    def train():
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = (run(x).float() - target).abs().mean()
        loss.backward()
        opt.step()
        if dev.type == 'cuda':
            torch.cuda.synchronize()

    def infer():
        net.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            run(x)
        if dev.type == 'cuda':
            torch.cuda.synchronize()

    return train, infer


def interleaved(fns, rounds, clock):
    """Times of each function over ``rounds`` rounds, the order flipped every other round (a drifting machine
    affects all alike): {name: [seconds]}."""
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t = clock()
            fns[name]()
            times[name].append(clock() - t)
    return times


def to_channels_last(torch, net):
    """Every 4-D parameter and buffer of ``net`` in channels-last memory, in place. ``Module.to(memory_format=...)``
    also converts 5-D tensors and fails on them (PromptIR's and PromptDSANet's ``prompt_param``): those, and all
    others, are left as they are."""
    for tensor in list(net.parameters()) + list(net.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return net


def compile_unavailable(torch, dev):
    """Why ``torch.compile`` cannot run on ``dev`` (a short reason), or None. On CPU its inductor backend builds
    C++ kernels, so it needs a working C++ compiler (``g++``, or ``$CXX``); checked before any tracing."""
    if dev.type != 'cpu':
        return None
    try:
        from torch._inductor import config
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another torch layout: let the warm-up find out
        return None
    try:
        get_cpp_compiler()
    except Exception as err:  # InvalidCxxCompiler, or the compiler's own failure
        cxx = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else [config.cpp.cxx]
        tried = ', '.join(str(c) for c in cxx if c)
        return f'torch.compile needs a C++ compiler on CPU; tried {tried} ({type(err).__name__})'
    return None
