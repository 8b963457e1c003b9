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


# ------------------------------------------------------------------ exact resume or a refusal
def weights_of(workdir, name):
    return torch.load(workdir / 'experiments' / name / 'models' / 'net_g_latest.pth', weights_only=True)['params']


def test_null_seed_is_kept_by_the_training_state(workdir):
    """manual_seed: null draws a seed at every start; the resumed run takes the one its state keeps, so 3 + 3
    iterations end with the weights of 6 straight ones with that seed (each start drew its own before: other crops
    and noise)."""
    import re

    def seeded(name, total, seed):
        opt = options(name, total, periods=[6])
        opt['manual_seed'] = seed
        return write(workdir, name, opt)

    run(['-m', 'allinone_basicsr.train', '-opt', seeded('null_halves', 3, None)], workdir)
    seed = int(re.search(r'manual_seed: (\d+)', log_of(workdir, 'null_halves')).group(1))  # drawn, as logged
    run(['-m', 'allinone_basicsr.train', '-opt', seeded('null_straight', 6, seed)], workdir)
    run(['-m', 'allinone_basicsr.train', '-opt', seeded('null_halves', 6, None), '--auto_resume'], workdir)
    straight, halves = weights_of(workdir, 'null_straight'), weights_of(workdir, 'null_halves')
    assert straight.keys() == halves.keys()
    assert all(torch.equal(straight[k], halves[k]) for k in straight)  # bit-exact on CPU
    log = log_of(workdir, 'null_halves')
    assert log.count(f'manual_seed: {seed}\n') == 2  # both starts ran with the seed the first drew
    assert re.search(rf'resuming with the seed {seed} that the run drew at its start \(this start drew \d+\)', log) \
        or 'manual_seed: null: resuming' not in log  # logged, unless this start drew the same seed


def test_resume_with_other_data_is_refused_unless_forced_and_then_logged(workdir):
    """What a sample is may not change under a saved position: a task's LMDB swapped for another of the same size,
    noise_sigma 25 -> 70, gt_size 32 -> 48 are refused, naming the key; forced, every change is logged."""
    import shutil
    data = workdir / 'datasets' / 'swap'
    shutil.copytree(workdir / 'datasets' / 'demo' / 'train', data)

    def opt_file(**changes):
        opt = options('data', 4)
        train_set = opt['datasets']['train']
        for task in train_set['tasks']:
            for key in ('dataroot_lq', 'dataroot_gt'):
                if key in task:
                    task[key] = task[key].replace('datasets/demo/train', 'datasets/swap')
        train_set['gt_size'] = changes.get('gt_size', 32)
        train_set['tasks'][1]['noise_sigma'] = changes.get('sigma', 25)
        return write(workdir, 'data', opt)

    def resume(*extra, **changes):
        return run(['-m', 'allinone_basicsr.train', '-opt', opt_file(**changes), '--auto_resume', *extra], workdir,
                   check=False)

    run(['-m', 'allinone_basicsr.train', '-opt', opt_file(), '--force_yml', 'train:total_iter=2'], workdir)
    refused = 'with another batch or data than it was saved with'
    proc = resume(sigma=70)
    assert proc.returncode != 0 and refused in proc.stderr
    assert 'datasets.train.tasks[1].noise_sigma 25 -> 70' in proc.stderr
    proc = resume(gt_size=48)
    assert proc.returncode != 0 and 'datasets.train.gt_size 32 -> 48' in proc.stderr
    (data / 'rain_lq.lmdb').rename(data / 'rain_tmp.lmdb')  # the rain LQ and GT LMDBs swapped: same keys, same size
    (data / 'rain_gt.lmdb').rename(data / 'rain_lq.lmdb')
    (data / 'rain_tmp.lmdb').rename(data / 'rain_gt.lmdb')
    proc = resume()
    assert proc.returncode != 0 and refused in proc.stderr
    assert 'datasets.train.tasks[3].dataroot_lq (content) LMDB of' in proc.stderr
    assert 'datasets.train.tasks[3].dataroot_gt (content) LMDB of' in proc.stderr
    assert not (workdir / 'experiments' / 'data' / 'training_states' / '4.state').exists()  # nothing trained
    proc = resume('--force_yml', 'path:force_resume=true', sigma=70, gt_size=48)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = log_of(workdir, 'data')
    for change in ('datasets.train.gt_size 32 -> 48', 'datasets.train.tasks[1].noise_sigma 25 -> 70',
                   'datasets.train.tasks[3].dataroot_lq (content) LMDB of'):
        assert f'path.force_resume: resuming with the changed {change}' in log


def test_optimizer_change_on_resume_takes_effect_and_is_logged(workdir):
    """optim_g.lr 2e-3 -> 1e-3 and weight_decay on resume: the resumed iterations train with the new base learning
    rate on the same cosine (logged lr = the new schedule's), the change is logged; another optimizer type is
    refused."""
    from allinone_basicsr.tools.recipe import LearningRateCurve
    run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'lr', options('lr', 2, periods=[4]))], workdir)
    opt = options('lr', 4, periods=[4])
    opt['train']['optim_g'].update(type='Adam')
    proc = run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'lr', opt), '--auto_resume'], workdir,
               check=False)
    assert proc.returncode != 0 and 'train.optim_g.type: AdamW -> Adam' in proc.stderr
    opt['train']['optim_g'].update(type='AdamW', lr=1e-3, weight_decay=0.01)
    run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'lr', opt), '--auto_resume'], workdir)
    log = log_of(workdir, 'lr')
    assert 'Resuming with a changed schedule and optimizer (train.total_iter 2 -> 4; train.optim_g.weight_decay ' \
           '0.001 -> 0.01; train.optim_g.lr 0.002 -> 0.001)' in log
    curve = LearningRateCurve(opt['train'])
    for it in (3, 4):
        assert f'iter:{it:8,d}, lr:({curve.at(it):.3e},)]' in log
    group = torch.load(workdir / 'experiments' / 'lr' / 'training_states' / '4.state',
                       weights_only=True)['optimizers'][0]['param_groups'][0]
    assert group['initial_lr'] == 1e-3 and group['weight_decay'] == 0.01
    assert group['lr'] == pytest.approx(curve.at(4), rel=1e-9)


def test_total_iter_beyond_the_periods_is_refused_before_training(workdir):
    """BasicSR's CosineAnnealingRestartLR fails after its last period (TypeError: list indices must be integers),
    with no net_g_latest: refused before the first step, fresh and on a resume that raises total_iter only."""
    proc = run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'beyond', options('beyond', 6, periods=[4]))],
               workdir, check=False)
    message = 'train.total_iter: 6 is beyond the end of train.scheduler.periods [4] (sum 4)'
    assert proc.returncode != 0 and message in proc.stderr
    assert not (workdir / 'experiments' / 'beyond' / 'models').exists()  # nothing ran
    run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'raised', options('raised', 4))], workdir)
    proc = run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'raised', options('raised', 8, periods=[4])),
                '--auto_resume'], workdir, check=False)
    assert proc.returncode != 0 and 'train.total_iter: 8 is beyond the end of train.scheduler.periods [4]' \
        in proc.stderr
    assert sorted(p.name for p in (workdir / 'experiments' / 'raised' / 'training_states').iterdir()) == \
        ['2.state', '4.state']
