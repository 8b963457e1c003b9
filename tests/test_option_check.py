"""Option types are checked before anything is built (issue 17, item 6): every case of the issue, first failing raw
(deep in torch or BasicSR, the option never named), then caught by ``check_options`` with the key path, the value,
its type and the expected type; numbers YAML reads as strings are converted in place and reported once."""
import copy
import logging
import warnings
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

import allinone_basicsr  # noqa: F401  (registers the archs)
from allinone_basicsr.archs.symunet_arch import SymUNet
from allinone_basicsr.utils.option_types import OptionConversionWarning, to_int, to_number
from allinone_basicsr.utils.options import check_options, check_training_state

from basicsr.utils.options import ordered_yaml

REPO = Path(__file__).resolve().parents[1]
OPTIONS = REPO / 'options'
FILES = sorted(str(p.relative_to(OPTIONS)) for p in OPTIONS.rglob('*.yml'))
TINY_NET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1], 'restormer_heads': [1, 2, 4], 'restormer_middle_heads': 8}


def load(name):
    """An option file as BasicSR reads it (its own YAML loader: OrderedDicts, YAML 1.1 number rules)."""
    return yaml.load((OPTIONS / name).read_text(), Loader=ordered_yaml()[0])


def demo_train():
    return load('demo/train_symunet_demo.yml')


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append((record.levelno, record.getMessage()))


@pytest.fixture
def logger():
    log = logging.getLogger('test_option_check')
    handler = Recorder()
    log.addHandler(handler)
    log.propagate = False
    yield log, handler.messages
    log.removeHandler(handler)


def set_key(opt, path, value):
    """``set_key(opt, 'datasets.train.tasks[0].repeat', 3)``."""
    *parents, last = path.replace('[', '.[').split('.')
    node = opt
    for part in parents:
        node = node[int(part[1:-1])] if part.startswith('[') else node[part]
    if last.startswith('['):
        node[int(last[1:-1])] = value
    else:
        node[last] = value


# ---------------------------------------------------------------------------------------------- the cases
def test_width_sixteen_failed_deep_in_torch_without_naming_the_option():
    """Without the check (the arch's undecorated __init__, as on HEAD): a TypeError from torch's Conv2d."""
    net = SymUNet.__new__(SymUNet)
    with pytest.raises(TypeError) as err:
        SymUNet.__init__.__wrapped__(net, width='sixteen')
    assert 'width' not in str(err.value) and 'network_g' not in str(err.value)


def test_width_sixteen_is_named():
    opt = demo_train()
    opt['network_g']['width'] = 'sixteen'
    message = r"network_g\.width: 'sixteen' \(str\) is not an int \(SymUNet's default: 48\)"
    with pytest.raises(TypeError, match=message):
        check_options(opt)
    with pytest.raises(TypeError, match=message):  # building the arch directly says the same
        SymUNet(width='sixteen')


def test_network_g_numeric_strings_converted_in_place(logger):
    log, messages = logger
    opt = demo_train()
    opt['network_g'].update(TINY_NET, width='8', enc_blk_nums=[1, 1.0, '1'], ffn_expansion_factor='2.5')
    check_options(opt, log)
    net = opt['network_g']
    assert net['width'] == 8 and type(net['width']) is int
    assert net['enc_blk_nums'] == [1, 1, 1] and all(type(n) is int for n in net['enc_blk_nums'])
    assert net['ffn_expansion_factor'] == 2.5
    assert [m for _, m in messages] == [
        "network_g.width: the string '8' is read as the number 8 (write 8 without quotes)",
        "network_g.enc_blk_nums[2]: the string '1' is read as the number 1 (write 1 without quotes)",
        "network_g.ffn_expansion_factor: the string '2.5' is read as the number 2.5 (write 2.5 without quotes)"]


def test_batch_size_string_failed_in_the_dataloader_without_naming_the_option():
    with pytest.raises(ValueError) as err:
        torch.utils.data.DataLoader(list(range(4)), batch_size='2')
    assert 'batch_size_per_gpu' not in str(err.value)


def test_batch_size_string_is_read_as_its_number(logger):
    log, messages = logger
    opt = demo_train()
    opt['datasets']['train']['batch_size_per_gpu'] = '2'
    check_options(opt, log)
    assert opt['datasets']['train']['batch_size_per_gpu'] == 2
    assert type(opt['datasets']['train']['batch_size_per_gpu']) is int
    assert messages == [(logging.WARNING, "datasets.train.batch_size_per_gpu: the string '2' is read as the number 2 "
                                          '(write 2 without quotes)')]


def test_total_iter_string_failed_at_the_first_log_line():
    """BasicSR's loop uses int(total_iter), its MessageLogger the raw value: the run dies at the first log line."""
    from basicsr.utils import MessageLogger
    opt = {'name': 'x', 'logger': {'print_freq': 1, 'use_tb_logger': False}, 'train': {'total_iter': '20'}}
    msg_logger = MessageLogger(opt, start_iter=1)  # built without complaint
    with pytest.raises(TypeError) as err:
        msg_logger({'epoch': 0, 'iter': 1, 'lrs': [1e-3], 'time': 0.1, 'data_time': 0.0})
    assert 'total_iter' not in str(err.value)


def test_total_iter_string_is_read_as_its_number():
    opt = demo_train()
    opt['train']['total_iter'] = '20'
    with pytest.warns(OptionConversionWarning, match=r"train\.total_iter: the string '20' is read as the number 20"):
        check_options(opt)
    assert opt['train']['total_iter'] == 20 and type(opt['train']['total_iter']) is int


def test_lr_without_float_tag_failed_in_the_optimizer():
    lr = yaml.load('lr: 2e-3', Loader=ordered_yaml()[0])['lr']
    assert lr == '2e-3'  # YAML 1.1: an exponent without a dot is not a float
    with pytest.raises(TypeError) as err:
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    assert 'optim_g' not in str(err.value)


def test_lr_without_float_tag_is_read_as_its_number_and_reported_once(logger):
    log, messages = logger
    text = (OPTIONS / 'demo' / 'train_symunet_demo.yml').read_text().replace('lr: !!float 2e-3', 'lr: 2e-3')
    opt = yaml.load(text, Loader=ordered_yaml()[0])
    assert opt['train']['optim_g']['lr'] == '2e-3'
    assert check_options(opt, log) == [m for _, m in messages]
    assert opt['train']['optim_g']['lr'] == 0.002
    assert messages == [(logging.WARNING, "train.optim_g.lr: the string '2e-3' is read as the number 0.002 "
                                          '(YAML reads 2e-3 (no dot) as a string; write 2.0e-3 or !!float 2e-3)')]
    assert check_options(opt, log) == [] and len(messages) == 1  # converted in place: nothing to report again


def test_each_conversion_is_reported_once_per_key():
    notes = []
    for _ in range(3):
        assert to_number('1e4', 'logger.save_checkpoint_freq', note=lambda *a: notes.append(a)) == 10000
    assert len(notes) == 3  # a helper reports every call; check_options reports a key once (it converts in place)
    opt = demo_train()
    opt['logger']['save_checkpoint_freq'] = '1e4'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        check_options(opt)
        check_options(opt)
    assert [str(w.message) for w in caught] == [
        "logger.save_checkpoint_freq: the string '1e4' is read as the number 10000 "
        '(YAML reads 1e4 (no dot) as a string; write 1.0e4 or !!float 1e4)']
    assert opt['logger']['save_checkpoint_freq'] == 10000 and type(opt['logger']['save_checkpoint_freq']) is int


def test_prefetch_mode_cuda_without_cuda_is_named():
    opt = demo_train()
    opt['datasets']['train'].update(prefetch_mode='cuda', pin_memory=True)
    opt['num_gpu'] = 1
    with mock.patch('torch.cuda.is_available', return_value=False):
        with pytest.raises(ValueError, match=r"datasets\.train\.prefetch_mode: 'cuda' needs CUDA, and "
                                             r'torch\.cuda\.is_available\(\) is False'):
            check_options(opt)


def test_prefetch_mode_cuda_needs_gpus_and_pinned_memory():
    opt = demo_train()
    opt['datasets']['train']['prefetch_mode'] = 'cuda'
    with mock.patch('torch.cuda.is_available', return_value=True):
        opt['num_gpu'] = 0
        with pytest.raises(ValueError, match=r"datasets\.train\.prefetch_mode: 'cuda' needs num_gpu > 0"):
            check_options(opt)
        opt['num_gpu'] = 1
        with pytest.raises(ValueError, match=r"'cuda' needs datasets\.train\.pin_memory: true"):
            check_options(opt)
        opt['datasets']['train']['pin_memory'] = True
        check_options(opt)
    for mode in ('gpu', 3):
        opt['datasets']['train']['prefetch_mode'] = mode
        with pytest.raises((TypeError, ValueError), match=r"datasets\.train\.prefetch_mode: .* is not one of "
                                                          r"\['cpu', 'cuda'\] or null"):
            check_options(opt)


def test_float_frequencies_become_ints_without_a_report():
    opt = demo_train()
    opt['val']['val_freq'] = 2e4  # what `!!float 2e4` gives
    opt['logger']['print_freq'] = 50.0
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert check_options(opt) == []
    assert opt['val']['val_freq'] == 20000 and type(opt['val']['val_freq']) is int
    assert opt['logger']['print_freq'] == 50 and type(opt['logger']['print_freq']) is int
    opt['val']['val_freq'] = 2.5e3 + 0.5
    with pytest.raises(TypeError, match=r'val\.val_freq: 2500\.5 \(float\) is not an int >= 1'):
        check_options(opt)


# ---------------------------------------------------------------------------------------------- shipped files
@pytest.mark.filterwarnings('error')
@pytest.mark.parametrize('name', FILES)
def test_every_shipped_option_file_passes_unchanged(name):
    opt = load(name)
    before = copy.deepcopy(opt)
    assert check_options(opt, is_train=Path(name).name.startswith('train')) == []
    assert opt == before  # equal values (2e4 == 20000)
    if 'logger' in opt:
        for key in ('print_freq', 'save_checkpoint_freq'):
            assert type(opt['logger'][key]) is int
        assert type(opt['val']['val_freq']) is int
        assert type(opt['train']['total_iter']) is int


def test_options_parsed_by_basicsr_pass(tmp_path, monkeypatch):
    """The options as parse_options returns them (dist, rank, paths, phases added)."""
    from basicsr.utils.options import parse_options
    monkeypatch.setattr('sys.argv', ['train', '-opt', str(OPTIONS / 'demo' / 'train_symunet_demo.yml'),
                                     '--force_yml', 'train:optim_g:lr=2e-3'])  # --force_yml: not a number either
    opt, _ = parse_options(str(tmp_path), is_train=True)
    assert opt['train']['optim_g']['lr'] == '2e-3'
    with pytest.warns(OptionConversionWarning):
        check_options(opt)
    assert opt['train']['optim_g']['lr'] == 0.002


def test_test_option_files_need_no_train_section():
    opt = load('demo/test_symunet_demo.yml')
    check_options(opt, is_train=False)
    with pytest.raises(ValueError, match=r'train: missing'):
        check_options(opt, is_train=True)
    del opt['val']
    with pytest.raises(ValueError, match=r'val: missing'):
        check_options(opt, is_train=False)


def test_unknown_keys_are_errors_with_the_closest_key_datasets_left_to_the_datasets():
    opt = demo_train()
    opt['datasets']['train']['my_key'] = [1]  # MixedDegradationDataset refuses it itself (test_bad_input.py)
    check_options(opt)
    opt['train']['ema_decy'] = 0.999
    opt['my_key'] = 1
    with pytest.raises(ValueError, match=r"my_key: unknown key \(valid keys at the top level: \[.*'train'.*\]\); "
                       r"train\.ema_decy: unknown key \(did you mean train\.ema_decay\?\)"):
        check_options(opt)


# ---------------------------------------------------------------------------------------------- messages
BAD = [  # key path, value, expected (in the message), error type
    ('name', 5, 'a string', TypeError),
    ('model_type', None, 'a string', TypeError),
    ('num_gpu', 'two', "an int >= 0 or 'auto'", TypeError),
    ('num_gpu', -1, "an int >= 0 or 'auto'", ValueError),
    ('manual_seed', 1.5, 'an int >= 0 and <= 4294967295 or null', TypeError),
    ('scale', '2x', 'an int >= 1', TypeError),
    ('datasets.train.batch_size_per_gpu', 0, 'an int >= 1', ValueError),
    ('datasets.train.batch_size_per_gpu', True, 'an int >= 1', TypeError),
    ('datasets.train.num_worker_per_gpu', -1, 'an int >= 0', ValueError),
    ('datasets.train.dataset_enlarge_ratio', 0, 'a number > 0', ValueError),
    ('datasets.train.gt_size', 64.5, 'an int >= 1', TypeError),
    ('datasets.train.use_hflip', 'false', 'a bool (true or false)', TypeError),
    ('datasets.train.use_rot', 1, 'a bool (true or false)', TypeError),
    ('datasets.train.persistent_workers', 'yes', 'a bool (true or false)', TypeError),
    ('datasets.train.pin_memory', 0, 'a bool (true or false)', TypeError),
    ('datasets.train.tasks[0].noise_sigma', -5, 'a number >= 0 or null', ValueError),
    ('datasets.train.tasks[0].noise_sigma', 'fifteen', 'a number >= 0 or null', TypeError),
    ('datasets.train.tasks[3].repeat', 0, 'an int >= 1', ValueError),
    ('datasets.train.tasks[3].repeat', 2.5, 'an int >= 1', TypeError),
    ('datasets.train.degradation_classes', 'noise', 'a list of strings', TypeError),
    ('datasets.val_noise15.noise_sigma', float('nan'), 'a number >= 0 or null', ValueError),
    ('datasets.val_noise15.crop_to_multiple', 0, 'an int >= 1 or null', ValueError),
    ('train.total_iter', None, 'an int >= 1', TypeError),
    ('train.total_iter', 'twenty', 'an int >= 1', TypeError),
    ('train.warmup_iter', 'none', 'an int', TypeError),
    ('train.optim_g.lr', 0, 'a number > 0', ValueError),
    ('train.optim_g.lr', True, 'a number > 0', TypeError),
    ('train.optim_g.lr', float('inf'), 'a number > 0', ValueError),
    ('train.optim_g.weight_decay', -0.1, 'a number >= 0', ValueError),
    ('train.optim_g.betas', [0.9], 'a list of 2 numbers >= 0 and < 1', ValueError),
    ('train.optim_g.betas', 0.9, 'a list of 2 numbers >= 0 and < 1', TypeError),
    ('train.optim_g.betas[1]', 'high', 'a number >= 0 and < 1', TypeError),
    ('train.scheduler.periods', 1000, 'a list of ints >= 1', TypeError),
    ('train.scheduler.periods[0]', 0, 'an int >= 1', ValueError),
    ('train.scheduler.restart_weights[0]', 'one', 'a number >= 0', TypeError),
    ('train.scheduler.eta_min', 'small', 'a number >= 0', TypeError),
    ('train.pixel_opt.loss_weight', -1, 'a number >= 0', ValueError),
    ('train.fft_opt.loss_weight', 'tenth', 'a number >= 0', TypeError),
    ('train.pixel_opt.type', None, 'a string', TypeError),
    ('train.ema_decay', 1.0, 'a number >= 0 and < 1', ValueError),
    ('train.grad_clip', 0, 'a number > 0, {max_norm, norm_type} or null', ValueError),
    ('train.grad_clip', 'on', 'a number > 0, {max_norm, norm_type} or null', TypeError),
    ('train.teacher_forcing_iter', -1, 'an int >= 0', ValueError),
    ('train.max_nonfinite_steps', 0, 'an int >= 1', ValueError),
    ('train.spike_factor', 1, 'a number > 1 or null', ValueError),
    ('train.spike_factor', 'high', 'a number > 1 or null', TypeError),
    ('val.val_freq', 0, 'an int >= 1', ValueError),
    ('val.save_img', 'no', 'a bool (true or false)', TypeError),
    ('val.pbar', 1, 'a bool (true or false)', TypeError),
    ('val.metrics.psnr.type', 3, 'a string', TypeError),
    ('val.metrics.psnr.crop_border', -1, 'an int >= 0', ValueError),
    ('logger.print_freq', 'often', 'an int >= 1', TypeError),
    ('logger.save_checkpoint_freq', 0, 'an int >= 1', ValueError),
    ('logger.use_tb_logger', 'false', 'a bool (true or false)', TypeError),
    ('path.pretrain_network_g', 5, 'a string or null', TypeError),
    ('path.resume_state', ['a'], 'a string or null', TypeError),
    ('path.strict_load_g', 'yes', 'a bool (true or false)', TypeError),
    ('path.param_key_g', 1, 'a string or null', TypeError),
    ('network_g.width', 16.5, "an int (SymUNet's default: 48)", TypeError),
    ('network_g.bias', 'false', "a bool (SymUNet's default: False)", TypeError),
    ('network_g.LayerNorm_type', None, "a string (SymUNet's default: 'WithBias')", TypeError),
    ('network_g.restormer_heads', 'one', "a list of ints (SymUNet's default: [1, 2, 4])", TypeError),
]


@pytest.mark.parametrize('path,value,expected,error', BAD, ids=[f'{p}={v!r}' for p, v, _, _ in BAD])
def test_error_names_key_value_type_and_expected_type(path, value, expected, error):
    opt = demo_train()
    opt['val']['metrics']['psnr'] = {'type': 'calculate_psnr_aio', 'crop_border': 0}
    set_key(opt, path, value)
    with pytest.raises(error) as err:
        check_options(opt)
    assert str(err.value) == f'{path}: {value!r} ({type(value).__name__}) is not {expected}'


def test_missing_required_keys_are_named():
    for path in ('train.total_iter', 'train.optim_g.lr', 'logger.print_freq', 'datasets.train.batch_size_per_gpu',
                 'val.val_freq', 'network_g.type', 'name'):
        opt = demo_train()
        *parents, last = path.split('.')
        node = opt
        for part in parents:
            node = node[part]
        del node[last]
        with pytest.raises(ValueError, match=rf'^{path}: missing'):
            check_options(opt)


def test_unregistered_arch_is_named():
    opt = demo_train()
    opt['network_g']['type'] = 'SymUnet'
    with pytest.raises(ValueError, match=r"network_g\.type: 'SymUnet' is not a registered arch; registered: .*"
                                         r"'SymUNet'"):
        check_options(opt)


# ---------------------------------------------------------------------------------------------- more conversions
def test_scheduler_and_clipping_numbers_converted():
    opt = load('train_promptdsanet.yml')
    opt['train']['scheduler'].update(warmup_iter='10500', max_iter=1.4e5, warmup_start_lr='0', eta_min='1e-7')
    opt['train']['grad_clip'] = {'max_norm': '1e-2', 'norm_type': 'inf'}
    opt['train']['ema_decay'] = '0.999'
    with pytest.warns(OptionConversionWarning):
        check_options(opt)
    sched = opt['train']['scheduler']
    assert (sched['warmup_iter'], sched['max_iter'], sched['warmup_start_lr'], sched['eta_min']) == (
        10500, 140000, 0, 1e-7)
    assert type(sched['max_iter']) is int and type(sched['warmup_iter']) is int
    assert opt['train']['grad_clip'] == {'max_norm': 0.01, 'norm_type': float('inf')}
    assert opt['train']['ema_decay'] == 0.999


def test_periods_and_restart_weights_must_pair():
    opt = demo_train()
    opt['train']['scheduler'].update(periods=[500, 500], restart_weights=[1])
    with pytest.raises(ValueError, match=r'train\.scheduler\.restart_weights: \[1\] needs one weight per period'):
        check_options(opt)


def test_dataset_numbers_converted_for_the_datasets():
    opt = demo_train()
    task = opt['datasets']['train']['tasks'][3]
    task['repeat'] = '2'
    opt['datasets']['train']['tasks'][0]['noise_sigma'] = '15'
    opt['datasets']['val_noise15']['crop_to_multiple'] = 16.0
    with pytest.warns(OptionConversionWarning):
        check_options(opt)
    assert task['repeat'] == 2 and type(task['repeat']) is int  # the dataset accepts ints only
    assert opt['datasets']['train']['tasks'][0]['noise_sigma'] == 15
    assert opt['datasets']['val_noise15']['crop_to_multiple'] == 16
    assert type(opt['datasets']['val_noise15']['crop_to_multiple']) is int


def test_number_helpers():
    assert to_int(2e4, 'k') == 20000 and type(to_int(2e4, 'k')) is int
    assert to_number(3, 'k') == 3 and to_number('2.0e-3', 'k') == 0.002
    assert to_int(None, 'k', null=True) is None
    for bad in (True, False, 'nan', [1], {'a': 1}, '1 2'):
        with pytest.raises((TypeError, ValueError), match=r'^k: '):
            to_number(bad, 'k')
    with pytest.raises(ValueError, match=r"^k: 'inf' \(str\) is not a number$"):
        to_number('inf', 'k')
    assert to_number('inf', 'k', allow_inf=True) == float('inf')


# ---------------------------------------------------------------------------------------------- training states
def test_training_state_of_the_wrong_content_names_the_file(tmp_path):
    path = tmp_path / '8.state'
    torch.save({'params': {'w': torch.zeros(1)}}, path)
    state = torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match=rf"training state {path}: not a training state: missing \['iter', "
                                         r"'epoch', 'optimizers', 'schedulers'\] \(keys found: \['params'\]\); it "
                                         r'looks like network weights'):
        check_training_state(state, str(path))
    with pytest.raises(ValueError, match=rf'training state {path}: holds a list, not a training state'):
        check_training_state([1, 2], str(path))
    good = {'iter': 8, 'epoch': 0, 'optimizers': [{}], 'schedulers': [{}]}
    assert check_training_state(good, str(path)) is good
    with pytest.raises(ValueError, match=rf"training state {path}: 'iter' is '8' \(str\), expected an int >= 0"):
        check_training_state(dict(good, iter='8'), str(path))
    with pytest.raises(ValueError, match=rf"training state {path}: 'optimizers' is a dict, expected a list"):
        check_training_state(dict(good, optimizers={}), str(path))
