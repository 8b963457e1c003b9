"""Two CPU processes (torchrun, gloo chosen automatically without CUDA): distributed validation (images shared between
the ranks, scores gathered) equals a single-process test of the same weights; a stopped rank stops every rank within
dist_params.timeout, named; two torchrun agents (two nodes on localhost) train, validate, are killed and resume
bit-exactly. (test_full_recipes.py runs every full recipe on two ranks.)"""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_util import run_python, run_torchrun

from allinone_basicsr.utils.processes import free_port

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[2]
# archs with buffers: DaAIR's EMA controllers; PromptDSANet's randomly initialised ResNet, whose BatchNorm statistics
# train (and drift apart on the two ranks)
TINY = {
    'daair': {'type': 'DaAIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_dec_blocks': [1, 1, 1],
              'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2], 'rank_ratio': 4, 'expert_kernel_size': 3},
    'promptdsanet': {'type': 'PromptDSANet', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 0,
                     'heads': [1, 2, 4, 8], 'prompt_dims': [8, 16, 40], 'prompt_sizes': [16, 8, 4],
                     'prompt_net': 'resnet18', 'prompt_net_pretrained': None, 'spatial_window': 8},
}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    from make_demo_data import build_demo_data
    root = tmp_path_factory.mktemp('ddp')
    build_demo_data(str(root / 'datasets' / 'demo'), seed=0)
    return root


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def dump(opt, path):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)


def read_table(path):
    with open(path) as f:
        return {row['test_set']: row for row in csv.DictReader(f)}


@pytest.mark.parametrize('method', ['daair', 'promptdsanet'])
def test_distributed_validation_equals_single_process_test(workdir, method):
    """Two ranks train 2 iterations (EMA on, as a net_g_ema with buffers), validate at iteration 2 (the last: once)
    (3 images per set: 2 on rank 0, 1 on rank 1); a single process then tests the saved EMA weights on the same
    sets. Every number of the table is identical."""
    name = f'ddp_val_{method}'
    opt = load(REPO / 'options' / 'demo' / f'train_{method}_demo.yml')
    opt.update(name=name, network_g=dict(TINY[method]))
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, persistent_workers=False,
                                    dataset_enlarge_ratio=1)
    opt['train'].update(total_iter=2, ema_decay=0.5)
    opt['train']['scheduler'] = {'type': 'CosineAnnealingRestartLR', 'periods': [2], 'restart_weights': [1],
                                 'eta_min': 1e-6}
    opt['val'].update(val_freq=2, pbar=False)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    dump(opt, workdir / f'{name}.yml')
    proc = run_torchrun(['-m', 'allinone_basicsr.train', '-opt', f'{name}.yml', '--launcher', 'pytorch'], workdir,
                        timeout=600)
    exp = workdir / 'experiments' / name
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    # one validation at iteration 2, the last: the final validation is not run again on the same weights
    assert log.count('Results of') == 1 and 'Results of ddp_val_' in log, proc.stdout[-2000:]
    assert 'Weights identical on all 2 ranks' in log
    if method == 'promptdsanet':
        assert "BatchNorm statistics: rank 0's" in log
    distributed = read_table(exp / 'metrics.csv')

    test = load(REPO / 'options' / 'demo' / f'test_{method}_demo.yml')
    test.update(name=f'{name}_single', network_g=dict(TINY[method]))
    test['path'].update(pretrain_network_g=str(exp / 'models' / 'net_g_latest.pth'), param_key_g='params_ema')
    test['val'].update(pbar=False)
    dump(test, workdir / f'{name}_test.yml')
    run_python(['-m', 'allinone_basicsr.test', '-opt', f'{name}_test.yml'], workdir, threads=1, timeout=600)
    single = read_table(workdir / 'results' / f'{name}_single' / 'metrics.csv')
    assert distributed.keys() == single.keys() and len(single) == 6  # 5 sets + the average
    for test_set, row in single.items():
        assert row == distributed[test_set], test_set  # every column, as written (full precision)


def tiny_run(name, total_iter, **train):
    """The DaAIR demo file with the tiny DaAIR, ``total_iter`` iterations, no validation during training unless
    ``val_freq`` is given."""
    opt = load(REPO / 'options' / 'demo' / 'train_daair_demo.yml')
    opt.update(name=name, network_g=dict(TINY['daair']), manual_seed=3)
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, persistent_workers=False,
                                    dataset_enlarge_ratio=1)
    opt['train'].update(total_iter=total_iter, ema_decay=0.5)
    opt['train']['scheduler'] = {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                                 'eta_min': 1e-6}
    opt['val'].update(val_freq=train.pop('val_freq', total_iter * 10), pbar=False)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=train.pop('save_checkpoint_freq', total_iter * 10),
                         use_tb_logger=False)
    opt.update(train)
    return opt


def children(pid):
    """{global rank: pid} of the processes whose parent is ``pid`` (torchrun's workers; RANK from their
    environment)."""
    found = {}
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            if ppid != pid:
                continue
            with open(f'/proc/{entry}/environ', 'rb') as f:
                env = dict(v.split(b'=', 1) for v in f.read().split(b'\0') if b'=' in v)
            found[int(env[b'RANK'])] = int(entry)
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return found


def torchrun_cmd(args, nnodes=1, node_rank=0, port=None, nproc=2):
    return [sys.executable, '-m', 'torch.distributed.run', f'--nnodes={nnodes}', f'--nproc_per_node={nproc}',
            f'--node_rank={node_rank}', '--rdzv_backend=static', '--master_addr=127.0.0.1',
            f'--master_port={port or free_port()}'] + list(args)


def start(cmd, cwd, output):
    """``cmd`` in its own session (so that the whole group can be killed), its output into the file ``output``."""
    with open(output, 'w') as out:
        return subprocess.Popen(cmd, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def wait_for(condition, what, timeout, procs=()):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f'timed out waiting for {what}'
        assert all(p.poll() is None for p in procs), f'a run ended while waiting for {what}'
        time.sleep(0.1)


def log_text(workdir, name):
    return ''.join(p.read_text() for p in (workdir / 'experiments' / name).glob('train_*.log'))


def test_a_stopped_rank_stops_every_rank_within_the_timeout_naming_it(workdir, tmp_path):
    """Rank 1 is SIGSTOPped while training (dist_params.timeout: 20 s): rank 0 exits within the bound naming rank 1
    (stderr and the log), torchrun then ends rank 1, and the run fails. Before: rank 0 waited in the gradient
    all-reduce for gloo's 30 minutes without a word (this test's bound caught it)."""
    name = 'ddp_sigstop'
    opt = tiny_run(name, 100000, dist_params={'timeout': 20})
    dump(opt, workdir / f'{name}.yml')
    proc = start(torchrun_cmd(['-m', 'allinone_basicsr.train', '-opt', f'{name}.yml', '--launcher', 'pytorch']),
                 workdir, tmp_path / 'out.txt')
    ranks = {}
    try:
        wait_for(lambda: log_text(workdir, name).count(', iter:') >= 3, 'training to start', 300, [proc])
        ranks = children(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGSTOP)
        stopped = time.time()
        # 20 s of silence, the beat and check lag (2 s each), then torchrun's 30 s grace before it SIGKILLs the
        # stopped rank; the bound is generous for a loaded machine, far below gloo's 30 minutes
        try:
            code = proc.wait(timeout=150)
        except subprocess.TimeoutExpired:
            pytest.fail(f'the run still waits {time.time() - stopped:.0f} s after rank 1 stopped (no timeout)')
        print(f'the run ended {time.time() - stopped:.0f} s after rank 1 was stopped')  # measured (pytest -s)
        output = (tmp_path / 'out.txt').read_text()
        assert code != 0
        assert 'Distributed run stopped by rank 0' in output and 'rank 1 (host:pid' in output, output[-3000:]
        assert f':{ranks[1]}, last at ' in output and 'has not answered for 2' in output
        assert 'rank 1 (host:pid' in log_text(workdir, name)  # rank 0 writes the experiment log
        for pid in ranks.values():  # every rank has ended
            assert not os.path.exists(f'/proc/{pid}') or open(f'/proc/{pid}/stat').read().split()[2] == 'Z'
    finally:
        if 1 in ranks and os.path.exists(f'/proc/{ranks[1]}'):
            os.kill(ranks[1], signal.SIGKILL)
        kill_group(proc)


def test_two_nodes_train_validate_are_killed_and_resume_bit_exactly(workdir, tmp_path):
    """Two torchrun agents (--nnodes=2, one process each, static rendezvous on localhost) as two nodes: a run killed
    (SIGKILL, both agents) after its validation at iteration 8 and its state at 12, then resumed with --auto_resume
    as a requeued job (its lock, held by global rank 0, rewritten as from another node with an expired heartbeat),
    ends with the weights and the final validation of the run left alone, bit for bit. While the run lives, its lock
    is refreshed (heartbeat)."""
    total = 24

    def agents(name, resume, tag):
        dump(tiny_run(name, total, val_freq=8, save_checkpoint_freq=4, lock_lease=10), workdir / f'{name}.yml')
        args = ['-m', 'allinone_basicsr.train', '-opt', f'{name}.yml', '--launcher', 'pytorch']
        port = free_port()
        return [start(torchrun_cmd(args + (['--auto_resume'] if resume else []), nnodes=2, node_rank=node, port=port,
                                   nproc=1), workdir, tmp_path / f'{tag}_node{node}.txt') for node in (0, 1)]

    def finish(procs, tag):
        try:
            codes = [p.wait(timeout=600) for p in procs]
        finally:
            for p in procs:
                kill_group(p)
        outputs = [(tmp_path / f'{tag}_node{node}.txt').read_text()[-3000:] for node in (0, 1)]
        assert codes == [0, 0], outputs

    finish(agents('twonode_ref', False, 'ref'), 'ref')

    name, exp = 'twonode', workdir / 'experiments' / 'twonode'
    lock = workdir / 'experiments' / '.twonode.lock'
    procs = agents(name, False, 'killed')
    try:
        wait_for(lambda: lock.exists() and ', iter:' in log_text(workdir, name), 'training to start', 300, procs)
        rank0 = children(procs[0].pid)[0]  # node 0's worker is global rank 0, which holds the lock
        assert f'pid={rank0}\n' in lock.read_text()
        old = time.time() - 1000
        os.utime(lock, (old, old))
        wait_for(lambda: lock.stat().st_mtime > time.time() - 100, 'the lock heartbeat', 60, procs)
        wait_for(lambda: (exp / 'training_states' / '12.state').exists(), 'the state of iteration 12', 300, procs)
    finally:
        for p in procs:
            kill_group(p)
    assert not (exp / 'models' / 'net_g_latest.pth').exists(), 'the run ended before the kill'
    assert 'Results of' in log_text(workdir, name)  # validated at iteration 8 before the kill
    # requeued on another node: the dead run's lock (host and heartbeat) is from elsewhere and older than its lease
    lock.write_text(lock.read_text().replace(f'host={os.uname().nodename}', 'host=preempted-node'))
    os.utime(lock, (old, old))
    procs = agents(name, True, 'resumed')
    finish(procs, 'resumed')
    log = log_text(workdir, name)
    assert 'lock of pid' in log and 'on preempted-node' in log and 'longer than its lease (10 s)' in log
    assert 'Resuming training from epoch' in log and not lock.exists()
    for key in ('params', 'params_ema'):
        ref = torch.load(workdir / 'experiments' / 'twonode_ref' / 'models' / 'net_g_latest.pth', weights_only=True)
        resumed = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
        assert ref[key].keys() == resumed[key].keys()
        for tensor in ref[key]:
            assert torch.equal(ref[key][tensor], resumed[key][tensor]), f'{key}.{tensor} differs'
    final = read_table(exp / 'metrics.csv')  # the last row of each set: the validation at iteration 24
    assert final == read_table(workdir / 'experiments' / 'twonode_ref' / 'metrics.csv') and len(final) == 6
