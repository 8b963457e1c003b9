"""The GPU check: every CUDA path of the package on one GPU in minutes, on data it makes itself.

    python -m allinone_basicsr.tools.gpu_check --out gpu_check            # a GPU machine: paper-size networks
    python -m allinone_basicsr.tools.gpu_check --device cpu --tiny --out /tmp/gpu_check   # the same on CPU, tiny
    ... [--official-symunet DIR] [--official-promptir DIR] [--sections S ...] [--methods M ...] [--variants V ...]
    allinone-gpu-check ...                                                 (console script)

Needs a source checkout (it reads the recipes in ``options/``), no datasets, no weight files and no network: the
images are scikit-image's photos with synthetic noise, rain and haze (``data/demo_set.py``), the CLIP and ResNet
towers are randomly initialised. Every section is timed, prints one PASS/FAIL line (and one per row), and adds rows
to ``<out>/gpu_check.md`` and ``gpu_check.json``, which are rewritten after every row: a run stopped at a time limit
keeps what it measured. ``<out>/gpu_check.log`` has BasicSR's log, the warnings and every failure's traceback.

Sections, in the order they run (``--sections`` picks some):

methods   Each method at paper size (``network_g`` of ``options/train_<method>.yml``) trained through
          ``AllInOneModel`` (the recipe's losses, clipping, non-finite guard; a constant learning rate) on one fixed
          batch (``--batch`` × ``--size``², PromptDSANet: its recipe's batch and patch), ``--steps`` steps per variant:
          ``fp32``, ``bf16`` (``train.amp: bf16``), ``fp16`` (``train.amp: fp16``, GradScaler), ``bf16+cl``
          (channels-last input and weights). A row passes when every loss is finite, the loss falls (mean of the
          last three ≤ :data:`LOSS_FALL` × mean of the first three: the gradients are right on this device) and the
          variant's eval output on the initial weights is within :data:`TOLERANCE` of fp32's. Each row gives ms per
          step (after a warm-up), the peak memory (``torch.cuda.max_memory_allocated``) and the attention kernels
          that ``scaled_dot_product_attention`` dispatched to.
syncs     Host syncs of one training step (``AllInOneModel.optimize_parameters``) of SymUNet and DaAIR in fp32,
          bf16 and fp16: on CUDA counted by CUDA's sync debug mode, on CPU the host reads a GPU would wait for
          (``utils/probes.py``). Expected: one, the non-finite guard's (fp16 adds the GradScaler's own); the
          ``feed_data`` of a batch in pageable CPU memory is reported beside it.
resume    Exact resume: ``python -m allinone_basicsr.train`` on a demo LMDB tree for N iterations (a checkpoint and a
          validation at N/2), then the state of N/2 resumed by ``--auto_resume`` in a new process: identical final
          weights (``params`` and ``params_ema``) and validation table, with ``deterministic: true``. SymUNet with
          EMA, launched by ``torchrun --nproc_per_node=1 --launcher pytorch`` (NCCL on CUDA), and DaAIR with its
          router loss, one process. The ``torchrun`` row reads the first run's log: backend, world size,
          distributed validation, checkpoint.
restore   the restore tool on the device, whole images and ``--tile``: the tiled output within :data:`TILE_PSNR`
          dB of the untiled one, and the blend itself exact (a pixel-wise network gives equal
          outputs, tiled or not).
official  With ``--official-symunet`` / ``--official-promptir`` (local checkouts of the official repositories):
          both archs at the paper config, ours loading the official weights (``strict=True``): outputs equal (TF32
          off), then fp32 and bf16 train steps (forward, L1, backward, AdamW) of the two interleaved, with the ratios.
compile   ``bf16+compile`` (``train.compile: true``) for each method, as a methods row: last, since compiling takes
          the longest; the first-step loss is compared with the eager bf16 row's.

``--tiny`` uses each method's smoke-size network (``utils/smoke.py``), ``--batch 4 --size 32``, so the whole check
runs on a CPU in minutes; the test suite runs ``--device cpu --tiny``. On a CPU every timing and memory figure is a
CPU figure (the report says so). Exit status: 0 when nothing failed, 1 otherwise, 2 for a usage error.
"""
import argparse
import contextlib
import copy
import csv
import datetime
import gc
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from os import path as osp

import cv2
import numpy as np
import torch
import yaml

import allinone_basicsr
from allinone_basicsr.data.degradations import add_gaussian_noise, noise_rng
from allinone_basicsr.data.demo_set import build_demo_data, make_images
from allinone_basicsr.models.precision import AMP_DTYPES, autocast
from allinone_basicsr.utils.checkpoint import save_network_file
from allinone_basicsr.utils.official import load_official
from allinone_basicsr.utils.probes import RecordHostReads, SdpaBackends, record_cuda_syncs
from allinone_basicsr.utils.smoke import compress_schedule, smoke_network, without_pretrained
from allinone_basicsr.utils.timing import compile_unavailable, interleaved, step_fns, to_channels_last

from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RECIPES = {'SymUNet': 'train_symunet.yml', 'SESymUNet': 'train_se_symunet.yml', 'PromptIR': 'train_promptir.yml',
           'DaAIR': 'train_daair.yml', 'PromptDSANet': 'train_promptdsanet.yml'}
METHODS = tuple(RECIPES)
OWN_SIZE = ('PromptDSANet',)  # trained at its recipe's patch and batch (global attention over every pixel)
DEFAULT_VARIANTS = ('fp32', 'bf16', 'fp16', 'bf16+cl', 'bf16+compile')
SECTIONS = ('methods', 'syncs', 'resume', 'restore', 'official', 'compile')
# eval output of the initial weights under autocast vs float32: max |difference| in image units ([0, 1] images)
TOLERANCE = {'bf16': 3e-2, 'fp16': 5e-3}
LOSS_FALL = 0.95  # the last three losses' mean must be at most this share of the first three's
COMPILE_FIRST_LOSS = 2e-2  # first-step loss of a compiled variant vs its eager twin (relative)
# dB between the tiled and the untiled restore of a real network: it sees less context in a tile (MDTA's attention
# and the U-Net's receptive field stop at the tile), so only the seams' blend can be exact
TILE_PSNR = 30.0
OFFICIAL_ATOL = 1e-4  # official vs ours, float32 outputs (TF32 off), relative to max |official output|
# smoke sizes the official constructors accept (official PromptIR hard-codes its prompt widths for dim 48)
OFFICIAL_TINY = {'SymUNet': dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1],
                                 restormer_middle_heads=2),
                 'PromptIR': dict(num_blocks=[1, 1, 1, 1], num_refinement_blocks=1)}
CONSTANT_LR = {'type': 'MultiStepLR', 'milestones': [10**9], 'gamma': 1.0}
EXPECTED_SYNCS = {'fp32': ['loss_guard.py'], 'bf16': ['loss_guard.py'], 'fp16': ['loss_guard.py', 'grad_scaler.py']}


class UsageError(ValueError):
    """A bad argument (exit status 2)."""


@dataclass(frozen=True)
class Variant:
    """A training configuration: autocast dtype (None: float32), channels-last tensors, ``torch.compile``."""
    name: str
    amp: str = None
    channels_last: bool = False
    compile: bool = False

    @property
    def twin(self):
        """The eager, channels-first variant of the same precision (its first loss is this one's reference)."""
        return self.amp or 'fp32'


def parse_variant(text):
    """``fp32`` | ``bf16`` | ``fp16``, optionally ``+cl`` (channels-last) and/or ``+compile``."""
    parts = text.split('+')
    if parts[0] not in ('fp32', 'bf16', 'fp16') or any(p not in ('cl', 'compile') for p in parts[1:]):
        raise UsageError(f'--variants: {text!r} is not fp32 | bf16 | fp16 with optional +cl and +compile')
    return Variant(text, None if parts[0] == 'fp32' else parts[0], 'cl' in parts[1:], 'compile' in parts[1:])


# --------------------------------------------------------------------------------------------------------- report
class Report:
    """Rows of every section, written as markdown and JSON after each row (``<out>/gpu_check.{md,json}``)."""

    def __init__(self, out, env):
        self.out, self.env = out, env
        self.sections, self.rows = [], []
        os.makedirs(out, exist_ok=True)

    def add(self, section, status, **fields):
        row = dict(section=section, status=status, **fields)
        self.rows.append(row)
        detail = ', '.join(f'{k} {_show(v)}' for k, v in fields.items() if v not in (None, '', []))
        print(f'{status:4s}  {section:8s}  {detail}', flush=True)
        self.write()
        return row

    @contextlib.contextmanager
    def section(self, name):
        """Times a section; its status: FAIL when it raised or a row failed, PASS when a row passed, else SKIP."""
        start, first = time.time(), len(self.rows)
        entry = {'section': name, 'status': 'RUNNING', 'seconds': None, 'note': ''}
        self.sections.append(entry)
        print(f'== {name}', flush=True)
        try:
            yield
        except Exception as err:  # noqa: BLE001 (one broken section must not hide the others)
            logging.getLogger('basicsr').error(f'section {name} failed:\n{traceback.format_exc()}')
            self.add(name, 'FAIL', error=_reason(err))
        statuses = [r['status'] for r in self.rows[first:]]
        entry['status'] = 'FAIL' if 'FAIL' in statuses else 'PASS' if 'PASS' in statuses else 'SKIP'
        entry['seconds'] = round(time.time() - start, 1)
        entry['note'] = f'{len(statuses)} rows'
        print(f'{entry["status"]}  {name}: {len(statuses)} rows in {entry["seconds"]} s', flush=True)
        self.write()

    @property
    def failed(self):
        return any(s['status'] == 'FAIL' for s in self.sections)

    def write(self):
        with open(osp.join(self.out, 'gpu_check.json'), 'w') as f:
            json.dump({'env': self.env, 'sections': self.sections, 'rows': self.rows}, f, indent=1, default=str)
        with open(osp.join(self.out, 'gpu_check.md'), 'w') as f:
            f.write(self.markdown())

    def markdown(self):
        env = self.env
        lines = ['# GPU check', '', f'{env["device_name"]} · torch {env["torch"]} · CUDA {env["cuda"]} · cuDNN '
                 f'{env["cudnn"]} · Python {env["python"]} · commit {env["commit"]} · {env["date"]}', '',
                 f'`{env["command"]}`', '']
        if env['device'] == 'cpu':
            lines += [f'**CPU run** ({env["threads"]} threads): every time and memory figure below is a CPU figure, '
                      'not a GPU one (memory: the growth of the process\'s peak resident size).', '']
        lines += ['| section | result | seconds | rows |', '|---|---|---|---|']
        lines += [f'| {s["section"]} | {s["status"]} | {s["seconds"]} | {s["note"]} |' for s in self.sections]
        for name in SECTIONS:
            rows = [r for r in self.rows if r['section'] == name]
            if not rows:
                continue
            keys = [k for k in rows[0] if k != 'section']
            for row in rows[1:]:
                keys += [k for k in row if k not in keys and k != 'section']
            lines += ['', f'## {name}', '', '| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
            lines += ['| ' + ' | '.join(_show(r.get(k, '')).replace('|', '/') for k in keys) + ' |' for r in rows]
        return '\n'.join(lines) + '\n'


def _show(value):
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f'{value:.3g}' if abs(value) < 0.01 else f'{value:.4g}' if abs(value) < 100 else f'{value:.0f}'
    if isinstance(value, (list, tuple)):
        return ', '.join(map(str, value))
    return '' if value is None else str(value)


def _reason(err, limit=300):
    text = f'{type(err).__name__}: {(str(err).strip().splitlines() or [""])[0]}'
    return text if len(text) <= limit else text[:limit - 1] + '…'


def environment(device, argv, tiny):
    commit = 'unknown'
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or commit
    except (OSError, subprocess.SubprocessError):
        pass
    cuda = device.type == 'cuda'
    name = torch.cuda.get_device_name(device) if cuda else f'CPU ({platform.processor() or platform.machine()})'
    if cuda:
        major, minor = torch.cuda.get_device_capability(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        name += f' (capability {major}.{minor}, {memory:.0f} GiB)'
    return {'device': device.type, 'device_name': name, 'torch': torch.__version__, 'cuda': torch.version.cuda,
            'cudnn': torch.backends.cudnn.version() if cuda else None, 'python': platform.python_version(),
            'allinone_basicsr': allinone_basicsr.__version__, 'commit': commit, 'tiny': tiny,
            'threads': torch.get_num_threads(), 'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
            'command': 'python -m allinone_basicsr.tools.gpu_check ' + ' '.join(argv)}


# ------------------------------------------------------------------------------------------------------ settings
@dataclass
class Settings:
    device: torch.device
    tiny: bool
    batch: int
    size: int
    steps: int
    work: str
    compile_backend: str = 'inductor'
    sized: bool = False  # --batch or --size given: every method trains at that size

    @property
    def cuda(self):
        return self.device.type == 'cuda'

    def synchronize(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)


def load_recipe(method):
    path = osp.join(REPO, 'options', RECIPES[method])
    if not osp.isfile(path):
        raise UsageError(f'the GPU check reads the recipes of a source checkout: {path} does not exist')
    with open(path) as f:
        return yaml.safe_load(f)


def network_of(recipe, tiny):
    """The recipe's ``network_g`` (smoke size with ``tiny``), external weight files replaced by random init."""
    return without_pretrained(smoke_network(recipe['network_g']) if tiny else dict(recipe['network_g']))


def batch_shape(method, recipe, settings):
    """(batch, patch) a method trains at: ``--batch`` × ``--size``, or its recipe's (``OWN_SIZE``) at full size
    when neither was given."""
    if method in OWN_SIZE and not settings.tiny and not settings.sized:
        train = recipe['datasets']['train']
        return int(train['batch_size_per_gpu']), int(train['gt_size'])
    return settings.batch, settings.size


_IMAGES = {}


def fixed_batch(batch, size):
    """``batch`` demo crops (centre ``size``²) with noise σ25, rain and haze in turn: (lq, gt, labels), CPU float32
    RGB in [0, 1], labels 0 / 1 / 2 (noise, rain, haze) as a CPU tensor, as the loader gives them."""
    if 'train' not in _IMAGES:
        _IMAGES['train'] = make_images(seed=0, splits=('train', ))['train']
    images = _IMAGES['train']
    keys = sorted(images['clean'])
    keys = [keys[i * len(keys) // batch] for i in range(batch)] if batch <= len(keys) else \
        [keys[i % len(keys)] for i in range(batch)]
    lqs, gts, labels = [], [], []
    for i, key in enumerate(keys):
        task = i % 3
        gt = images['clean'][key]
        lq = add_gaussian_noise(gt, 25, noise_rng(key, 25)) if task == 0 else \
            images['rain_lq' if task == 1 else 'haze_lq'][key]
        h, w = gt.shape[:2]
        if size > min(h, w):
            raise UsageError(f'--size {size}: the demo crops are {h}×{w}')
        top, left = (h - size) // 2, (w - size) // 2
        for img, out in ((lq, lqs), (gt, gts)):
            crop = np.ascontiguousarray(img[top:top + size, left:left + size])
            out.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0)
        labels.append(task)
    return torch.stack(lqs), torch.stack(gts), torch.tensor(labels)


@contextlib.contextmanager
def logged_warnings():
    """Warnings raised inside go to BasicSR's log (the file), not the console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield caught
    logger = logging.getLogger('basicsr')
    for message in dict.fromkeys(f'{w.category.__name__}: {w.message} ({osp.basename(w.filename)}:{w.lineno})'
                                 for w in caught):
        logger.warning(message)


def model_options(method, recipe, network, variant, settings, steps):
    """Options of an AllInOneModel training the recipe's losses, clipping and optimizer at a constant learning
    rate (a warm-up would keep it near 0 for the few steps here) in ``variant``."""
    train = copy.deepcopy(recipe['train'])
    compile_opt = ({'backend': settings.compile_backend} if settings.compile_backend != 'inductor' else True) \
        if variant.compile else False
    train.update(total_iter=steps, amp=variant.amp, compile=compile_opt, scheduler=dict(CONSTANT_LR))
    for key in ('warmup_iter', 'teacher_forcing_iter'):
        train.pop(key, None)
    folder = osp.join(settings.work, 'models', f'{method}_{variant.name}')
    return {'name': f'gpu_check_{method}', 'model_type': 'AllInOneModel', 'num_gpu': 1 if settings.cuda else 0,
            'manual_seed': 0, 'is_train': True, 'dist': False, 'rank': 0, 'world_size': 1, 'network_g': network,
            'train': train, 'datasets': {}, 'val': {'pbar': False},
            'path': {'models': folder, 'training_states': folder, 'experiments_root': folder, 'visualization': folder,
                     'results_root': folder, 'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}}


def build(opt):
    torch.manual_seed(0)  # every variant of a method starts from the same weights
    with logged_warnings():
        return build_model(opt)


def release(*objects):
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak memory of a block: CUDA's max allocated (MiB), or on CPU the growth of the peak resident size."""

    def __init__(self, settings):
        self.settings = settings

    def __enter__(self):
        if self.settings.cuda:
            torch.cuda.reset_peak_memory_stats(self.settings.device)
        else:
            import resource
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc):
        if self.settings.cuda:
            self.mib = torch.cuda.max_memory_allocated(self.settings.device) / 2**20
        else:
            import resource
            self.mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024


# -------------------------------------------------------------------------------------------------------- methods
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


# ---------------------------------------------------------------------------------------------------- subprocesses
def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_command(args, cwd, settings, timeout, log_name):
    """Runs ``args`` in ``cwd`` in its own process group (killed whole on timeout), the package importable from
    this checkout; stdout and stderr go to ``<work>/<log_name>.log``. Returns (return code, stderr text)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
               PYTHONUNBUFFERED='1')
    if not settings.cuda:
        env.setdefault('OMP_NUM_THREADS', str(max(1, torch.get_num_threads())))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f'\n(killed after {timeout} s)'
        proc.returncode = -signal.SIGKILL
    with open(osp.join(settings.work, f'{log_name}.log'), 'w') as f:
        f.write(f'$ {" ".join(args)}\n{stdout}\n--- stderr\n{stderr}')
    return proc.returncode, stderr


def _tail(text, lines=3):
    return ' / '.join(line.strip() for line in text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------------- resume
RESUME_RUNS = (('SymUNet', {'ema_decay': 0.999}, True), ('DaAIR', {}, False))  # (method, train keys, torchrun)


def demo_tree(settings):
    root = osp.join(settings.work, 'datasets', 'demo')
    with logged_warnings():
        build_demo_data(root, seed=0, verbose=False)
    return root


def resume_options(method, extra_train, settings, data, iters, name):
    """The method's recipe on the demo tree: its network (smoke size with ``--tiny``), losses, optimizer and
    schedule shape squeezed into ``iters`` iterations, a checkpoint and a validation at half way, deterministic."""
    recipe = load_recipe(method)
    opt = copy.deepcopy(recipe)
    train_set = opt['datasets']['train']
    loader = {k: train_set[k] for k in ('use_hflip', 'use_rot') if k in train_set}
    gt_size, batch = (32, 2) if settings.tiny else (min(settings.size, 128), 4)
    workers = 2 if settings.cuda else 0
    opt['datasets'] = {
        'train': dict(name='demo_3task', type='MixedDegradationDataset', degradation_classes=['noise', 'rain', 'haze'],
                      tasks=[{'name': f'denoise_{s}', 'degradation': 'noise', 'noise_sigma': s,
                              'dataroot_gt': f'{data}/train/clean.lmdb'} for s in (15, 25, 50)] + [
                          {'name': 'derain', 'degradation': 'rain', 'dataroot_lq': f'{data}/train/rain_lq.lmdb',
                           'dataroot_gt': f'{data}/train/rain_gt.lmdb'},
                          {'name': 'dehaze', 'degradation': 'haze', 'dataroot_lq': f'{data}/train/haze_lq.lmdb',
                           'dataroot_gt': f'{data}/train/haze_gt.lmdb'}],
                      gt_size=gt_size, batch_size_per_gpu=batch, num_worker_per_gpu=workers,
                      persistent_workers=workers > 0, dataset_enlarge_ratio=1, prefetch_mode=None, **loader),
    }
    for key, degradation, extra in (('val_noise25', 'noise', {'noise_sigma': 25, 'dataroot_gt':
                                                              f'{data}/test/clean.lmdb'}),
                                    ('val_rain', 'rain', {'dataroot_lq': f'{data}/test/rain_lq.lmdb',
                                                          'dataroot_gt': f'{data}/test/rain_gt.lmdb'}),
                                    ('val_haze', 'haze', {'dataroot_lq': f'{data}/test/haze_lq.lmdb',
                                                          'dataroot_gt': f'{data}/test/haze_gt.lmdb'})):
        opt['datasets'][key] = dict(name=f'demo_{key[4:]}', type='AllInOneTestDataset', degradation=degradation,
                                    degradation_classes=['noise', 'rain', 'haze'], crop_to_multiple=16, **extra)
    opt.update(name=name, num_gpu=1 if settings.cuda else 0, deterministic=True, manual_seed=10)
    opt['network_g'] = network_of(recipe, settings.tiny)
    opt['train'].update(total_iter=iters, **extra_train)
    compress_schedule(opt['train'], iters)
    opt['val'].update(val_freq=iters // 2, save_img=False, pbar=False)
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': iters // 2, 'use_tb_logger': False,
                     'wandb': {'project': None, 'resume_id': None}}
    opt['path'] = {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}
    return opt


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _weights_differences(first, second):
    """Readable lines for every tensor of two network files that is not bitwise equal."""
    lines = []
    for key in sorted(set(first) | set(second)):
        if key not in first or key not in second:
            lines.append(f'{key}: only in one file')
            continue
        for name, tensor in first[key].items():
            other = second[key].get(name)
            if other is None or other.shape != tensor.shape:
                lines.append(f'{key}.{name}: missing or another shape')
            elif not torch.equal(tensor, other):
                lines.append(f'{key}.{name}: max |diff| {(tensor.double() - other.double()).abs().max().item():.3g}')
    return lines


def run_resume(report, settings, iters):
    data = demo_tree(settings)
    timeout = 600 if settings.cuda else 900
    for method, extra_train, launch in RESUME_RUNS:
        name = f'gpu_check_resume_{method.lower()}'
        opt = resume_options(method, extra_train, settings, data, iters, name)
        option_file = osp.join(settings.work, f'{name}.yml')
        with open(option_file, 'w') as f:
            yaml.safe_dump(opt, f, sort_keys=False)
        exp = osp.join(settings.work, 'experiments', name)
        shutil.rmtree(exp, ignore_errors=True)
        train = ['-m', 'allinone_basicsr.train', '-opt', option_file]
        if launch:
            args = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=1', '--master_addr=127.0.0.1',
                    f'--master_port={_free_port()}'] + train + ['--launcher', 'pytorch']
        else:
            args = [sys.executable] + train
        extra = ', '.join(f'{k} {v}' for k, v in extra_train.items())
        fields = {'method': method, 'launcher': 'torchrun (1 process)' if launch else 'python',
                  'iterations': f'{iters}, resumed at {iters // 2}', 'extra': extra}
        start = time.time()
        rc, stderr = run_command(args, settings.work, settings, timeout, f'{name}_first')
        fields['first run s'] = time.time() - start
        if rc:
            report.add('resume', 'FAIL', **fields, error=f'first run: exit {rc}: {_tail(stderr)}')
            if launch:
                report.add('resume', 'FAIL', check='torchrun', error='the run failed (see the resume row)')
            continue
        models = osp.join(exp, 'models')
        first = torch.load(osp.join(models, 'net_g_latest.pth'), weights_only=True)
        first_table = _read_csv(osp.join(exp, 'metrics.csv'))
        first_log = ''.join(open(osp.join(exp, f)).read() for f in sorted(os.listdir(exp)) if f.startswith('train_'))
        for path in (osp.join(exp, 'training_states', f'{iters}.state'), osp.join(models, f'net_g_{iters}.pth')):
            if osp.exists(path):
                os.remove(path)
        start = time.time()
        rc, stderr = run_command(args + ['--auto_resume'], settings.work, settings, timeout, f'{name}_resumed')
        fields['resumed run s'] = time.time() - start
        if rc:
            report.add('resume', 'FAIL', **fields, error=f'resumed run: exit {rc}: {_tail(stderr)}')
            if launch:
                report_torchrun(report, settings, first_log, exp, iters, name)
            continue
        log = ''.join(open(osp.join(exp, f)).read() for f in sorted(os.listdir(exp)) if f.startswith('train_'))
        second = torch.load(osp.join(models, 'net_g_latest.pth'), weights_only=True)
        differences = _weights_differences(first, second)
        nondeterministic = sorted({line.split(' does not have a deterministic')[0].split(':')[-1].strip()
                                   for line in stderr.splitlines() if 'does not have a deterministic' in line})
        problems = []
        if 'Resuming training from epoch: ' not in log or f'iter: {iters // 2}.' not in log:
            problems.append(f'the second run did not resume from iteration {iters // 2}')
        if differences:
            problems.append(f'{len(differences)} tensors differ: {"; ".join(differences[:3])}')
        if _read_csv(osp.join(exp, 'metrics.csv')) != first_table:
            problems.append('the final validation tables differ')
        fields.update({'keys': ', '.join(sorted(first)), 'tensors equal': not differences,
                       'ops without a deterministic kernel': nondeterministic or 'none'})
        report.add('resume', 'FAIL' if problems else 'PASS', **fields, note='; '.join(problems))
        if launch:
            report_torchrun(report, settings, first_log, exp, iters, name)


def report_torchrun(report, settings, log, exp, iters, name):
    """The torchrun row: what the first (distributed) run's log and files show."""
    backend = log.split('Distributed: backend ')[-1].split(',')[0] if 'Distributed: backend ' in log else None
    expected = 'cpu:gloo,cuda:nccl' if settings.cuda else 'gloo'
    checks = {
        'backend': backend == expected,
        'world size 1': 'world_size: 1' in log,
        'DDP': 'Network: DistributedDataParallel' in log,
        'distributed validation': 'dist: True' in log and log.count(f'Results of {name} at {iters // 2}:') == 1,
        'checkpoint': osp.isfile(osp.join(exp, 'models', f'net_g_{iters // 2}.pth'))
        and osp.isfile(osp.join(exp, 'training_states', f'{iters // 2}.state')),
        'clean exit': 'Weights identical on all 1 ranks' in log,
    }
    failed = [k for k, ok in checks.items() if not ok]
    report.add('resume', 'FAIL' if failed else 'PASS', check='torchrun', backend=backend, expected=expected,
               passed=', '.join(k for k, ok in checks.items() if ok),
               note=f'failed: {", ".join(failed)}' if failed else '')


# --------------------------------------------------------------------------------------------------------- restore
def run_restore(report, settings):
    from .restore import restore_tensor
    folder = osp.join(settings.work, 'restore')
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(osp.join(folder, 'input'))
    recipe = load_recipe('SymUNet')
    network = network_of(recipe, settings.tiny)
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(network['type'])(**{k: v for k, v in network.items() if k != 'type'})
    weights = osp.join(folder, 'symunet.pth')
    save_network_file({'params': net.state_dict()}, weights)
    with open(osp.join(folder, 'restore.yml'), 'w') as f:
        yaml.safe_dump({'name': 'gpu_check_restore', 'model_type': 'AllInOneModel', 'num_gpu': 1, 'network_g': network,
                        'path': {'pretrain_network_g': weights, 'param_key_g': 'params'}}, f, sort_keys=False)
    images = make_images(seed=0, splits=('test', ))['test']['rain_lq']
    tile, overlap = (32, 8) if settings.tiny else (128, 32)
    for i, key in enumerate(sorted(images)[:2]):
        img = images[key]
        if settings.tiny:
            img = cv2.resize(img, (96, 64), interpolation=cv2.INTER_AREA)
        elif i == 1:
            img = cv2.resize(img, (480, 320), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(osp.join(folder, 'input', f'{key}.png'), img[..., ::-1])
    outputs = {}
    for label, extra in (('whole', []), ('tiled', ['--tile', str(tile), '--tile-overlap', str(overlap)])):
        args = [sys.executable, '-m', 'allinone_basicsr.tools.restore', '-opt', osp.join(folder, 'restore.yml'),
                '--input', osp.join(folder, 'input'), '--output', osp.join(folder, label),
                '--device', str(settings.device)]
        start = time.time()
        rc, stderr = run_command(args + extra, folder, settings, 600, f'restore_{label}')
        if rc:
            report.add('restore', 'FAIL', run=label, error=f'exit {rc}: {_tail(stderr)}')
            return
        outputs[label] = time.time() - start
    for name in sorted(os.listdir(osp.join(folder, 'input'))):
        whole = cv2.imread(osp.join(folder, 'whole', name)).astype(np.float64)
        tiled = cv2.imread(osp.join(folder, 'tiled', name)).astype(np.float64)
        mse = float(((whole - tiled) ** 2).mean())
        psnr = float('inf') if mse == 0 else 10 * math.log10(255.0**2 / mse)
        report.add('restore', 'PASS' if psnr >= TILE_PSNR else 'FAIL',
                   image=f'{name} {whole.shape[1]}×{whole.shape[0]}', tile=f'{tile} (overlap {overlap})',
                   **{'PSNR tiled vs whole (dB)': psnr, 'bound': TILE_PSNR,
                      'max |diff| (0-255)': float(np.abs(whole - tiled).max()), 'whole s': outputs['whole'],
                      'tiled s': outputs['tiled']})
    # the blend itself: a pixel-wise network gives the same output tiled or not (the weights sum to one)
    pointwise = torch.nn.Conv2d(3, 3, 1).to(settings.device)
    x = torch.rand(1, 3, 3 * tile + 5, 2 * tile + 3, device=settings.device)
    with torch.no_grad():
        diff = (restore_tensor(pointwise, x, tile, overlap) - pointwise(x)).abs().max().item()
    report.add('restore', 'PASS' if diff <= 1e-5 else 'FAIL', image=f'random {x.shape[-1]}×{x.shape[-2]}',
               tile=f'{tile} (overlap {overlap})', **{'pixel-wise net: max |tiled - whole|': diff, 'bound': 1e-5})
    release(net, pointwise, x)


# -------------------------------------------------------------------------------------------------------- official
def run_official(report, settings, checkouts):
    given = {m: c for m, c in checkouts.items() if c}
    if not given:
        report.add('official', 'SKIP', note='no --official-symunet / --official-promptir checkout given')
        return
    dev = settings.device
    for method, checkout in given.items():
        found, cls, config = load_official(checkout)
        if found != method:
            raise UsageError(f'--official-{method.lower()} {checkout}: that is the official {found} code')
        if settings.tiny:
            config.update(OFFICIAL_TINY[method])
        torch.manual_seed(0)
        with logged_warnings():
            official = cls(**config).to(dev)
            ours = ARCH_REGISTRY.get(method)(**config).to(dev)
        ours.load_state_dict(official.state_dict(), strict=True)
        lq, gt, _ = fixed_batch(settings.batch, settings.size)
        lq, gt = lq.to(dev), gt.to(dev)
        tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.no_grad():
                reference = official.eval()(lq[:2])
                diff = (ours.eval()(lq[:2]) - reference).abs().max().item()
            scale = max(1.0, reference.abs().max().item())
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        fns = {}
        with logged_warnings():
            for name, net in (('official', official), ('ours', ours)):
                for precision, bf16 in (('fp32', False), ('bf16', True)):
                    train, _ = step_fns(torch, net, lq, gt, torch.optim.AdamW(net.parameters(), 1e-4), dev, bf16)
                    train()  # warm-up
                    fns[f'{name} {precision}'] = train
            times = interleaved(fns, 3 if settings.tiny else 5, time.perf_counter)
        best = {name: min(values) * 1e3 for name, values in times.items()}
        ok = diff <= OFFICIAL_ATOL * scale
        report.add('official', 'PASS' if ok else 'FAIL', method=method, batch=f'{settings.batch}×{settings.size}²',
                   **{'max |ours - official|': diff, 'bound': OFFICIAL_ATOL * scale,
                      'official fp32 ms': best['official fp32'], 'ours fp32 ms': best['ours fp32'],
                      'fp32 ratio': best['ours fp32'] / best['official fp32'],
                      'official bf16 ms': best['official bf16'], 'ours bf16 ms': best['ours bf16'],
                      'bf16 ratio': best['ours bf16'] / best['official bf16'],
                      'ours bf16 ÷ official fp32': best['ours bf16'] / best['official fp32']})
        release(official, ours, fns)


# ------------------------------------------------------------------------------------------------------------ CLI
def _parser():
    doc = __doc__.split('\n\n')
    parser = argparse.ArgumentParser(prog='python -m allinone_basicsr.tools.gpu_check', description=doc[0],
                                     epilog='\n\n'.join(doc[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda', help='cuda, cuda:N or cpu (default: cuda)')
    parser.add_argument('--out', default='gpu_check', help='folder of the report (default: gpu_check)')
    parser.add_argument('--tiny', action='store_true', help='smoke-size networks, --batch 4 --size 32 (for CPUs)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS), metavar='SECTION',
                        help=f'sections to run (default: all, in this order: {" ".join(SECTIONS)})')
    parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS), metavar='METHOD',
                        help=f'methods of the methods and compile sections (default: {" ".join(METHODS)})')
    parser.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS), metavar='VARIANT',
                        help=f'variants of the methods section (default: {" ".join(DEFAULT_VARIANTS)}); fp32 always '
                        'runs first, as the reference of the others; +compile variants form the compile section')
    parser.add_argument('--batch', type=int, default=None, help='batch of the methods section (default: 8, '
                        "PromptDSANet its recipe's; tiny: 4); given, it applies to every method")
    parser.add_argument('--size', type=int, default=None, help="patch size (default: 128, PromptDSANet its recipe's; "
                        'tiny: 32); given, it applies to every method')
    parser.add_argument('--steps', type=int, default=20, help='training steps per variant (default: 20)')
    parser.add_argument('--resume-iters', type=int, default=None, help='iterations of the resume runs, even '
                        '(default: 8; tiny: 4)')
    parser.add_argument('--official-symunet', metavar='DIR', help='a checkout of WenlongJiao/SymUNet')
    parser.add_argument('--official-promptir', metavar='DIR', help='a checkout of va1shn9v/PromptIR')
    parser.add_argument('--compile-backend', default='inductor',
                        help="torch.compile backend of the compile section (default: inductor; aot_eager traces and "
                        "differentiates the same graphs without generating kernels, which on a 2-core CPU takes "
                        'minutes per method)')
    parser.add_argument('--work-dir', default=None, help='folder for the data and runs (default: a temporary one, '
                        'removed at the end)')
    return parser


def _basicsr_log(path):
    """BasicSR's logger writes to ``path`` only (the console gets the check's own lines)."""
    from basicsr.utils import logger as basicsr_logger
    logger = logging.getLogger('basicsr')
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.FileHandler(path, 'w')
    handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s: %(message)s'))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    basicsr_logger.initialized_logger['basicsr'] = True


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    variants = [parse_variant(v) for v in dict.fromkeys(args.variants)]
    variants = [parse_variant('fp32')] + [v for v in variants if v.name != 'fp32']
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UsageError('--device cuda: torch.cuda.is_available() is False here (use --device cpu --tiny)')
    if device.type not in ('cuda', 'cpu'):
        raise UsageError(f'--device {args.device}: expected cuda, cuda:N or cpu')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    batch = args.batch or (4 if args.tiny else 8)
    size = args.size or (32 if args.tiny else 128)
    resume_iters = args.resume_iters or (4 if args.tiny else 8)
    if args.steps < 6 or resume_iters < 2 or resume_iters % 2:
        raise UsageError('--steps must be at least 6 (three first and three last losses); --resume-iters even, >= 2')
    for key, path in (('--official-symunet', args.official_symunet), ('--official-promptir', args.official_promptir)):
        if path and not osp.isdir(path):
            raise UsageError(f'{key} {path}: not a folder')
    work = args.work_dir or tempfile.mkdtemp(prefix='allinone_gpu_check_')
    os.makedirs(work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    _basicsr_log(osp.join(args.out, 'gpu_check.log'))
    settings = Settings(device, args.tiny, batch, size, args.steps, osp.abspath(work), args.compile_backend,
                        sized=args.batch is not None or args.size is not None)
    report = Report(args.out, environment(device, argv, args.tiny))
    print(f'GPU check on {report.env["device_name"]}, torch {torch.__version__}; report: {args.out}/gpu_check.md',
          flush=True)
    eager = [v for v in variants if not v.compile]
    compiled = [v for v in variants if v.compile]
    losses = {}
    start = time.time()
    try:
        for section in args.sections:
            if section == 'compile' and not compiled:
                continue
            with report.section(section):
                if section == 'methods':
                    run_methods(report, settings, args.methods, eager, losses)
                elif section == 'syncs':
                    run_syncs(report, settings)
                elif section == 'resume':
                    run_resume(report, settings, resume_iters)
                elif section == 'restore':
                    run_restore(report, settings)
                elif section == 'official':
                    run_official(report, settings, {'SymUNet': args.official_symunet,
                                                    'PromptIR': args.official_promptir})
                elif section == 'compile':
                    run_methods(report, settings, args.methods, compiled, losses)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    failed = [s['section'] for s in report.sections if s['status'] == 'FAIL']
    print(f'GPU check: {"FAIL (" + ", ".join(failed) + ")" if failed else "PASS"} in {time.time() - start:.0f} s; '
          f'report: {osp.join(args.out, "gpu_check.md")}', flush=True)
    return 1 if failed else 0


def cli(argv=None):
    try:
        code = main(argv)
    except UsageError as err:
        print(f'gpu_check: error: {err}', file=sys.stderr)
        code = 2
    raise SystemExit(code)


if __name__ == '__main__':
    cli()
