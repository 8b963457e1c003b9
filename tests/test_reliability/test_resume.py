"""Exact resume through the training pipeline (subprocesses, CPU): a run interrupted and resumed -- including from
an earlier state when the newest one is corrupt, and after SIGKILLs -- ends with bit-identical weights."""
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_util import run_python as run

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[2]
TINY_DAAIR = {'type': 'DaAIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_dec_blocks': [1, 1, 1],
              'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2], 'rank_ratio': 4, 'expert_kernel_size': 3,
              'controller_momentum': 0.9}
TOTAL = 20  # 280 demo samples / batch 20 = 14 iterations per epoch: the runs cross an epoch boundary


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    from make_demo_data import build_demo_data
    root = tmp_path_factory.mktemp('resume')
    build_demo_data(str(root / 'datasets' / 'demo'), seed=0)
    with open(REPO / 'options' / 'demo' / 'train_symunet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt['network_g'] = dict(TINY_DAAIR)
    opt['datasets'] = {'train': opt['datasets']['train']}
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=20, num_worker_per_gpu=2, dataset_enlarge_ratio=1,
                                    persistent_workers=False)
    opt.pop('val')
    opt['train'].update(total_iter=TOTAL, cls_opt={'type': 'TaskClassificationLoss', 'loss_weight': 0.1},
                        teacher_forcing_iter=3, ema_decay=0.9)
    opt['train']['scheduler']['periods'] = [TOTAL]
    opt['logger'].update(print_freq=4, save_checkpoint_freq=4)
    with open(root / 'train.yml', 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return root


def train(workdir, name, total, resume=False, extra=()):
    args = ['-m', 'allinone_basicsr.train', '-opt', 'train.yml', '--force_yml', f'name={name}',
            f'train:total_iter={total}', *extra]
    return run(args + (['--auto_resume'] if resume else []), workdir)


def weights(workdir, name):
    state = torch.load(workdir / 'experiments' / name / 'models' / 'net_g_latest.pth', weights_only=True)
    return state['params'], state['params_ema']


def assert_equal_weights(a, b):
    for part_a, part_b in zip(a, b):
        assert part_a.keys() == part_b.keys()
        for key in part_a:
            assert torch.equal(part_a[key], part_b[key]), f'{key} differs'  # tolerance 0: bit-exact on CPU


@pytest.fixture(scope='module')
def straight(workdir):
    train(workdir, 'straight', TOTAL)
    return weights(workdir, 'straight')


def test_interrupted_run_resumes_to_identical_weights(workdir, straight):
    train(workdir, 'halves', TOTAL // 2)
    proc = train(workdir, 'halves', TOTAL, resume=True)
    log = ''.join(p.read_text() for p in (workdir / 'experiments' / 'halves').glob('train_*.log'))
    assert 'Resuming training from epoch: 0, iter: 8. The epoch continues at sample 160.' in log + proc.stderr
    assert any('controller' in k for k in straight[0])  # DaAIR's EMA controller is part of the comparison
    assert_equal_weights(weights(workdir, 'halves'), straight)


def test_bf16_run_resumes_to_identical_weights(workdir):
    """train.amp: the autocast forward resumes exactly too (float16's GradScaler state: tests/test_models/
    test_precision.py, in-process, as float16 convolutions on this CPU are about 7x slower than float32)."""
    bf16 = ['train:amp=bf16']
    train(workdir, 'bf16_straight', TOTAL, extra=bf16)
    train(workdir, 'bf16_halves', TOTAL // 2, extra=bf16)
    train(workdir, 'bf16_halves', TOTAL, resume=True, extra=bf16)
    log = next((workdir / 'experiments' / 'bf16_halves').glob('train_*.log')).read_text()
    assert 'amp: bf16' in log
    assert_equal_weights(weights(workdir, 'bf16_halves'), weights(workdir, 'bf16_straight'))


def test_corrupt_latest_state_falls_back_to_the_previous_one(workdir, straight):
    train(workdir, 'corrupt', 16)  # states at 4, 8, 12, 16 (the epoch boundary is at 14)
    latest = workdir / 'experiments' / 'corrupt' / 'training_states' / '16.state'
    latest.write_bytes(latest.read_bytes()[:100])  # a truncated file
    proc = train(workdir, 'corrupt', TOTAL, resume=True)
    assert 'skipping unreadable training state' in proc.stderr and '16.state' in proc.stderr
    log = ''.join(p.read_text() for p in (workdir / 'experiments' / 'corrupt').glob('train_*.log'))
    assert 'iter: 12.' in log
    assert 'WARNING: auto_resume: skipping unreadable training state' in log and '16.state' in log  # the run's log
    assert_equal_weights(weights(workdir, 'corrupt'), straight)


# DataParallel (num_gpu > 1 without a launcher): BasicSR's loader batch is batch_size_per_gpu × num_gpu. Emulated on
# the CPU by building the training loader with num_gpu=2 (the model stays on the CPU).
DATAPARALLEL_LOADER = ('import allinone_basicsr.utils.resume as resume, allinone_basicsr.train as train\n'
                       'from basicsr.data import build_dataloader\n'
                       'resume.build_dataloader = lambda *args, **kw: build_dataloader(*args, **dict(kw, num_gpu=2))\n'
                       'train.main()\n')


def test_dataparallel_batch_resumes_exactly(workdir, straight):
    """The resume offset uses the loader's real batch (10 per GPU × 2 = 20), not batch_size_per_gpu."""
    def dp_train(name, total, resume=False):
        return run(['-c', DATAPARALLEL_LOADER, '-opt', 'train.yml', '--force_yml', f'name={name}',
                    f'train:total_iter={total}', 'datasets:train:batch_size_per_gpu=10']
                   + (['--auto_resume'] if resume else []), workdir)

    dp_train('dp_halves', TOTAL // 2)
    proc = dp_train('dp_halves', TOTAL, resume=True)
    log = ''.join(p.read_text() for p in (workdir / 'experiments' / 'dp_halves').glob('train_*.log'))
    assert 'Resuming training from epoch: 0, iter: 8. The epoch continues at sample 160.' in log + proc.stderr
    assert_equal_weights(weights(workdir, 'dp_halves'), straight)  # the same batches as 20 per iteration on one


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches(workdir):
    proc = run([str(REPO / 'scripts' / 'kill_resume_check.py'), '-opt', 'train.yml', '--kills', '2', '--seed', '1',
                '--force_yml', 'name=killtest'], workdir, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'max |weight difference| = 0' in proc.stdout
    assert proc.stdout.count('killed ') == 2 and '2 of 2 kills landed' in proc.stdout  # exactly the kills asked


# A stand-in for a training run (argv: name, total_iter): resumes from its newest training state, one iteration per
# 0.2 s, a training state every 2 iterations; a negative total_iter: a resumed run fails (exit status 3).
FAKE_RUN = """
import os, sys, time
name, total = sys.argv[1], int(sys.argv[2])
folder = os.path.join('experiments', name, 'training_states')
os.makedirs(folder, exist_ok=True)
done = max([int(f[:-6]) for f in os.listdir(folder) if f.endswith('.state')], default=0)
if total < 0 and done:
    sys.exit(3)
for it in range(done + 1, abs(total) + 1):
    time.sleep(0.2)
    if it % 2 == 0:
        open(os.path.join(folder, f'{it}.state'), 'w').close()
"""


def test_kill_script_does_exactly_the_kills_asked_or_fails(tmp_path, monkeypatch, capsys):
    """Each kill lands after one more training state and before the run's end; a run that ends first (too few
    states for the kills asked) is a failure saying how many kills landed, not a pass."""
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location('kill_resume_check', REPO / 'scripts' / 'kill_resume_check.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.chdir(tmp_path)
    log = open(tmp_path / 'runs.log', 'w')
    total = {}
    monkeypatch.setattr(script, 'train_cmd', lambda opt, name, overrides, resume: [sys.executable, '-c', FAKE_RUN, name,
                                                                                   str(total[name])])
    total['long'] = 10  # states at 2, 4, ..., 10
    assert script.run_killed('x.yml', 'long', [], [0.05, 0.05], log) == 2
    out = capsys.readouterr().out
    assert out.count('killed ') == 2 and '2 of 2 kills landed' in out
    assert sorted(script._states('long')) == [2, 4, 6, 8, 10]
    total['short'] = 4  # states at 2 and 4, the end: the second kill cannot land
    with pytest.raises(SystemExit, match='short: only 1 of 3 kills landed: the run ended before kill 2'):
        script.run_killed('x.yml', 'short', [], [0.05, 0.05, 0.05], log)
    total['broken'] = -10  # the first resume fails
    with pytest.raises(SystemExit, match='broken: only 1 of 2 kills landed: training failed with exit status 3'):
        script.run_killed('x.yml', 'broken', [], [0.05, 0.05], log)
    log.close()
