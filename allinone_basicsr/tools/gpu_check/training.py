"""The methods, compile and syncs sections: training steps through AllInOneModel on the device."""
import contextlib
import logging
import math
import time
import traceback

import torch

from allinone_basicsr.models.precision import AMP_DTYPES, autocast
from allinone_basicsr.tools.gpu_check.common import (COMPILE_FIRST_LOSS, EXPECTED_SYNCS, LOSS_FALL, TOLERANCE,
                                                     PeakMemory, batch_shape, build, fixed_batch, load_recipe,
                                                     logged_warnings, model_options, network_of, parse_variant, release)
from allinone_basicsr.tools.gpu_check.report import _reason
from allinone_basicsr.utils.probes import RecordHostReads, SdpaBackends, record_cuda_syncs
from allinone_basicsr.utils.timing import compile_unavailable, to_channels_last


def eval_output(model, lq, amp, channels_last):
    """The bare network's eval output on ``lq`` (float32) under ``amp``, and the attention kernels it used."""
    net = model.get_bare_model(model.net_g)
    was_training = net.training
    net.eval()
    x = lq.contiguous(memory_format=torch.channels_last) if channels_last else lq
    with torch.no_grad(), autocast(x.device, AMP_DTYPES.get(amp)), SdpaBackends() as sdpa:
        out = net(x).float()
    net.train(was_training)
    return out, sdpa.summary()


def train_variant(method, variant, settings, reference=None, twin_losses=None):
    """One methods row: train ``variant`` of ``method``; returns (row fields, eval output, losses)."""
    recipe = load_recipe(method)
    batch, size = batch_shape(method, recipe, settings)
    opt = model_options(method, recipe, network_of(recipe, settings.tiny), variant, settings, settings.steps)
    fields = {'method': method, 'variant': variant.name, 'batch': f'{batch}×{size}²'}
    if variant.compile:
        fields['backend'] = settings.compile_backend
    if variant.compile and settings.compile_backend == 'inductor':
        reason = compile_unavailable(torch, settings.device)
        if reason:
            return 'SKIP', dict(fields, note=reason), None, None
    lq, gt, labels = fixed_batch(batch, size)
    model = build(opt)
    lq, gt = lq.to(settings.device), gt.to(settings.device)
    if variant.channels_last:
        to_channels_last(torch, model.net_g)
        lq, gt = (t.contiguous(memory_format=torch.channels_last) for t in (lq, gt))
    problems = []
    output = None
    if not variant.compile:
        output, fields['sdpa'] = eval_output(model, lq[:2], variant.amp, variant.channels_last)
        if reference is not None and variant.amp:
            diff = (output - reference).abs().max().item()
            fields['max |out - fp32|'] = diff
            if not diff <= TOLERANCE[variant.amp]:
                problems.append(f'eval output {diff:.3g} from fp32 (tolerance {TOLERANCE[variant.amp]:g})')
    data = {'lq': lq, 'gt': gt, 'degradation': labels}
    warm = 2 if variant.compile else 1
    losses = []

    def step(iteration):
        model.feed_data(data)
        model.optimize_parameters(iteration)
        pending = model.__dict__.get('_pending_log')  # the step's losses, still on the device (no sync)
        losses.append(sum(v for k, v in pending.items() if k.startswith('l_')) if pending else
                      torch.tensor(float('nan'), device=settings.device))

    with logged_warnings(), PeakMemory(settings) as memory:
        start = time.perf_counter()
        for iteration in range(1, warm + 1):
            step(iteration)
        settings.synchronize()
        timed = time.perf_counter()
        for iteration in range(warm + 1, settings.steps + 1):
            step(iteration)
        settings.synchronize()
        end = time.perf_counter()
    values = torch.stack([v.detach().float() for v in losses]).cpu().tolist()
    fields['ms/step'] = (end - timed) / max(1, settings.steps - warm) * 1e3
    fields['peak MiB'] = memory.mib
    fields['warm-up s'] = timed - start
    fields['loss first → last'] = f'{values[0]:.4g} → {values[-1]:.4g}'
    finite = all(math.isfinite(v) for v in values)
    if not finite:
        problems.append(f'non-finite losses at steps {[i + 1 for i, v in enumerate(values) if not math.isfinite(v)]}')
    else:
        first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
        fields['fall'] = last / first
        if not last <= LOSS_FALL * first:
            problems.append(f'the loss did not fall (last three {last:.4g} vs first three {first:.4g})')
    if variant.compile:
        compiled = model.precision.forward
        if getattr(compiled, 'failed', False):
            problems.append('torch.compile failed and the step ran eagerly (the log has the error)')
        if twin_losses:
            rel = abs(values[0] - twin_losses[0]) / max(abs(twin_losses[0]), 1e-12)
            fields['first loss vs eager'] = rel
            if not rel <= COMPILE_FIRST_LOSS:
                problems.append(f'first-step loss {rel:.3g} (relative) from the eager {variant.twin} step')
    elif variant.channels_last and twin_losses:
        fields['first loss vs NCHW'] = abs(values[0] - twin_losses[0]) / max(abs(twin_losses[0]), 1e-12)
    if problems:
        fields['note'] = '; '.join(problems)
    release(model, data, lq, gt)
    if variant.compile:  # the next method compiles afresh (shapes seen before would turn dynamic)
        torch._dynamo.reset()
    return ('FAIL' if problems else 'PASS'), fields, output, values


def run_methods(report, settings, methods, variants, losses):
    """Rows of ``variants`` for every method; ``losses`` ({(method, variant name): per-step losses}) is filled and
    read: a channels-last or compiled variant's first loss is compared with its eager channels-first twin's."""
    for method in methods:
        reference = None
        for variant in variants:
            try:
                with logged_warnings():
                    status, fields, output, values = train_variant(method, variant, settings, reference,
                                                                   losses.get((method, variant.twin)))
            except Exception as err:  # noqa: BLE001 (a failing variant must not hide the others)
                logging.getLogger('basicsr').error(f'{method} {variant.name}:\n{traceback.format_exc()}')
                release()
                report.add('compile' if variant.compile else 'methods', 'FAIL', method=method, variant=variant.name,
                           error=_reason(err))
                continue
            if variant.name == 'fp32':
                reference = output
            if values is not None:
                losses[(method, variant.name)] = values
            report.add('compile' if variant.compile else 'methods', status, **fields)


# ---------------------------------------------------------------------------------------------------------- syncs
def run_syncs(report, settings, methods=('SymUNet', 'DaAIR'), precisions=('fp32', 'bf16', 'fp16')):
    for method in methods:
        recipe = load_recipe(method)
        batch, size = batch_shape(method, recipe, settings)
        lq, gt, labels = fixed_batch(batch, size)
        for precision in precisions:
            variant = parse_variant(precision)
            model = build(model_options(method, recipe, network_of(recipe, settings.tiny), variant, settings, 4))
            on_device = {'lq': lq.to(settings.device), 'gt': gt.to(settings.device), 'degradation': labels}
            with logged_warnings():
                for iteration in (1, 2):  # warm-up: cuDNN autotuning, the allocator, lazy initialisation
                    model.feed_data(on_device)
                    model.optimize_parameters(iteration)
                settings.synchronize()
                model.feed_data(on_device)
                with _sync_probe(settings) as calls:
                    model.optimize_parameters(3)
                step_calls = list(calls)
                with _sync_probe(settings) as calls:
                    model.feed_data({'lq': lq, 'gt': gt, 'degradation': labels})  # pageable CPU memory
                feed_calls = list(calls)
            expected = EXPECTED_SYNCS[precision]
            found = sorted(c.split(' (')[-1].split(':')[0].rstrip(')') if ' (' in c else c.split(':')[0]
                           for c in step_calls)
            ok = found == sorted(expected)
            report.add('syncs', 'PASS' if ok else 'FAIL', method=method, precision=precision,
                       probe='CUDA sync debug mode' if settings.cuda else 'host reads (CPU)',
                       **{'syncs per step': len(step_calls), 'where': step_calls,
                          'expected': ', '.join(expected), 'feed_data (CPU batch)': len(feed_calls)})
            release(model, on_device)


@contextlib.contextmanager
def _sync_probe(settings):
    if settings.cuda:
        with record_cuda_syncs() as calls:
            yield calls
    else:
        with RecordHostReads() as record:
            yield record.calls
