"""Helpers shared by the tests that run the pipelines as subprocesses (imported via conftest's sys.path)."""
import os
import subprocess
import sys

from allinone_basicsr.utils.processes import free_port, run_process


def _run(cmd, cwd, env, timeout):
    """The package's ``run_process`` (a new session; on timeout the whole process group, torchrun and its workers,
    is killed), so a hung run fails the test instead of leaving processes behind."""
    code, stdout, stderr, timed_out = run_process(cmd, cwd, env, timeout)
    if timed_out:
        raise AssertionError(f'{cmd} did not finish in {timeout} s (killed):\n{stdout[-3000:]}\n{stderr[-3000:]}')
    return subprocess.CompletedProcess(cmd, code, stdout, stderr)


def run_python(args, cwd=None, check=True, timeout=900, threads=2):
    """``python args...`` in ``cwd`` with ``threads`` OpenMP threads; by default the exit status must be 0."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = _run([sys.executable] + list(args), cwd, env, timeout)
    if check:
        assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


def run_torchrun(args, cwd, nproc=2, check=True, timeout=900):
    """``torchrun --nproc_per_node=nproc args...`` (one OpenMP thread per rank, a free master port)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}'] + list(args)
    proc = _run(cmd, cwd, env, timeout)
    if check:
        assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc


def stand_in_official_symunet(folder):
    """A stand-in official SymUNet checkout (the official code is not in this repository): its SymUNet_arch.py
    imports ``transformers`` at the top like the official file (replaced by an empty module when not installed)
    and defines SymUNet as ours."""
    arch = folder / 'basicsr' / 'models' / 'archs' / 'SymUNet_arch.py'
    arch.parent.mkdir(parents=True)
    arch.write_text('from transformers import CLIPModel, CLIPImageProcessor\n'
                    'from allinone_basicsr.archs.symunet_arch import SymUNet as _Ours\n\n\n'
                    'class SymUNet(_Ours):\n    pass\n')
    return folder
