"""options/test_<method>_5task.yml: each scores the method's 5-task model on the five 5-task test sets with the
method's own scoring protocol, builds its datasets from a prepared 5-task tree and its network from the registry."""
from pathlib import Path

import pytest
import yaml

from allinone_basicsr.data.mixed_degradation_dataset import DEFAULT_DEGRADATION_CLASSES

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY

OPTIONS = Path(__file__).resolve().parents[1] / 'options'
METHODS = ('symunet', 'se_symunet', 'promptir', 'daair', 'promptdsanet')
SETS = [('BSD68_sigma25', 'noise'), ('Rain100L', 'rain'), ('SOTS_outdoor', 'haze'), ('GoPro', 'blur'),
        ('LOL_v1', 'lowlight')]
PRETRAINED = {'clip_pretrained': 'pretrained/clip/ViT-L-14-quickgelu_openai.bin', 'prompt_net_pretrained': None}


def load(name):
    with open(OPTIONS / name) as f:
        return yaml.safe_load(f)


def by_name(opt):
    return {d['name']: d for key, d in opt['datasets'].items() if key.split('_')[0] in ('val', 'test')}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    import prepare_5task
    from fake_raw import make_raw_5task
    root = tmp_path_factory.mktemp('test5')
    make_raw_5task(str(root / 'raw'))
    prepare_5task.main(['--raw', str(root / 'raw'), '--out', str(root / 'datasets'), '--workers', '1'])
    return root


@pytest.mark.parametrize('method', METHODS)
def test_5task_test_file_follows_the_methods_protocol(method):
    opt = load(f'test_{method}_5task.yml')
    sets = by_name(opt)
    assert [(name, d['degradation']) for name, d in sets.items()] == SETS
    assert sets['BSD68_sigma25']['noise_sigma'] == 25 and all('noise_sigma' not in d for d in list(sets.values())[1:])
    three_task = load(f'test_{method}.yml')
    for key in ('clamp', 'input_metrics', 'metrics'):  # the method's scoring protocol
        assert opt['val'][key] == three_task['val'][key], key
    for name, d in by_name(three_task).items():
        if name in sets:
            assert sets[name].get('crop_to_multiple') == d.get('crop_to_multiple'), name
    train_file = OPTIONS / f'train_{method}_5task.yml'
    if train_file.is_file():
        train = load(train_file.name)
        for name in ('GoPro', 'LOL_v1'):
            val = by_name(train)[name]
            assert {k: sets[name].get(k) for k in val if k != 'name'} == {k: v for k, v in val.items() if k != 'name'}
        assert opt['network_g'] == train['network_g']
        assert opt['path']['pretrain_network_g'] == f"experiments/{train['name']}/models/net_g_latest.pth"
    else:  # PromptDSANet: no 5-task recipe ships; the 3-task network with 5 classes, the PromptIR convention
        network = dict(load('train_promptdsanet_3task.yml')['network_g'], num_classes=5, prompt_net_pretrained=None)
        assert opt['network_g'] == network
        assert opt['path']['pretrain_network_g'] == 'experiments/PromptDSANet_5task/models/net_g_latest.pth'
        assert all(d.get('crop_to_multiple') == 16 for d in sets.values())


@pytest.mark.filterwarnings('ignore:CLIP .* has random weights')
@pytest.mark.parametrize('method', METHODS)
def test_5task_test_file_builds_its_datasets_and_network(method, prepared, monkeypatch):
    opt = load(f'test_{method}_5task.yml')
    monkeypatch.chdir(prepared)  # the option files' paths are relative to the working directory
    for key, dataset_opt in opt['datasets'].items():
        dataset = DATASET_REGISTRY.get(dataset_opt['type'])(dict(dataset_opt, phase='test', scale=1))
        assert len(dataset) >= 1, key
        item = dataset[0]
        assert item['lq'].shape == item['gt'].shape and item['lq'].shape[0] == 3, key
        assert item['degradation'] == DEFAULT_DEGRADATION_CLASSES.index(dataset_opt['degradation']), key
        if dataset_opt.get('crop_to_multiple'):
            assert all(s % dataset_opt['crop_to_multiple'] == 0 for s in item['gt'].shape[1:]), key
    net_opt = dict(opt['network_g'])
    arch = net_opt.pop('type')
    for key, path in PRETRAINED.items():
        if key in net_opt:
            assert net_opt[key] == path, key  # the documented default path (test_options.py checks the same)
            net_opt[key] = None  # external weights are not in the tests: random init
    net = ARCH_REGISTRY.get(arch)(**net_opt)
    classes = net_opt.get('num_experts', net_opt.get('num_classes'))
    assert classes in (None, 5)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_sigma25_variant_trains_noise_at_25_only_and_tests_as_the_5task_file():
    """DaAIR's Table 2 follows IDR, whose 5-task protocol trains noise at σ=25 only: train_daair_5task_sigma25.yml
    is train_daair_5task.yml without the σ15/σ50 tasks (and its own schedule length), and its test file scores the
    same sets with the same protocol as test_daair_5task.yml."""
    full, sigma25 = load('train_daair_5task.yml'), load('train_daair_5task_sigma25.yml')
    tasks = sigma25['datasets']['train']['tasks']
    assert [t['name'] for t in tasks] == ['denoise_25', 'derain', 'dehaze', 'deblur', 'lowlight']
    assert [t for t in full['datasets']['train']['tasks'] if t['name'] not in ('denoise_15', 'denoise_50')] == tasks
    for key in ('network_g', 'val'):
        assert sigma25[key] == full[key], key
    assert {k: v for k, v in sigma25['datasets'].items() if k != 'train'} == \
        {k: v for k, v in full['datasets'].items() if k != 'train'}
    test_full, test25 = load('test_daair_5task.yml'), load('test_daair_5task_sigma25.yml')
    assert test25['datasets'] == test_full['datasets'] and test25['network_g'] == test_full['network_g']
    assert test25['val'] == test_full['val']
    assert test25['path']['pretrain_network_g'] == 'experiments/DaAIR_5task_sigma25/models/net_g_latest.pth'
    assert [d['noise_sigma'] for d in test25['datasets'].values() if d['degradation'] == 'noise'] == [25]
