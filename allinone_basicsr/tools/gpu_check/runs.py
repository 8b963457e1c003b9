"""The resume, restore and official sections: the package's commands run on the device, and the official code."""
import copy
import csv
import math
import os
import shutil
import sys
import time
from os import path as osp

import cv2
import numpy as np
import torch
import yaml

from allinone_basicsr.data.demo_set import build_demo_data, make_images
from allinone_basicsr.tools.common import UsageError
from allinone_basicsr.tools.gpu_check.common import (OFFICIAL_ATOL, OFFICIAL_TINY, REPO, TILE_PSNR, fixed_batch,
                                                     load_recipe, logged_warnings, network_of, release)
from allinone_basicsr.utils.checkpoint import save_network_file
from allinone_basicsr.utils.official import load_official
from allinone_basicsr.utils.processes import free_port, run_process
from allinone_basicsr.utils.smoke import compress_schedule
from allinone_basicsr.utils.timing import interleaved, step_fns

from basicsr.utils.registry import ARCH_REGISTRY


def run_command(args, cwd, settings, timeout, log_name):
    """Runs ``args`` in ``cwd`` in its own process group (killed whole on timeout), the package importable from
    this checkout; stdout and stderr go to ``<work>/<log_name>.log``. Returns (return code, stderr text)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p]),
               PYTHONUNBUFFERED='1')
    if not settings.cuda:
        env.setdefault('OMP_NUM_THREADS', str(max(1, torch.get_num_threads())))
    code, stdout, stderr, timed_out = run_process(args, cwd, env, timeout)
    if timed_out:
        stderr += f'\n(killed after {timeout} s)'
    with open(osp.join(settings.work, f'{log_name}.log'), 'w') as f:
        f.write(f'$ {" ".join(args)}\n{stdout}\n--- stderr\n{stderr}')
    return code, stderr


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
                    f'--master_port={free_port()}'] + train + ['--launcher', 'pytorch']
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
    from allinone_basicsr.tools.restore import restore_tensor
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
