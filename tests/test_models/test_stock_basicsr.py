"""Stock BasicSR stays first-class under the plugin: a stock option file (SRModel, PairedImageDataset on LMDB,
stock calculate_psnr / calculate_ssim on the Y channel) with one of our archs trains, validates and resumes
bit-exactly through ``python -m allinone_basicsr.train``, and trains and tests through BasicSR's own
``train_pipeline`` / ``test_pipeline`` with the plugin imported -- as does our demo config (AllInOneModel)."""
import csv
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_util import run_python as run

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[2]
TINY_NET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1], 'restormer_heads': [1, 2, 4], 'restormer_middle_heads': 8}
STOCK_TRAIN = "import os, allinone_basicsr; from basicsr.train import train_pipeline; train_pipeline(os.getcwd())"
STOCK_TEST = "import os, allinone_basicsr; from basicsr.test import test_pipeline; test_pipeline(os.getcwd())"


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    from make_demo_data import build_demo_data
    root = tmp_path_factory.mktemp('stock')
    build_demo_data(str(root / 'datasets' / 'demo'), seed=0)
    return root


def paired(phase, split):
    lmdb = f'datasets/demo/{split}/rain_{{}}.lmdb'
    opt = {'name': f'rain_{split}', 'type': 'PairedImageDataset', 'dataroot_gt': lmdb.format('gt'),
           'dataroot_lq': lmdb.format('lq'), 'io_backend': {'type': 'lmdb'}, 'filename_tmpl': '{}'}
    if phase == 'train':
        opt.update(gt_size=32, use_hflip=True, use_rot=True, num_worker_per_gpu=0, batch_size_per_gpu=4,
                   dataset_enlarge_ratio=1, prefetch_mode=None)
    return opt


def stock_options(name, total_iter):
    """A BasicSR option file as a BasicSR user writes one: only our arch is ours."""
    return {
        'name': name, 'model_type': 'SRModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 3,
        'datasets': {'train': paired('train', 'train'), 'val': paired('val', 'test')},
        'network_g': dict(TINY_NET),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [4], 'gamma': 0.5},
                  'total_iter': total_iter, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}},
        'val': {'val_freq': 4, 'save_img': False,
                'metrics': {'psnr_y': {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': True},
                            'ssim_y': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': True}}},
        'logger': {'print_freq': 2, 'save_checkpoint_freq': 4, 'use_tb_logger': False},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }


def write(workdir, filename, opt):
    with open(workdir / filename, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)


def weights(workdir, name):
    return torch.load(workdir / 'experiments' / name / 'models' / 'net_g_latest.pth', weights_only=True)['params']


def test_stock_option_file_trains_validates_and_resumes_exactly(workdir):
    write(workdir, 'stock_straight.yml', stock_options('stock_straight', 8))
    proc = run(['-m', 'allinone_basicsr.train', '-opt', 'stock_straight.yml'], workdir)
    log = proc.stderr + ''.join(p.read_text() for p in (workdir / 'experiments/stock_straight').glob('train_*.log'))
    assert '# psnr_y:' in log and '# ssim_y:' in log  # SRModel's validation with the stock Y-channel metrics

    write(workdir, 'stock_halves.yml', stock_options('stock_halves', 4))
    run(['-m', 'allinone_basicsr.train', '-opt', 'stock_halves.yml'], workdir)
    write(workdir, 'stock_halves.yml', stock_options('stock_halves', 8))
    run(['-m', 'allinone_basicsr.train', '-opt', 'stock_halves.yml', '--auto_resume'], workdir)
    straight, halves = weights(workdir, 'stock_straight'), weights(workdir, 'stock_halves')
    assert straight.keys() == halves.keys()
    for key in straight:
        assert torch.equal(straight[key], halves[key]), key  # bit-exact: the same batches and crops after resuming


@pytest.mark.parametrize('kind', ['stock', 'demo'])
def test_basicsr_own_pipelines_with_the_plugin_imported(workdir, kind):
    """BasicSR's train_pipeline (train, then --auto_resume) and test_pipeline, the plugin imported by a user's script:
    the stock file above, and our demo config (AllInOneModel, MixedDegradationDataset, our metrics)."""
    name = f'{kind}_through_basicsr'
    if kind == 'stock':
        opt = stock_options(name, 4)
    else:
        with open(REPO / 'options' / 'demo' / 'train_symunet_demo.yml') as f:
            opt = yaml.safe_load(f)
        opt.update(name=name, network_g=dict(TINY_NET))
        opt['datasets'] = {k: v for k, v in opt['datasets'].items() if k in ('train', 'val_rain')}
        opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0,
                                        persistent_workers=False)
        opt['train'].update(total_iter=4)
        opt['train']['scheduler']['periods'] = [6]
        opt['val']['val_freq'] = 4
        opt['logger'].update(print_freq=2, save_checkpoint_freq=2, use_tb_logger=False)
    write(workdir, f'{name}.yml', opt)
    run(['-c', STOCK_TRAIN, '-opt', f'{name}.yml'], workdir)
    opt['train']['total_iter'] = 6
    write(workdir, f'{name}.yml', opt)
    proc = run(['-c', STOCK_TRAIN, '-opt', f'{name}.yml', '--auto_resume'], workdir)
    exp = workdir / 'experiments' / name
    log = proc.stderr + ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert 'Resuming training from epoch' in log and 'iter: 4' in log
    assert (exp / 'models' / 'net_g_latest.pth').is_file()

    test = {'name': f'{name}_test', 'model_type': opt['model_type'], 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
            'datasets': {'test_1': {k: v for k, v in opt['datasets'][next(k for k in opt['datasets'] if k != 'train')]
                                    .items() if k != 'phase'}},
            'network_g': dict(TINY_NET), 'val': dict(opt['val'], save_img=False),
            'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True}}
    write(workdir, f'{name}_test.yml', test)
    proc = run(['-c', STOCK_TEST, '-opt', f'{name}_test.yml'], workdir)
    logs = ''.join(p.read_text() for p in (workdir / 'results' / f'{name}_test').glob('test_*.log'))
    metric = 'psnr_y' if kind == 'stock' else 'psnr'
    assert f'# {metric}:' in logs


def test_allinone_test_uses_the_parsed_options(workdir):
    """--force_yml name=...: the table printed and the options written are this run's (not the file's name)."""
    with open(REPO / 'options' / 'demo' / 'test_symunet_demo.yml') as f:
        test = yaml.safe_load(f)
    test.update(name='from_the_file', network_g=dict(TINY_NET))
    test['datasets'] = {'test_1_rain': test['datasets']['test_4_rain']}
    test['path']['pretrain_network_g'] = None  # random init: the table's numbers do not matter here
    test['val']['save_img'] = False
    write(workdir, 'forced.yml', test)
    run(['-m', 'allinone_basicsr.test', '-opt', 'forced.yml', '--force_yml', 'name=first_run'], workdir)
    proc = run(['-m', 'allinone_basicsr.test', '-opt', 'forced.yml', '--force_yml', 'name=second_run',
                'val:metrics:psnr:crop_border=2'], workdir)
    assert '# second_run' in proc.stdout and '# first_run' not in proc.stdout
    folder = workdir / 'results' / 'second_run'
    with open(folder / 'options.yml') as f:
        options = yaml.safe_load(f)
    assert options['name'] == 'second_run' and options['val']['metrics']['psnr']['crop_border'] == 2
    assert not (workdir / 'results' / 'from_the_file').exists()
    with open(folder / 'metrics.csv') as f:
        assert [r['test_set'] for r in csv.DictReader(f)] == ['demo_rain', 'Average']
