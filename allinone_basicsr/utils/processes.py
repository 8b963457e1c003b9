"""Child processes that cannot outlive their time: the tools' and the tests' runs of the package's commands."""
import os
import signal
import socket
import subprocess


def run_process(args, cwd=None, env=None, timeout=None):
    """``args`` run in ``cwd`` in a new session, its output captured; on timeout the whole process group (torchrun
    and its workers too) is killed. Returns (return code, stdout, stderr, timed out); a killed run's code is
    ``-SIGKILL``."""
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stdout, stderr, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        return -signal.SIGKILL, stdout, stderr, True


def free_port():
    """A TCP port nobody listens on now (the OS picks it), for a torchrun master."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
