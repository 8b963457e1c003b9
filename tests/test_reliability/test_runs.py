"""Nothing is lost between runs: one run per experiment name (a lock; a killed run's stale lock is taken over),
temporary files of killed writes are removed, and a resume with a raised total_iter / new scheduler periods
continues with the new schedule, while a resume with another batch is refused unless forced."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_util import run_python as run

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[2]
TINY_NET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1], 'restormer_heads': [1, 2, 4], 'restormer_middle_heads': 8}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    from make_demo_data import build_demo_data
    root = tmp_path_factory.mktemp('runs')
    build_demo_data(str(root / 'datasets' / 'demo'), seed=0)
    return root


def options(name, total_iter, periods=None, batch=2):
    with open(REPO / 'options' / 'demo' / 'train_symunet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt.update(name=name, network_g=dict(TINY_NET))
    opt['datasets'] = {'train': opt['datasets']['train']}
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=batch, num_worker_per_gpu=0,
                                    persistent_workers=False)
    opt.pop('val')
    opt['train'].update(total_iter=total_iter)
    opt['train']['scheduler'].update(periods=periods or [total_iter], restart_weights=[1] * len(periods or [1]))
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    return opt


def write(workdir, name, opt):
    with open(workdir / f'{name}.yml', 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return f'{name}.yml'


def log_of(workdir, name):
    return ''.join(p.read_text() for p in (workdir / 'experiments' / name).glob('train_*.log'))


def test_a_second_run_with_the_same_name_stops_and_the_first_is_untouched(workdir):
    opt = options('twice', 100000)
    opt['logger']['save_checkpoint_freq'] = 100000
    opt_file = write(workdir, 'twice', opt)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    first = subprocess.Popen([sys.executable, '-m', 'allinone_basicsr.train', '-opt', opt_file], cwd=workdir, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = workdir / 'experiments' / '.twice.lock'
        deadline = time.time() + 120
        while 'Start training' not in log_of(workdir, 'twice'):
            assert time.time() < deadline and first.poll() is None, 'the first run did not start training'
            time.sleep(0.2)
        assert f'pid={first.pid}' in lock.read_text()
        second = run(['-m', 'allinone_basicsr.train', '-opt', opt_file], workdir, check=False, timeout=300)
        assert second.returncode != 0
        assert f"experiment 'twice' is in use by a running process (pid {first.pid}" in second.stderr
        assert first.poll() is None  # the first run goes on, in its own folder: nothing renamed, nothing written
        assert not list((workdir / 'experiments').glob('twice_archived_*'))
        assert len(list((workdir / 'experiments' / 'twice').glob('train_*.log'))) == 1
    finally:
        first.kill()
        first.wait(timeout=60)


def test_stale_lock_and_killed_writes_are_cleaned_up(workdir):
    opt_file = write(workdir, 'stale', options('stale', 4))
    run(['-m', 'allinone_basicsr.train', '-opt', opt_file], workdir)
    exp = workdir / 'experiments' / 'stale'
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True,
                          timeout=60).stdout.strip()
    (workdir / 'experiments' / '.stale.lock').write_text(f'pid={dead}\nhost={os.uname().nodename}\nstart=1\n')
    leftovers = [exp / 'models' / f'net_g_6.pth.tmp{dead}', exp / 'training_states' / f'6.state.tmp{dead}']
    for path in leftovers:
        path.write_bytes(b'half a file')
    write(workdir, 'stale', options('stale', 6, periods=[6]))
    proc = run(['-m', 'allinone_basicsr.train', '-opt', opt_file, '--auto_resume'], workdir)
    assert f'stale lock of pid {dead}' in proc.stderr
    assert not any(path.exists() for path in leftovers)
    assert 'the temporary file of a write a killed run never finished' in log_of(workdir, 'stale')


def test_resume_with_a_longer_schedule_continues_with_it(workdir):
    """4 iterations of a 4-iteration cosine, then --auto_resume with total_iter 8 and periods [8]: training reaches 8
    and the learning rate follows the new cosine from step 4 (BasicSR restored the old periods and failed)."""
    from allinone_basicsr.tools.recipe import LearningRateCurve
    opt = options('longer', 4)
    run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'longer', opt)], workdir)
    opt = options('longer', 8, periods=[8])
    proc = run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'longer', opt), '--auto_resume'], workdir)
    log = log_of(workdir, 'longer') + proc.stderr
    assert 'Resuming with a changed schedule (train.total_iter 4 -> 8; train.scheduler.periods [4] -> [8])' in log
    state = torch.load(workdir / 'experiments' / 'longer' / 'training_states' / '8.state', weights_only=True)
    assert state['schedulers'][0]['last_epoch'] == 7 and list(state['schedulers'][0]['periods']) == [8]
    lr = state['optimizers'][0]['param_groups'][0]['lr']  # the learning rate iteration 8 trained with
    assert lr == pytest.approx(LearningRateCurve(opt['train']).at(8), rel=1e-9)


def test_resume_with_another_batch_is_refused_unless_forced(workdir):
    run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'batch', options('batch', 4))], workdir)
    opt_file = write(workdir, 'batch', options('batch', 6, periods=[6], batch=3))
    proc = run(['-m', 'allinone_basicsr.train', '-opt', opt_file, '--auto_resume'], workdir, check=False)
    assert proc.returncode != 0 and 'another batch or data than it was saved with (batch_size 2 -> 3)' in proc.stderr
    proc = run(['-m', 'allinone_basicsr.train', '-opt', opt_file, '--auto_resume', '--force_yml',
                'path:force_resume=true'], workdir)
    assert 'resuming anyway (path.force_resume)' in log_of(workdir, 'batch') + proc.stderr
