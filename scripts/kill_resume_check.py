#!/usr/bin/env python
"""Kill-and-resume check: a training run killed (SIGKILL) at random moments and resumed with --auto_resume each
time must finish with exactly the weights of the same run left alone.

Usage (from the folder holding datasets/, e.g. after `make demo-data`):
    python scripts/kill_resume_check.py -opt options/demo/train_symunet_demo.yml --kills 3 \
        [--force_yml train:total_iter=60 logger:save_checkpoint_freq=10 ...] [--seed 0]

Runs ``<name>_ref`` straight, then ``<name>_kill`` killed exactly --kills times and resumed each time, and compares
the two ``net_g_latest.pth`` (the largest difference is printed). Every kill lands at a random moment after the run
saved one more training state and before the run's end: a little less than the shortest time between two saves of
the reference run (each resume continues from the newest training state). Exit status 0 when every kill landed and
the weights are equal (the tolerance is 0: CPU runs resume bit-exactly); a run that ends before its kill (too few
training states for the kills asked: raise ``train:total_iter`` or lower ``logger:save_checkpoint_freq``) is a
failure that says how many kills landed.
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import torch


def train_cmd(opt_file, name, overrides, resume):
    cmd = [sys.executable, '-m', 'allinone_basicsr.train', '-opt', opt_file, '--force_yml', f'name={name}',
           *overrides]
    return cmd + (['--auto_resume'] if resume else [])


def _states(name):
    """{iteration: modification time} of the run's training states (``<iter>.state``; temporary files excluded)."""
    folder = os.path.join('experiments', name, 'training_states')
    states = {}
    for file in os.listdir(folder) if os.path.isdir(folder) else []:
        stem, ext = os.path.splitext(file)
        if ext == '.state' and stem.isdigit():
            states[int(stem)] = os.path.getmtime(os.path.join(folder, file))
    return states


def save_gap(name, duration):
    """The shortest time between two consecutive training states of a finished run (``duration`` if < 2 states)."""
    times = [t for _, t in sorted(_states(name).items())]
    return min((b - a for a, b in zip(times, times[1:])), default=duration)


def run_killed(opt_file, name, overrides, delays, log):
    """For each delay: start (resuming), wait until the run has saved a new training state, SIGKILL it ``delay`` s
    later. Then run to completion. Returns the number of kills (all of them): a run that ends or fails before its
    kill exits with a message saying how many kills landed."""
    for landed, delay in enumerate(delays):
        proc = subprocess.Popen(train_cmd(opt_file, name, overrides, resume=True), stdout=log, stderr=log)
        newest = max(_states(name), default=0)
        while proc.poll() is None and max(_states(name), default=0) <= newest:  # progress: a new training state
            time.sleep(0.05)
        deadline = time.time() + delay
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        returncode = proc.wait()
        newest = max(_states(name), default=0)
        if returncode == -signal.SIGKILL:
            print(f'killed {delay:.2f} s after training state {newest}', flush=True)
            continue
        if returncode == 0:
            reason = (f'the run ended before kill {landed + 1} (newest training state: iteration {newest}); it saves '
                      'too few training states for the kills asked: raise train:total_iter or lower '
                      'logger:save_checkpoint_freq')
        else:
            reason = f'training failed with exit status {returncode}'
        raise SystemExit(f'{name}: only {landed} of {len(delays)} kills landed: {reason} (see {log.name})')
    proc = subprocess.run(train_cmd(opt_file, name, overrides, resume=True), stdout=log, stderr=log)
    if proc.returncode != 0:
        raise SystemExit(f'{name}: training failed with exit status {proc.returncode} (see {log.name})')
    print(f'{len(delays)} of {len(delays)} kills landed', flush=True)
    return len(delays)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-opt', required=True)
    parser.add_argument('--kills', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force_yml', nargs='*', default=[], help='overrides passed to both runs')
    args = parser.parse_args()
    import yaml
    with open(args.opt) as f:
        base = yaml.safe_load(f)['name']
    for o in args.force_yml:
        if o.startswith('name='):
            base = o.split('=', 1)[1]
    overrides = [o for o in args.force_yml if not o.startswith('name=')]
    ref, killed = f'{base}_ref', f'{base}_kill'
    for name in (ref, killed):
        shutil.rmtree(os.path.join('experiments', name), ignore_errors=True)
    os.makedirs('experiments', exist_ok=True)
    with open(os.path.join('experiments', f'{base}_kill_resume.log'), 'w') as log:
        start = time.time()
        proc = subprocess.run(train_cmd(args.opt, ref, overrides, resume=False), stdout=log, stderr=log)
        if proc.returncode:
            raise SystemExit(f'{ref}: training failed (see {log.name})')
        duration = time.time() - start
        rng = random.Random(args.seed)
        # each kill lands at a random moment after the run has saved one more training state, before the next save
        gap = save_gap(ref, duration)
        delays = [rng.uniform(0.0, 0.8) * gap for _ in range(args.kills)]
        kills = run_killed(args.opt, killed, overrides, delays, log)
    a = torch.load(os.path.join('experiments', ref, 'models', 'net_g_latest.pth'), weights_only=True)['params']
    b = torch.load(os.path.join('experiments', killed, 'models', 'net_g_latest.pth'), weights_only=True)['params']
    if a.keys() != b.keys():
        raise SystemExit('the two runs saved different keys')
    diff = max((x.double() - y.double()).abs().max().item() for x, y in zip(a.values(), b.values()))
    print(f'uninterrupted run {duration:.1f} s; {kills} kills; max |weight difference| = {diff:.3g}')
    sys.exit(0 if diff == 0 else 1)


if __name__ == '__main__':
    main()
