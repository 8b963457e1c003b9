"""Every shipped option file parses, names registered types, and builds its network from BasicSR's registry.

External weight files (CLIP) are not present in tests; their option is checked for its documented default path and
replaced by None (random init) to build the network."""
from pathlib import Path

import pytest
import yaml

import allinone_basicsr  # noqa: F401  (registers the plugin)

from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, MODEL_REGISTRY

OPTIONS = Path(__file__).resolve().parents[1] / 'options'
FILES = sorted(str(p.relative_to(OPTIONS)) for p in OPTIONS.rglob('*.yml'))
# the official configs' trainable parameter counts (shared/reference/*_full_keys.json)
OFFICIAL_COUNTS = {'SymUNet': 22_288_827, 'SESymUNet': 67_432_643, 'PromptIR': 35_592_263}
PAPER_RANGES = {'DaAIR': (5.5e6, 6.5e6)}  # no official code: the paper's size, 6M (± 0.5M, spec)
# no official code or size: the spec's prototype count (ResNet-50 included) by number of degradation classes (each
# class adds a row of 2,048 weights + 1 bias to the prompt net's classifier)
SPEC_COUNTS = {'PromptDSANet': {3: 70_695_144, 5: 70_699_242}}


def test_every_method_has_train_test_and_demo_files():
    for method, second in (('symunet', '5task'), ('promptir', '5task'), ('se_symunet', '5task'), ('daair', '5task'),
                           ('promptdsanet', '3task')):  # PromptDSANet: its paper's protocol and the common 3-task one
        for name in (f'train_{method}.yml', f'train_{method}_{second}.yml', f'test_{method}.yml',
                     f'test_{method}_5task.yml', f'demo/train_{method}_demo.yml', f'demo/test_{method}_demo.yml'):
            assert name in FILES, name


@pytest.mark.filterwarnings('ignore:CLIP .* has random weights')
@pytest.mark.parametrize('name', FILES)
def test_option_file_builds(name):
    opt = yaml.safe_load((OPTIONS / name).read_text())
    assert opt['model_type'] in MODEL_REGISTRY
    for key, dataset in opt['datasets'].items():
        assert dataset['type'] in DATASET_REGISTRY, (key, dataset['type'])
    for key, loss in opt.get('train', {}).items():
        if key.endswith('_opt'):
            assert loss['type'] in LOSS_REGISTRY, (key, loss['type'])
    net_opt = dict(opt['network_g'])
    arch = net_opt.pop('type')
    if net_opt.get('clip_pretrained'):
        assert net_opt['clip_pretrained'] == 'pretrained/clip/ViT-L-14-quickgelu_openai.bin'
        net_opt['clip_pretrained'] = None
    if net_opt.get('prompt_net_pretrained'):
        assert net_opt['prompt_net_pretrained'] == 'pretrained/resnet50-0676ba61.pth'
        net_opt['prompt_net_pretrained'] = None
    net = ARCH_REGISTRY.get(arch)(**net_opt)
    if not name.startswith('demo/'):
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        if arch in SPEC_COUNTS:
            assert trainable == SPEC_COUNTS[arch][net_opt['num_classes']]
        elif arch in PAPER_RANGES:
            assert PAPER_RANGES[arch][0] <= trainable <= PAPER_RANGES[arch][1]
        else:
            assert trainable == OFFICIAL_COUNTS[arch]


def _train_file_of(test_name):
    """The train file whose checkpoint a test file scores (its ``pretrain_network_g`` is experiments/<name>/...)."""
    opt = yaml.safe_load((OPTIONS / test_name).read_text())
    path = (opt.get('path') or {}).get('pretrain_network_g') or ''
    for train in OPTIONS.glob('train_*.yml'):
        if path.startswith(f"experiments/{yaml.safe_load(train.read_text())['name']}/"):
            return train.name
    return None


# the test files added for the papers' table rows (tables/*.yml), next to the files they score
TABLE_ROW_TESTS = sorted(p.name for p in OPTIONS.glob('test_*.yml')
                         if any(tag in p.name for tag in ('_ablation_', '_denoise', '_derain', '_dehaze', '_sigma25',
                                                          '_promptdsanet_protocol', 'promptdsanet_paper')))


def test_table_row_test_files_are_the_expected_ones():
    assert TABLE_ROW_TESTS == sorted(
        [f'test_daair_ablation_{row}.yml' for row in ('a', 'a_alt', 'b', 'baseline', 'c', 'd')]
        + [f'test_daair_{task}.yml' for task in ('dehaze', 'denoise', 'derain')]
        + ['test_daair_5task_sigma25.yml', 'test_promptir_promptdsanet_protocol.yml', 'test_promptdsanet_paper.yml'])


@pytest.mark.parametrize('name', TABLE_ROW_TESTS)
def test_table_row_test_file_loads_its_train_files_checkpoint(name):
    """The network a table row's test file builds has the state-dict keys and shapes of the network its train file
    trains (so its checkpoint loads strictly), and its metrics fit the network (no routing accuracy without
    routers)."""
    train_name = _train_file_of(name)
    assert train_name, f'{name}: path.pretrain_network_g names no train file'
    nets = []
    for file in (name, train_name):
        net_opt = dict(yaml.safe_load((OPTIONS / file).read_text())['network_g'])
        for key in ('clip_pretrained', 'prompt_net_pretrained'):  # external weight files: not in the tests
            if net_opt.get(key):
                net_opt[key] = None
        nets.append(ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt))
    test_state, train_state = (net.state_dict() for net in nets)
    assert {k: v.shape for k, v in test_state.items()} == {k: v.shape for k, v in train_state.items()}
    metrics = yaml.safe_load((OPTIONS / name).read_text())['val']['metrics']
    routing = any(m['type'] == 'calculate_routing_accuracy' for m in metrics.values())
    has_logits = getattr(nets[0], 'has_task_logits', False) and getattr(nets[0], 'num_experts', 2) > 1
    assert routing == bool(has_logits), name
