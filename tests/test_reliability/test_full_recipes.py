"""The options/train_*.yml as users run them, on two CPU ranks (torchrun, gloo): the file's own network (full size),
model, losses, optimizer, scheduler and DDP settings, on a tiny prepared data tree in the layout the file reads.

Changed for the CPU: ``num_gpu: 0``; 32² patches and 2 images per rank (the tiny images); no loader workers;
pretrained weight files (CLIP, ResNet-50) replaced by random init; 3 iterations with a checkpoint and a validation at
iteration 2 and the final validation at 3. Then ``--auto_resume`` from iteration 2 runs iteration 3 again and must end
with the same weights and the same validation table.

Every file's train and val datasets are also built from the tiny tree and give a label of the training classes
(``test_every_train_file_reads_the_prepared_tree``); tests/test_recipe.py checks every file's schedule and data
against its protocol."""
import csv
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_util import run_torchrun

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[2]
TRAIN_FILES = sorted(p.name for p in (REPO / 'options').glob('train_*.yml'))
PRETRAINED = ('clip_pretrained', 'prompt_net_pretrained')


def _load(option_file):
    with open(REPO / 'options' / option_file) as f:
        return yaml.safe_load(f)


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
    import prepare_5task
    from fake_raw import make_raw_5task
    root = tmp_path_factory.mktemp('recipes')
    make_raw_5task(str(root / 'raw'), small=True)
    prepare_5task.main(['--raw', str(root / 'raw'), '--out', str(root / 'datasets'), '--workers', '2'])
    return root


def smoke_options(option_file, name):
    opt = _load(option_file)
    opt.update(name=name, num_gpu=0)
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, persistent_workers=False)
    for key in PRETRAINED:
        if opt['network_g'].get(key):
            opt['network_g'][key] = None
    opt['train']['total_iter'] = 3
    opt['val'].update(val_freq=2, pbar=False)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    return opt


def read_table(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize('option_file', TRAIN_FILES)
def test_every_train_file_reads_the_prepared_tree(tree, option_file, monkeypatch):
    """Each file's train and val datasets build from the tiny tree in the layout it names (paths, key lists, maps)
    and give a sample of its own classes."""
    from basicsr.data import build_dataset
    monkeypatch.chdir(tree)
    opt = smoke_options(option_file, 'x')
    for key, dataset_opt in opt['datasets'].items():
        dataset = build_dataset(dict(dataset_opt, phase=key.split('_')[0]))
        assert len(dataset) >= 1
        sample = dataset[0]
        assert sample['lq'].shape == sample['gt'].shape
        classes = dataset_opt.get('degradation_classes') or opt['datasets']['train'].get('degradation_classes')
        assert 0 <= sample['degradation'] < len(classes or range(5))


@pytest.mark.slow
@pytest.mark.parametrize('option_file', TRAIN_FILES)
def test_full_recipe_trains_validates_and_resumes_on_two_ranks(tree, option_file):
    name = f'smoke_{option_file[len("train_"):-len(".yml")]}'
    opt = smoke_options(option_file, name)
    with open(tree / f'{name}.yml', 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    args = ['-m', 'allinone_basicsr.train', '-opt', f'{name}.yml', '--launcher', 'pytorch']
    proc = run_torchrun(args, tree, timeout=900)
    assert 'Grad strides do not match' not in proc.stderr  # DDP: weight gradients have the weights' strides
    exp = tree / 'experiments' / name
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert 'world_size: 2' in log and 'Weights identical on all 2 ranks' in log
    assert log.count(f'Results of {name} at 2:') == 1 and log.count(f'Results of {name} at 3:') == 1
    sets = [v['name'] for k, v in opt['datasets'].items() if k.startswith('val')]
    table = read_table(exp / 'metrics.csv')
    assert [row['test_set'] for row in table] == sets + ['Average']
    assert all(int(row['images']) >= 1 for row in table)
    assert (exp / 'models' / 'net_g_2.pth').is_file() and (exp / 'training_states' / '2.state').is_file()
    first = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    shutil.copy(exp / 'metrics.csv', tree / f'{name}_first.csv')

    run_torchrun(args + ['--auto_resume'], tree, timeout=900)
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    # from iteration 2 (in epoch 0, or 2 for single-task files whose tiny set holds one batch per epoch)
    assert re.search(r'Resuming training from epoch: \d+, iter: 2\.', log)
    resumed = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)
    for key, params in first.items():  # params (and params_ema): iteration 3 again gives the same weights
        assert params.keys() == resumed[key].keys()
        for k in params:
            assert torch.equal(params[k], resumed[key][k]), f'{key}.{k} differs after resuming'
    assert read_table(exp / 'metrics.csv') == read_table(tree / f'{name}_first.csv')
