"""AllInOneModel's own behaviour, built in-process from option dicts on CPU."""
import csv
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from allinone_basicsr.archs.arch_util import AfterStepArch, TaskLogitsArch
from allinone_basicsr.metrics.routing_accuracy_metric import calculate_routing_accuracy

from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY, LOSS_REGISTRY


@ARCH_REGISTRY.register()
class _TaskLogitsTestNet(TaskLogitsArch, AfterStepArch, nn.Module):
    """A minimal arch with the two optional hooks: task logits and after_optimizer_step."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, num_classes)
        self.steps = 0

    def forward(self, x, return_task_logits=False):
        out = x + self.conv(x)
        if return_task_logits:
            return out, [self.head(x.mean((2, 3)))]
        return out

    def after_optimizer_step(self):
        self.steps += 1


@LOSS_REGISTRY.register()
class _MeanCETestLoss(nn.Module):

    def __init__(self, loss_weight=1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, logits, target):
        return self.loss_weight * sum(F.cross_entropy(x, target) for x in logits) / len(logits)


def make_opt(tmp_path, network, **train):
    train_opt = {
        'optim_g': {'type': 'AdamW', 'lr': 1e-3, 'weight_decay': 1e-3, 'betas': [0.9, 0.999]},
        'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [10], 'restart_weights': [1], 'eta_min': 1e-7},
        'total_iter': 10,
        'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
        'fft_opt': {'type': 'FFTLoss', 'loss_weight': 0.1},
    }
    train_opt.update(train)
    return {
        'name': 'unit', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
        'world_size': 1, 'network_g': network, 'train': train_opt, 'datasets': {},
        'path': {'models': str(tmp_path), 'training_states': str(tmp_path), 'experiments_root': str(tmp_path)},
    }


def batch():
    torch.manual_seed(0)
    return {'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 16, 16), 'degradation': torch.tensor([0, 2])}


TINY = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1], 'middle_blk_num': 1, 'dec_blk_nums': [1],
        'restormer_heads': [1], 'restormer_middle_heads': 2}


def test_adamw_cosine_l1_fft_and_grad_clip(tmp_path):
    model = build_model(make_opt(tmp_path, TINY, grad_clip=0.01))
    assert isinstance(model.optimizer_g, torch.optim.AdamW)
    assert model.optimizer_g.param_groups[0]['weight_decay'] == 1e-3
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_pix', 'l_fft'}
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.net_g.parameters()))
    assert norm.item() == pytest.approx(0.01, rel=1e-3)  # clipped to max_norm
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))


def test_task_logits_loss_and_step_hook(tmp_path):
    opt = make_opt(tmp_path, {'type': '_TaskLogitsTestNet'}, cls_opt={'type': '_MeanCETestLoss', 'loss_weight': 0.5})
    model = build_model(opt)
    data = batch()
    model.feed_data(data)
    model.optimize_parameters(1)
    model.optimize_parameters(2)
    assert set(model.log_dict) == {'l_pix', 'l_fft', 'l_cls', 'route_acc'}  # route_acc is logged, not summed
    assert model.log_dict['route_acc'] in (0.0, 0.5, 1.0)
    assert model.net_g.steps == 2
    model.test()
    assert model.output.shape == data['lq'].shape  # inference returns the image alone


def test_cls_opt_on_an_arch_without_task_logits_is_ignored(tmp_path):
    model = build_model(make_opt(tmp_path, TINY, cls_opt={'type': '_MeanCETestLoss'}))
    assert model.cri_cls is None


def test_unknown_optimizer_and_scheduler_list_valid_names(tmp_path):
    with pytest.raises(ValueError, match="'Adamw'.*AdamW"):
        build_model(make_opt(tmp_path, TINY, optim_g={'type': 'Adamw', 'lr': 1e-3}))
    with pytest.raises(ValueError, match="'Cosine'.*CosineAnnealingLR"):
        build_model(make_opt(tmp_path, TINY, scheduler={'type': 'Cosine'}))


def test_any_torch_scheduler_by_name(tmp_path):
    model = build_model(make_opt(tmp_path, TINY, scheduler={'type': 'CosineAnnealingLR', 'T_max': 4, 'eta_min': 0}))
    for it in range(1, 6):
        model.update_learning_rate(it)
    assert model.get_current_learning_rate()[0] == pytest.approx(0, abs=1e-12)


def test_ema_and_checkpoint_round_trip(tmp_path):
    model = build_model(make_opt(tmp_path, TINY, ema_decay=0.9))
    model.feed_data(batch())
    model.optimize_parameters(1)
    model.save(epoch=0, current_iter=1)
    ckpt = torch.load(tmp_path / 'net_g_1.pth')
    assert set(ckpt) == {'params', 'params_ema'}
    assert (tmp_path / '1.state').is_file()
    loaded = build_model(dict(make_opt(tmp_path, TINY), is_train=False,
                              path={'pretrain_network_g': str(tmp_path / 'net_g_1.pth'), 'param_key_g': 'params_ema'}))
    for k, v in model.net_g_ema.state_dict().items():
        assert torch.equal(loaded.net_g.state_dict()[k], v)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='pretrain_network_g.*missing.pth'):
        build_model(dict(make_opt(tmp_path, TINY), is_train=False,
                         path={'pretrain_network_g': str(tmp_path / 'missing.pth')}))
    torch.save({'epoch': 3, 'weights_here': {'x': 1}}, tmp_path / 'odd.pth')
    with pytest.raises(ValueError, match=r"top-level keys: \['epoch', 'weights_here'\]"):
        build_model(dict(make_opt(tmp_path, TINY), is_train=False,
                         path={'pretrain_network_g': str(tmp_path / 'odd.pth')}))


def official_promptir_lr(epoch, base=2e-4, warmup=15, max_epochs=150):
    """Lightning-Bolts LinearWarmupCosineAnnealingLR closed form as PromptIR uses it (warmup_start_lr = eta_min = 0)."""
    if epoch < warmup:
        return epoch * base / (warmup - 1)
    return 0.5 * base * (1 + math.cos(math.pi * (epoch - warmup) / (max_epochs - warmup)))


def test_linear_warmup_cosine_matches_promptir_schedule(tmp_path):
    sched = {'type': 'LinearWarmupCosineLR', 'warmup_iter': 15, 'max_iter': 150}
    model = build_model(make_opt(tmp_path, TINY, optim_g={'type': 'AdamW', 'lr': 2e-4}, scheduler=sched))
    for it in range(1, 121):  # one scheduler step per "epoch"; BasicSR's iteration `it` runs at step it - 1
        model.update_learning_rate(it)
        assert model.get_current_learning_rate()[0] == pytest.approx(official_promptir_lr(it - 1), abs=1e-12)
    with pytest.raises(ValueError, match='warmup_iter < max_iter'):
        bad = {'type': 'LinearWarmupCosineLR', 'warmup_iter': 5, 'max_iter': 5}
        build_model(make_opt(tmp_path, TINY, scheduler=bad))


class _Loader(list):
    """A stand-in for a val DataLoader: items plus ``dataset.opt``."""

    def __init__(self, items, name):
        super().__init__(items)
        self.dataset = type('D', (), {'opt': {'name': name, 'degradation': 'noise'}})()


def test_validation_scores_with_gt_and_saves_images_without(tmp_path):
    opt = dict(make_opt(tmp_path, TINY), is_train=False,
               path={'results_root': str(tmp_path / 'res'), 'visualization': str(tmp_path / 'vis')},
               datasets={'test_1': {}, 'test_2': {}},
               val={'pbar': False, 'metrics': {'psnr': {'type': 'calculate_psnr_aio'}}})
    model = build_model(opt)
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 12, 12)
    lq = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    model.validation(_Loader([{'lq': lq, 'gt': gt, 'lq_path': ['a.png']}], 'with_gt'), 'run', None, save_img=True)
    rows = (tmp_path / 'res' / 'metrics.csv').read_text().splitlines()
    assert rows[0].startswith('test_set,degradation,images,input_psnr,psnr,gain_psnr')
    assert rows[1].startswith('with_gt,noise,1,') and rows[2].startswith('Average,')
    model.validation(_Loader([{'lq': lq, 'lq_path': ['b.png']}], 'no_gt'), 'run', None, save_img=True)
    assert (tmp_path / 'vis' / 'no_gt' / 'b_unit.png').is_file()
    assert 'no_gt' not in (tmp_path / 'res' / 'metrics.csv').read_text()


def test_stock_numpy_and_pt_metrics_next_to_ours(tmp_path):
    """BasicSR's numpy metrics get uint8 BGR images (tensor2img, as SRModel gives them), its *_pt metrics tensors
    (their result a float), ours the float RGB output: all in one table."""
    from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_psnr_pt, calculate_ssim
    from basicsr.utils import tensor2img
    metrics = {'psnr': {'type': 'calculate_psnr_aio'},
               'psnr_y': {'type': 'calculate_psnr', 'crop_border': 2, 'test_y_channel': True},
               'ssim_y': {'type': 'calculate_ssim', 'crop_border': 0, 'test_y_channel': True},
               'psnr_pt': {'type': 'calculate_psnr_pt', 'crop_border': 0}}
    opt = dict(make_opt(tmp_path, TINY), is_train=False, datasets={'test_1': {}},
               path={'results_root': str(tmp_path / 'res'), 'visualization': str(tmp_path / 'vis')},
               val={'pbar': False, 'metrics': metrics})
    model = build_model(opt)
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 24, 24)
    lq = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    model.validation(_Loader([{'lq': lq, 'gt': gt, 'lq_path': ['a.png']}], 'set'), 'run', None)
    with open(tmp_path / 'res' / 'metrics.csv') as f:
        row = next(csv.DictReader(f))
    with torch.no_grad():
        out = model.net_g(lq).clamp(0, 1)
    img, ref = tensor2img([out]), tensor2img([gt])
    assert float(row['psnr_y']) == pytest.approx(calculate_psnr(img, ref, 2, test_y_channel=True), abs=1e-9)
    assert float(row['ssim_y']) == pytest.approx(calculate_ssim(img, ref, 0, test_y_channel=True), abs=1e-9)
    assert float(row['psnr_pt']) == pytest.approx(float(calculate_psnr_pt(out, gt, 0)), abs=1e-6)
    assert float(row['psnr']) == pytest.approx(float(calculate_psnr_pt(out, gt, 0)), abs=1e-4)  # the same PSNR
    assert float(row['input_psnr_y']) == pytest.approx(
        calculate_psnr(tensor2img([lq]), ref, 2, test_y_channel=True), abs=1e-9)
    assert 'gain_psnr_y' in row and 'gain_psnr_pt' in row


def test_images_saved_during_training_are_kept_per_test_set(tmp_path):
    """Rain and haze test sets share image names: during training each set saves into its own folder."""
    opt = dict(make_opt(tmp_path, TINY), datasets={'val_1': {}, 'val_2': {}},
               val={'pbar': False, 'metrics': {'psnr': {'type': 'calculate_psnr_aio'}}})
    opt['path'].update(visualization=str(tmp_path / 'vis'))
    model = build_model(opt)
    items = [{'lq': torch.rand(1, 3, 8, 8), 'gt': torch.rand(1, 3, 8, 8), 'lq_path': [f'{i}.png']} for i in range(3)]
    for name in ('rain', 'haze'):
        model.validation(_Loader(items, name), 100, None, save_img=True)
    saved = sorted(str(p.relative_to(tmp_path / 'vis')) for p in (tmp_path / 'vis').rglob('*.png'))
    assert saved == [f'{s}/{i}_100.png' for s in ('haze', 'rain') for i in range(3)]


def test_infinite_scores_are_flagged_and_left_out_of_the_average(tmp_path, caplog):
    """A test set whose LQ is its GT (dataroot_lq pointing at the GT) scores an infinite input PSNR: the table flags
    it, the average leaves the set out of every column (its finite PSNR and SSIM too, so that all averages cover the
    same sets), the table names it, and a warning names the set."""
    opt = dict(make_opt(tmp_path, TINY), is_train=False, datasets={'test_1': {}, 'test_2': {}},
               path={'results_root': str(tmp_path / 'res'), 'visualization': str(tmp_path / 'vis')},
               val={'pbar': False, 'metrics': {'psnr': {'type': 'calculate_psnr_aio'},
                                               'ssim': {'type': 'calculate_ssim_aio'}}})
    model = build_model(opt)
    torch.manual_seed(0)
    gt = torch.rand(1, 3, 12, 12)
    noisy = (gt + 0.1 * torch.randn_like(gt)).clamp(0, 1)
    model.validation(_Loader([{'lq': noisy, 'gt': gt, 'lq_path': ['a.png']}], 'fine'), 'run', None)
    with caplog.at_level('WARNING', logger='basicsr'):
        model.validation(_Loader([{'lq': gt.clone(), 'gt': gt, 'lq_path': ['a.png']}], 'lq_is_gt'), 'run', None)
    with open(tmp_path / 'res' / 'metrics.csv') as f:
        rows = {r['test_set']: r for r in csv.DictReader(f)}
    assert rows['lq_is_gt']['input_psnr'] == 'inf'
    assert math.isfinite(float(rows['lq_is_gt']['psnr'])) and math.isfinite(float(rows['lq_is_gt']['ssim']))
    for column in ('input_psnr', 'psnr', 'ssim', 'input_ssim', 'images'):
        assert float(rows['Average'][column]) == float(rows['fine'][column]), column
    table = (tmp_path / 'res' / 'metrics.md').read_text()
    assert 'inf (!)' in table and 'not finite: lq_is_gt input_psnr' in table
    assert 'Left out of the Average (every column): lq_is_gt.' in table
    assert 'Test set lq_is_gt: input_psnr is inf, gain_psnr is -inf; the set is left out of the Average' in caplog.text
    assert 'the LQ images are the GT' in caplog.text


TINY_DAAIR = {'type': 'DaAIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_dec_blocks': [1, 1, 1],
              'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2], 'rank_ratio': 4, 'expert_kernel_size': 3}


def test_daair_teacher_forcing_controller_step_and_ema_of_buffers(tmp_path):
    opt = make_opt(tmp_path, TINY_DAAIR, cls_opt={'type': 'TaskClassificationLoss', 'loss_weight': 0.01},
                   teacher_forcing_iter=1, ema_decay=0.5)
    model = build_model(opt)
    net = model.net_g
    in_optimizer = {id(p) for group in model.optimizer_g.param_groups for p in group['params']}
    assert in_optimizer == {id(p) for p in net.parameters()} and not in_optimizer & {id(b) for b in net.buffers()}
    routed = []
    net.encoders[0][0].dale.register_forward_pre_hook(lambda m, args: routed.append(args[1]))
    data = batch()
    model.feed_data(data)
    ctrl = net.decoders[0][0].controller.down.weight
    ctrl_before, enc = ctrl.clone(), net.encoders[0][0].dale.agnostic.down.weight
    ema_before = dict(model.net_g_ema.named_buffers())['decoders.0.0.controller.down.weight'].clone()
    model.optimize_parameters(1)  # teacher-forced: the DaLe gets the labels
    assert torch.equal(routed[-1], data['degradation'])
    assert torch.allclose(ctrl, 0.999 * ctrl_before + 0.001 * enc.detach(), atol=1e-7)  # after the step
    ema_after = dict(model.net_g_ema.named_buffers())['decoders.0.0.controller.down.weight']
    assert torch.allclose(ema_after, 0.5 * ema_before + 0.5 * ctrl, atol=1e-7)
    assert set(model.log_dict) == {'l_pix', 'l_fft', 'l_cls', 'route_acc'}
    model.optimize_parameters(2)  # after teacher_forcing_iter: the routers decide
    assert routed[-1] is None


def test_routing_accuracy_is_a_column_of_the_table(tmp_path):
    opt = dict(make_opt(tmp_path, TINY_DAAIR), is_train=False,
               path={'results_root': str(tmp_path / 'res'), 'visualization': str(tmp_path / 'vis')},
               datasets={'test_1': {}},
               val={'pbar': False, 'metrics': {'psnr': {'type': 'calculate_psnr_aio'},
                                               'routing_acc': {'type': 'calculate_routing_accuracy'}}})
    model = build_model(opt)
    torch.manual_seed(0)
    gts = [torch.rand(1, 3, 16, 16) for _ in range(4)]
    samples = [{'lq': g, 'gt': g, 'lq_path': [f'{i}.png'], 'degradation': torch.tensor([2])} for i, g in enumerate(gts)]
    votes = []
    for s in samples:
        with torch.no_grad():
            votes.append(int(calculate_routing_accuracy(model.net_g(s['lq'], return_task_logits=True)[1],
                                                        torch.tensor([2]))))
    model.validation(_Loader(samples, 'haze_set'), 'run', None, save_img=False)
    header, row = (tmp_path / 'res' / 'metrics.csv').read_text().splitlines()[:2]
    assert header == 'test_set,degradation,images,input_psnr,psnr,gain_psnr,routing_acc'
    assert float(row.split(',')[-1]) == pytest.approx(sum(votes) / 4)
    assert 'routing_acc' in (tmp_path / 'res' / 'metrics.md').read_text()

    opt['network_g'] = TINY  # an arch without task logits: a clear error
    with pytest.raises(ValueError, match='calculate_routing_accuracy needs an arch with task logits; SymUNet'):
        build_model(opt).validation(_Loader(samples, 'haze_set'), 'run', None, save_img=False)
