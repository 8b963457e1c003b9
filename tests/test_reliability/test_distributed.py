"""Two CPU processes (torchrun, gloo chosen automatically without CUDA): distributed validation (images shared between
the ranks, scores gathered) equals a single-process test of the same weights. (test_full_recipes.py runs every full
recipe on two ranks.)"""
import csv
from pathlib import Path

import pytest
import yaml
from pipeline_util import run_python, run_torchrun

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
