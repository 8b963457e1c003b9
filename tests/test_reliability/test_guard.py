"""The loss guard keeps bad weights out of checkpoints, run as a user would: a schedule whose learning rate jumps to
~1e10 wrecks the weights in one finite step and NaN losses follow; no checkpoint or training state holds those
weights, so ``--auto_resume`` goes back to the last healthy one. Normal training (warm-up, a restart, batches of 2)
is never flagged."""
import pytest
import test_runs
import torch
from pipeline_util import run_python as run
from test_runs import log_of, options, write

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)
workdir = test_runs.workdir  # the tiny demo data (a module fixture: built once for this file)


def _saved(workdir, name):
    exp = workdir / 'experiments' / name
    return (sorted(p.name for p in (exp / 'models').glob('*.pth')),
            sorted(p.name for p in (exp / 'training_states').glob('*.state')))


def test_no_checkpoint_from_a_nonfinite_streak_and_auto_resume_takes_the_healthy_one(workdir):
    opt = options('blowup', 12)
    # iterations 1-3 at lr 2e-3; from iteration 4 on, 2e10: that step's loss is finite, the weights it leaves are not
    opt['train']['scheduler'] = {'type': 'MultiStepRestartLR', 'milestones': [3], 'gamma': 1e13}
    opt['train']['max_nonfinite_steps'] = 4
    opt_file = write(workdir, 'blowup', opt)
    proc = run(['-m', 'allinone_basicsr.train', '-opt', opt_file], workdir, check=False, timeout=300)
    assert proc.returncode != 0 and '4 consecutive non-finite losses' in proc.stderr, proc.stderr[-3000:]
    assert _saved(workdir, 'blowup') == (['net_g_2.pth'], ['2.state'])  # before: also 4 and 6 (wrecked)
    log = log_of(workdir, 'blowup')
    assert 'Not writing the checkpoint of iteration 4: their loss on the last training batch' in log
    assert 'Not writing the checkpoint of iteration 6: these weights gave a non-finite' in log
    weights = torch.load(workdir / 'experiments' / 'blowup' / 'models' / 'net_g_2.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights['params'].values())
    proc = run(['-m', 'allinone_basicsr.train', '-opt', opt_file, '--auto_resume'], workdir, check=False,
               timeout=300)
    # before: resumed from the wrecked 6 (2 skipped steps in a row saved with it) and stopped 2 steps later
    assert 'Resuming training from epoch: 0, iter: 2.' in log_of(workdir, 'blowup')
    assert 'last at iteration 8: stopping' in proc.stderr, proc.stderr[-3000:]
    assert _saved(workdir, 'blowup') == (['net_g_2.pth'], ['2.state'])


def test_normal_training_is_not_flagged(workdir):
    opt = options('healthy', 30, periods=[15, 15])
    opt['train'].update(warmup_iter=5)
    opt['logger']['save_checkpoint_freq'] = 10
    run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'healthy', opt)], workdir, timeout=300)
    log = log_of(workdir, 'healthy')
    assert 'step skipped' not in log and 'Not writing' not in log
    assert _saved(workdir, 'healthy') == (['net_g_10.pth', 'net_g_20.pth', 'net_g_30.pth', 'net_g_latest.pth'],
                                          ['10.state', '20.state', '30.state'])
    state = torch.load(workdir / 'experiments' / 'healthy' / 'training_states' / '30.state', weights_only=True)
    assert state['loss_guard']['loss_count'] == 30  # every step was accepted
