"""Helpers shared by the tests that run the pipelines as subprocesses (imported via conftest's sys.path)."""
import os
import subprocess
import sys


def run_python(args, cwd, check=True, timeout=900):
    """``python args...`` in ``cwd`` with 2 OpenMP threads; by default the exit status must be 0."""
    env = dict(os.environ, OMP_NUM_THREADS='2')
    proc = subprocess.run([sys.executable] + list(args), cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc
