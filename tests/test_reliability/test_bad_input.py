"""Bad input that the data and model tests do not already cover: unknown dataset option keys, a checkpoint of
another arch, and non-finite losses. (Missing paths, empty LMDB / meta_info, keys missing from an LMDB, corrupt
images, grey / RGBA / 16-bit images, images smaller than gt_size, two datasets on one LMDB and unknown arch
options are tested in tests/test_data and tests/test_archs.)"""
import logging

import pytest
import torch

from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset, MixedDegradationDataset

from basicsr.models import build_model

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)


def test_unknown_dataset_option_keys_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['gt_szie'\]; valid: .*'gt_size'"):
        MixedDegradationDataset({'name': 'x', 'phase': 'train', 'gt_szie': 64, 'tasks': [{}]})
    with pytest.raises(ValueError, match=r"tasks\[0\]: unknown option\(s\) \['dataroot_hq'\]; valid: .*'dataroot_lq'"):
        MixedDegradationDataset({'name': 'x', 'phase': 'train', 'tasks': [{'dataroot_hq': 'a'}]})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma'\]; valid: .*'noise_sigma'"):
        AllInOneTestDataset({'name': 'x', 'phase': 'val', 'sigma': 25})


def _opt(tmp_path, net, **train):
    train_opt = {'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'total_iter': 10, 'max_nonfinite_steps': 3,
                 'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [10], 'restart_weights': [1]},
                 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0}}
    train_opt.update(train)
    return {'name': 'bad', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
            'world_size': 1, 'network_g': net, 'train': train_opt, 'datasets': {},
            'path': {'models': str(tmp_path), 'training_states': str(tmp_path), 'experiments_root': str(tmp_path)}}


@pytest.fixture
def basicsr_log(caplog):
    """``caplog`` with BasicSR's warnings, whichever test ran first: once ``get_root_logger`` has set the logger up,
    it no longer propagates to the root logger that ``caplog`` listens on."""
    logger = logging.getLogger('basicsr')
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level('WARNING', logger='basicsr'):
            yield caplog
    finally:
        logger.removeHandler(caplog.handler)


TINY = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1], 'middle_blk_num': 1, 'dec_blk_nums': [1],
        'restormer_heads': [1], 'restormer_middle_heads': 2}


def test_checkpoint_of_another_arch_names_the_first_mismatching_keys(tmp_path):
    model = build_model(_opt(tmp_path, TINY))
    model.save_network(model.net_g, 'net_g', 1)
    other = dict(TINY, width=16)
    opt = _opt(tmp_path, other)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'net_g_1.pth')
    with pytest.raises(ValueError, match=r'does not fit SymUNet .*shape mismatch \(\d+\): intro.weight: checkpoint '
                                         r'\(8, 3, 3, 3\) vs network \(16, 3, 3, 3\)'):
        build_model(opt)
    opt = _opt(tmp_path, {'type': 'PromptIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_refinement_blocks': 0,
                          'prompt_dims': [8, 8, 8], 'prompt_sizes': [4, 4, 4]})
    opt['path']['pretrain_network_g'] = str(tmp_path / 'net_g_1.pth')
    with pytest.raises(ValueError, match=r'missing in the checkpoint \(\d+\): patch_embed.proj.weight'):
        build_model(opt)


def test_nonfinite_loss_skips_the_step_and_stops_after_the_limit(tmp_path, basicsr_log):
    model = build_model(_opt(tmp_path, TINY))
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    lq = torch.rand(2, 3, 16, 16)
    lq[0, 0, 0, 0] = float('nan')
    data = {'lq': lq, 'gt': torch.rand(2, 3, 16, 16), 'lq_path': ['a/bad.png', 'a/ok.png']}
    model.feed_data(data)
    model.optimize_parameters(5)
    model.optimize_parameters(6)
    assert all(torch.equal(v, model.net_g.state_dict()[k]) for k, v in before.items())  # nothing was applied
    assert "Non-finite loss at iteration 5" in basicsr_log.text and "['bad.png', 'ok.png']" in basicsr_log.text
    assert not model.optimizer_g.state  # the optimizer never stepped
    model.feed_data({**data, 'lq': torch.rand(2, 3, 16, 16)})
    model.optimize_parameters(7)  # a finite step resets the streak
    assert model.guard.streak == 0
    model.feed_data(data)
    model.optimize_parameters(8)
    model.optimize_parameters(9)
    with pytest.raises(RuntimeError, match=r'3 consecutive non-finite losses \(train.max_nonfinite_steps: 3\), last '
                                           r'at iteration 10'):
        model.optimize_parameters(10)


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from allinone_basicsr.utils import checkpoint as checkpoint_util
    path = tmp_path / 'net_g_latest.pth'
    checkpoint_util.atomic_torch_save({'params': {'w': torch.ones(3)}}, str(path))

    def dies_half_way(obj, f):
        f.write(b'PK\x03\x04 half a file')
        raise KeyboardInterrupt  # e.g. Ctrl-C or a crash in the middle of torch.save

    monkeypatch.setattr(checkpoint_util.torch, 'save', dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_util.atomic_torch_save({'params': {'w': torch.zeros(3)}}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)['params']['w'], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ['net_g_latest.pth']  # no temporary file left


def _steps(model, first, count, scale=1.0):
    """``count`` training steps from iteration ``first`` on random 16x16 batches, ``gt`` scaled by ``scale``."""
    for it in range(first, first + count):
        model.feed_data({'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 16, 16) * scale,
                         'lq_path': ['a/x.png', 'a/y.png']})
        model.optimize_parameters(it)


def test_a_finite_loss_spike_is_skipped_before_it_reaches_the_weights(tmp_path, basicsr_log):
    """A batch whose (finite) loss is ~10^4 times the running mean -- the step that would blow the weights up -- is
    skipped like a non-finite one: the weights and the optimizer are those of before it; train.spike_factor: null
    turns the rule off."""
    torch.manual_seed(0)
    model = build_model(_opt(tmp_path, TINY))
    _steps(model, 1, 3)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    steps = [s['step'].item() for s in model.optimizer_g.state.values()]
    _steps(model, 4, 1, scale=1e4)
    assert all(torch.equal(v, model.net_g.state_dict()[k]) for k, v in before.items())  # nothing was applied
    assert [s['step'].item() for s in model.optimizer_g.state.values()] == steps
    assert 'Loss spike (' in basicsr_log.text and 'train.spike_factor 20 x the running mean' in basicsr_log.text
    assert 'at iteration 4' in basicsr_log.text and model.guard.streak == 1
    _steps(model, 5, 1)  # a normal batch is taken again
    assert model.guard.streak == 0 and model.guard.loss_count == 4

    model = build_model(_opt(tmp_path, TINY, spike_factor=None))
    _steps(model, 1, 3)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    _steps(model, 4, 1, scale=1e4)
    assert not all(torch.equal(v, model.net_g.state_dict()[k]) for k, v in before.items())


def test_weights_that_give_a_bad_loss_are_not_saved(tmp_path, basicsr_log):
    """After an accepted step, save checks the weights' loss on that batch: wrecked weights write no checkpoint and
    no training state, the save is deferred, and the first healthy iteration writes it."""
    torch.manual_seed(0)
    model = build_model(_opt(tmp_path, TINY))
    _steps(model, 1, 2)
    good = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    with torch.no_grad():
        model.net_g.intro.weight.mul_(1e30)  # what one huge update does
    model.save(0, 2)
    assert not list(tmp_path.glob('*.pth')) and not list(tmp_path.glob('*.state'))  # before: both written
    assert 'Not writing the checkpoint of iteration 2: their loss on the last training batch' in basicsr_log.text
    assert model.save_deferred
    model.net_g.load_state_dict(good)
    model.save(0, 3)
    assert not model.save_deferred
    assert sorted(p.name for p in tmp_path.iterdir()) == ['3.state', 'net_g_3.pth']
    state = torch.load(tmp_path / '3.state', weights_only=True)
    assert state['loss_guard'] == model.guard.state_dict() and state['loss_guard']['loss_count'] == 2
