"""End to end through BasicSR's own train/test pipelines (subprocesses, CPU, a tiny SymUNet on demo data):
train writes checkpoints, --auto_resume continues from the last state, test prints and writes the table."""
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


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    from make_demo_data import build_demo_data
    root = tmp_path_factory.mktemp('pipeline')
    build_demo_data(str(root / 'datasets' / 'demo'), seed=0)
    return root


def write_opt(path, opt):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)


def train_opt(total_iter):
    with open(REPO / 'options' / 'demo' / 'train_symunet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt['name'] = 'pipeline_test'
    opt['network_g'] = dict(TINY_NET)
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, persistent_workers=False)
    opt['datasets'] = {k: v for k, v in opt['datasets'].items() if k in ('train', 'val_noise25', 'val_rain')}
    opt['train']['total_iter'] = total_iter
    opt['train']['scheduler']['periods'] = [6]
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2)
    return opt


def test_train_resume_and_test(workdir):
    exp = workdir / 'experiments' / 'pipeline_test'
    write_opt(workdir / 'train.yml', train_opt(4))
    run(['-m', 'allinone_basicsr.train', '-opt', 'train.yml'], workdir)
    for name in ('net_g_2.pth', 'net_g_4.pth', 'net_g_latest.pth'):
        assert (exp / 'models' / name).is_file()
    assert sorted(p.name for p in (exp / 'training_states').iterdir()) == ['2.state', '4.state']
    assert not list(exp.rglob('*.tmp*')), 'atomic writes left temporary files'
    assert (exp / 'metrics.md').read_text().count('\n|') >= 4  # header, 2 sets, average

    # resume: the same run continued to 6 iterations picks up iteration 4's optimizer and scheduler
    write_opt(workdir / 'train.yml', train_opt(6))
    proc = run(['-m', 'allinone_basicsr.train', '-opt', 'train.yml', '--auto_resume'], workdir)
    log = proc.stdout + proc.stderr + ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert 'Resuming training from epoch' in log and 'iter: 4.' in log
    state = torch.load(exp / 'training_states' / '6.state', map_location='cpu')
    steps = {int(s['step']) for s in state['optimizers'][0]['state'].values()}
    assert steps == {6}, f'optimizer restarted instead of resuming: steps {steps}'
    assert state['schedulers'][0]['last_epoch'] == 5  # stepped at iterations 2..6

    # test pipeline, run as a file like Real-ESRGAN's entry point
    test = {
        'name': 'pipeline_test_eval', 'model_type': 'AllInOneModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {k.replace('val', 'test'): v for k, v in train_opt(6)['datasets'].items() if k != 'train'},
        'network_g': dict(TINY_NET),
        'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True},
        'val': {'save_img': True, 'metrics': {'psnr': {'type': 'calculate_psnr_aio'},
                                              'ssim': {'type': 'calculate_ssim_aio'}}},
    }
    write_opt(workdir / 'test.yml', test)
    proc = run([str(REPO / 'allinone_basicsr' / 'test.py'), '-opt', 'test.yml'], workdir)
    results = workdir / 'results' / 'pipeline_test_eval'
    assert '| demo_sigma25 | noise |' in proc.stdout and '| Average |' in proc.stdout
    with open(results / 'metrics.csv') as f:
        rows = {r['test_set']: r for r in csv.DictReader(f)}
    assert list(rows) == ['demo_sigma25', 'demo_rain', 'Average']
    assert len(list((results / 'visualization' / 'demo_rain').glob('*.png'))) == 3

    # the table's numbers are the metric of the saved model's output, recomputed here in-process
    import allinone_basicsr  # noqa: F401

    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, METRIC_REGISTRY
    net = ARCH_REGISTRY.get('SymUNet')(**{k: v for k, v in TINY_NET.items() if k != 'type'}).eval()
    net.load_state_dict(torch.load(exp / 'models' / 'net_g_latest.pth')['params'])
    dataset_opt = dict(test['datasets']['test_noise25'], phase='test')
    dataset_opt['dataroot_gt'] = str(workdir / dataset_opt['dataroot_gt'])
    dataset = DATASET_REGISTRY.get(dataset_opt['type'])(dataset_opt)
    psnr = METRIC_REGISTRY.get('calculate_psnr_aio')
    values, inputs = [], []
    with torch.no_grad():
        for item in dataset:
            values.append(psnr(net(item['lq'][None]).clamp(0, 1), item['gt'][None]))
            inputs.append(psnr(item['lq'][None], item['gt'][None]))
    assert float(rows['demo_sigma25']['psnr']) == pytest.approx(sum(values) / len(values), abs=1e-4)
    assert float(rows['demo_sigma25']['input_psnr']) == pytest.approx(sum(inputs) / len(inputs), abs=1e-4)
    avg = (float(rows['demo_sigma25']['psnr']) + float(rows['demo_rain']['psnr'])) / 2
    assert float(rows['Average']['psnr']) == pytest.approx(avg, abs=1e-6)
