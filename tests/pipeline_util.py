"""Helpers shared by the tests that run the pipelines as subprocesses (imported via conftest's sys.path)."""
import os
import signal
import socket
import subprocess
import sys


def _run(cmd, cwd, env, timeout):
    """``subprocess.run`` in a new session: on timeout the whole process group (torchrun and its workers) is killed,
    so a hung run fails the test instead of leaving processes behind."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f'{cmd} did not finish in {timeout} s (killed):\n{stdout[-3000:]}\n{stderr[-3000:]}')
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run_python(args, cwd=None, check=True, timeout=900, threads=2):
    """``python args...`` in ``cwd`` with ``threads`` OpenMP threads; by default the exit status must be 0."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = _run([sys.executable] + list(args), cwd, env, timeout)
    if check:
        assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
    return proc


def free_port():
    """A TCP port nobody listens on now (the OS picks it), so concurrent test runs never share a master port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_torchrun(args, cwd, nproc=2, check=True, timeout=900):
    """``torchrun --nproc_per_node=nproc args...`` (one OpenMP thread per rank, a free master port)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', '--master_addr=127.0.0.1',
           f'--master_port={free_port()}'] + list(args)
    proc = _run(cmd, cwd, env, timeout)
    if check:
        assert proc.returncode == 0, f'{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    return proc
