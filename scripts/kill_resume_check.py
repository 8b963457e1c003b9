#!/usr/bin/env python
"""Kill-and-resume check: a training run killed (SIGKILL) at random moments and resumed with --auto_resume each
time must finish with exactly the weights of the same run left alone.

Usage (from the folder holding datasets/, e.g. after `make demo-data`):
    python scripts/kill_resume_check.py -opt options/demo/train_symunet_demo.yml --kills 3 \
        [--force_yml train:total_iter=60 logger:save_checkpoint_freq=10 ...] [--seed 0]

Runs ``<name>_ref`` straight, then ``<name>_kill`` killed --kills times, each at a random moment after it saved
one more training state (each resume continues from the newest readable training state), compares the two
``net_g_latest.pth`` and prints the largest difference. Exit status 0 when they are equal (the tolerance is 0:
CPU runs resume bit-exactly).
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
    folder = os.path.join('experiments', name, 'training_states')
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


def run_killed(opt_file, name, overrides, delays, log):
    """Start; once the run has saved a new training state, SIGKILL it after the next delay; resume; repeat; finally
    run to completion. Returns the number of kills done."""
    kills = 0
    for delay in delays + [None]:
        proc = subprocess.Popen(train_cmd(opt_file, name, overrides, resume=True), stdout=log, stderr=log)
        if delay is not None:
            saved = _states(name)
            while proc.poll() is None and _states(name) == saved:  # wait for progress: a new training state
                time.sleep(0.2)
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                print(f'killed {delay:.1f} s after training state {_states(name)}', flush=True)
                continue
        proc.wait()
        if proc.returncode != 0:
            raise SystemExit(f'{name}: training failed with exit status {proc.returncode} (see {log.name})')
        if delay is not None:
            print(f'run finished before the kill at {delay:.1f} s', flush=True)
        break
    return kills


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
        # each kill lands at a random moment after the run has saved one more training state
        delays = [rng.uniform(0.0, 0.3) * duration / args.kills for _ in range(args.kills)]
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
