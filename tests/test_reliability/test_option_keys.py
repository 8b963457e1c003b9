"""Nothing wrong in an option file is silent: a misspelt key anywhere BasicSR or the plugin reads is refused with the
closest valid key (train, test, recipe, table), while stock BasicSR files keep passing; empty and binary files, a
name that is a path, persistent_workers without workers and crop_to_multiple beyond an image are one clear error
naming the file or the option key, never a traceback."""
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pipeline_util import run_python

import allinone_basicsr  # noqa: F401  (registers the plugin)
from allinone_basicsr.utils.option_keys import check_keys
from allinone_basicsr.utils.options import check_options

REPO = Path(__file__).resolve().parents[2]
TINY_NET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1], 'restormer_heads': [1, 2, 4], 'restormer_middle_heads': 8}


def demo(kind='train'):
    return yaml.safe_load((REPO / 'options' / 'demo' / f'{kind}_symunet_demo.yml').read_text())


def write(folder, name, opt):
    (folder / name).write_text(yaml.safe_dump(opt, sort_keys=False))
    return name


def rename(section, old, new):
    """Rename ``old`` to ``new`` in the dict ``section``, keeping the order (as a typo in the file would)."""
    items = list(section.items())
    section.clear()
    section.update((new if k == old else k, v) for k, v in items)


def misspelt(key_path):
    opt = demo()
    parts = key_path.split('.')
    parent = opt['train'] if len(parts) == 2 else opt
    if parts[-1] == 'ema_decy':
        parent['ema_decy'] = 0.999
    elif parts[-1] == 'grad_clipp':
        parent['grad_clipp'] = 0.01
    else:
        rename(parent, {'trainn': 'train', 'vall': 'val', 'fft_op': 'fft_opt'}[parts[-1]], parts[-1])
    return opt


TYPOS = {'trainn': 'train', 'vall': 'val', 'train.fft_op': 'train.fft_opt', 'train.ema_decy': 'train.ema_decay',
         'train.grad_clipp': 'train.grad_clip'}


# ------------------------------------------------------------------------------------------ misspelt keys, as run
@pytest.mark.slow
@pytest.mark.parametrize('typo', list(TYPOS))
def test_a_misspelt_key_stops_training_before_it_starts_and_names_the_closest_key(tmp_path, typo):
    name = write(tmp_path, 'typo.yml', misspelt(typo))
    proc = run_python(['-m', 'allinone_basicsr.train', '-opt', name], tmp_path, check=False, timeout=300, threads=1)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f'allinone-train: error: option file typo.yml: {typo}: unknown key (did you mean {TYPOS[typo]}?)' \
        in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    assert not (tmp_path / 'experiments').exists()  # refused before anything was made


@pytest.mark.slow
def test_recipe_refuses_a_misspelt_key_instead_of_reporting_a_validation_that_never_runs(tmp_path):
    name = write(tmp_path, 'typo.yml', misspelt('vall'))
    proc = run_python(['-m', 'allinone_basicsr.tools.recipe', name], tmp_path, check=False, timeout=300, threads=1)
    assert proc.returncode == 1
    assert 'error: typo.yml: vall: unknown key (did you mean val?)' in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_test_refuses_a_misspelt_key(tmp_path):
    opt = demo('test')
    rename(opt['val'], 'save_img', 'save_imgs')
    name = write(tmp_path, 'typo.yml', opt)
    proc = run_python(['-m', 'allinone_basicsr.test', '-opt', name], tmp_path, check=False, timeout=300, threads=1)
    assert proc.returncode == 2
    assert 'val.save_imgs: unknown key (did you mean val.save_img?)' in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_table_refuses_a_row_option_file_with_a_misspelt_key(tmp_path):
    from test_table import write_project
    spec = write_project(tmp_path)
    (tmp_path / 'options' / 'train_RunA.yml').write_text(yaml.safe_dump({'name': 'RunA', 'datasets': {}, 'vall': {}}))
    proc = run_python(['-m', 'allinone_basicsr.tools.table', str(spec), '--no-macs'], tmp_path, check=False,
                      timeout=300, threads=1)
    assert proc.returncode == 2
    assert "row 'A': train file options/train_RunA.yml: vall: unknown key (did you mean val?)" in proc.stderr, \
        proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------ every level, unit
LEVELS = [  # (section, key, value, the message: the key path and the closest valid key)
    ('train.optim_g', 'betass', [0.9, 0.99], r'train\.optim_g\.betass: .*did you mean train\.optim_g\.betas\?'),
    ('train.scheduler', 'period', [5], r'train\.scheduler\.period: .*did you mean train\.scheduler\.periods\?'),
    ('train.pixel_opt', 'loss_weigth', 1, r'train\.pixel_opt\.loss_weigth: .*did you mean '
                                          r'train\.pixel_opt\.loss_weight\?'),
    ('train.pixel_opt', 'type', 'L1loss', r"train\.pixel_opt\.type: 'L1loss' is not a registered loss \(did you "
                                          r'mean L1Loss\?\)'),
    ('train.optim_g', 'type', 'Adamw', r"train\.optim_g\.type 'Adamw' is not a torch\.optim optimizer"),
    ('train', 'grad_clip', {'max_norm': 1, 'norm_typ': 2}, r'train\.grad_clip\.norm_typ: .*did you mean '
                                                           r'train\.grad_clip\.norm_type\?'),
    ('val.metrics.psnr', 'crop_bordr', 4, r'val\.metrics\.psnr\.crop_bordr: .*did you mean '
                                          r'val\.metrics\.psnr\.crop_border\?'),
    ('val.metrics.ssim', 'type', 'calculate_ssim_ai', r'val\.metrics\.ssim\.type: .*did you mean calculate_ssim_aio'),
    ('logger.wandb', 'projct', 'x', r'logger\.wandb\.projct: .*did you mean logger\.wandb\.project\?'),
    ('logger', 'print_frequency', 5, r'logger\.print_frequency: .*did you mean logger\.print_freq\?'),
    ('path', 'pretrain_network', None, r'path\.pretrain_network: .*did you mean path\.pretrain_network_g\?'),
    ('', 'dist_params', {'backend': 'nccl', 'prot': 1}, r'dist_params\.prot: .*did you mean dist_params\.port\?'),
    ('train', 'xyz', 1, r"train\.xyz: unknown key \(valid keys of train: \[.*'ema_decay'.*\]\)"),
]


@pytest.mark.parametrize('section,key,value,message', LEVELS, ids=[f'{s}.{k}' for s, k, _, _ in LEVELS])
def test_unknown_keys_at_every_level_are_named_with_the_closest_valid_key(section, key, value, message):
    opt = demo()
    target = opt
    for part in filter(None, section.split('.')):
        target = target[part]
    target[key] = value
    with pytest.raises(ValueError, match=message):
        check_options(opt)


# stock BasicSR 1.4.2 files as its options/train/ and options/test/ write them (only the data paths invented)
EDSR = """
name: 201_EDSR_Mx2_f64b16_DIV2K_300k_B16G1_wandb
model_type: SRModel
scale: 2
num_gpu: 1
manual_seed: 10
datasets:
  train:
    name: DIV2K
    type: PairedImageDataset
    dataroot_gt: datasets/DIV2K/DIV2K_train_HR_sub
    dataroot_lq: datasets/DIV2K/DIV2K_train_LR_bicubic/X2_sub
    filename_tmpl: '{}'
    io_backend: {type: disk}
    gt_size: 96
    use_hflip: true
    use_rot: true
    use_shuffle: true
    num_worker_per_gpu: 6
    batch_size_per_gpu: 16
    dataset_enlarge_ratio: 100
    prefetch_mode: ~
  val:
    name: Set5
    type: PairedImageDataset
    dataroot_gt: datasets/Set5/GTmod12
    dataroot_lq: datasets/Set5/LRbicx2
    io_backend: {type: disk}
network_g: {type: EDSR, num_in_ch: 3, num_out_ch: 3, num_feat: 64, num_block: 16, upscale: 2, res_scale: 1,
            img_range: 255., rgb_mean: [0.4488, 0.4371, 0.4040]}
path: {pretrain_network_g: ~, strict_load_g: true, resume_state: ~}
train:
  ema_decay: 0.999
  optim_g: {type: Adam, lr: !!float 1e-4, weight_decay: 0, betas: [0.9, 0.99]}
  scheduler: {type: MultiStepLR, milestones: [200000], gamma: 0.5}
  total_iter: 300000
  warmup_iter: -1
  pixel_opt: {type: L1Loss, loss_weight: 1.0, reduction: mean}
val:
  val_freq: !!float 5e3
  save_img: false
  metrics:
    psnr: {type: calculate_psnr, crop_border: 2, test_y_channel: false}
logger:
  print_freq: 100
  save_checkpoint_freq: !!float 5e3
  use_tb_logger: true
  wandb: {project: ~, resume_id: ~}
dist_params: {backend: nccl, port: 29500}
"""
ESRGAN_TRAIN = {  # the parts SRModel's EDSR file has not
    'model_type': 'ESRGANModel',
    'network_d': {'type': 'VGGStyleDiscriminator', 'num_in_ch': 3, 'num_feat': 64},
    'optim_d': {'type': 'Adam', 'lr': 1e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
    'perceptual_opt': {'type': 'PerceptualLoss', 'layer_weights': {'conv5_4': 1}, 'vgg_type': 'vgg19',
                       'use_input_norm': True, 'range_norm': False, 'perceptual_weight': 1.0, 'style_weight': 0,
                       'criterion': 'l1'},
    'gan_opt': {'type': 'GANLoss', 'gan_type': 'vanilla', 'real_label_val': 1.0, 'fake_label_val': 0.0,
                'loss_weight': 5e-3},
}
REALESRGAN_TOP = {  # RealESRGANModel's degradations (top level), as train_realesrgan_x4plus.yml
    'l1_gt_usm': True, 'percep_gt_usm': True, 'gan_gt_usm': False, 'resize_prob': [0.2, 0.7, 0.1],
    'resize_range': [0.15, 1.5], 'gaussian_noise_prob': 0.5, 'noise_range': [1, 30], 'poisson_scale_range': [0.05, 3],
    'gray_noise_prob': 0.4, 'jpeg_range': [30, 95], 'second_blur_prob': 0.8, 'resize_prob2': [0.3, 0.4, 0.3],
    'resize_range2': [0.3, 1.2], 'gaussian_noise_prob2': 0.5, 'noise_range2': [1, 25],
    'poisson_scale_range2': [0.05, 2.5], 'gray_noise_prob2': 0.4, 'jpeg_range2': [30, 95], 'gt_size': 256,
    'queue_size': 180}
EDSR_TEST = """
name: EDSR_Mx2_f64b16_DIV2K_official-3ba7b086
model_type: SRModel
scale: 2
num_gpu: 1
manual_seed: 10
datasets:
  test_1: {name: Set5, type: PairedImageDataset, dataroot_gt: datasets/Set5/GTmod12,
           dataroot_lq: datasets/Set5/LRbicx2, io_backend: {type: disk}}
network_g: {type: EDSR, num_in_ch: 3, num_out_ch: 3, num_feat: 64, num_block: 16, upscale: 2, res_scale: 1,
            img_range: 255., rgb_mean: [0.4488, 0.4371, 0.4040]}
path: {pretrain_network_g: experiments/pretrained_models/EDSR/EDSR_Mx2.pth, strict_load_g: true, param_key_g: params}
val:
  save_img: true
  suffix: ~
  metrics:
    psnr: {type: calculate_psnr, crop_border: 2, test_y_channel: false}
    ssim: {type: calculate_ssim, crop_border: 2, test_y_channel: false, better: higher}
"""


def test_stock_basicsr_option_files_pass():
    from allinone_basicsr.utils.options import SafeOrderedLoader
    edsr = yaml.load(EDSR, Loader=SafeOrderedLoader)
    check_options(edsr)
    check_options(yaml.load(EDSR_TEST, Loader=SafeOrderedLoader), is_train=False)
    esrgan = yaml.load(EDSR, Loader=SafeOrderedLoader)
    esrgan['model_type'] = ESRGAN_TRAIN['model_type']
    esrgan['network_d'] = ESRGAN_TRAIN['network_d']
    esrgan['train'].update({k: v for k, v in ESRGAN_TRAIN.items() if k not in ('model_type', 'network_d')},
                           net_d_iters=1, net_d_init_iters=0)
    check_keys(esrgan)
    realesrgan = dict(esrgan, model_type='RealESRGANModel_basicsr', **REALESRGAN_TOP)
    check_keys(realesrgan)
    realesrgan['gt_sise'] = 256
    with pytest.raises(ValueError, match=r'gt_sise: unknown key \(did you mean gt_size\?\)'):
        check_keys(realesrgan)


# ------------------------------------------------------------------------------------------ the smaller items
PNG = b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01'  # the start of an image given as the option file


@pytest.mark.slow
@pytest.mark.parametrize('tool,content,message', [
    ('train', b'', 'is empty'), ('train', PNG, 'is not a YAML mapping'), ('recipe', b'', 'is empty'),
    ('recipe', PNG, 'is not a YAML mapping'), ('table', PNG, 'is not a YAML mapping')],
    ids=['train-empty', 'train-binary', 'recipe-empty', 'recipe-binary', 'table-binary'])
def test_empty_or_binary_yaml_is_one_error_naming_the_file(tmp_path, tool, content, message):
    (tmp_path / 'bad.yml').write_bytes(content)
    args = {'train': ['-m', 'allinone_basicsr.train', '-opt', 'bad.yml'],
            'recipe': ['-m', 'allinone_basicsr.tools.recipe', 'bad.yml'],
            'table': ['-m', 'allinone_basicsr.tools.table', 'bad.yml']}[tool]
    proc = run_python(args, tmp_path, check=False, timeout=300, threads=1)
    assert proc.returncode != 0
    assert f'bad.yml: {message}' in proc.stderr, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize('content,message', [
    (b'', 'is empty'), (b'- a list\n', 'is not a YAML mapping (it holds a list'),
    (PNG, 'is not a YAML mapping (binary data'), (b'name: x\x00\x01\n', 'is not a YAML mapping (binary data')],
    ids=['empty', 'list', 'not-utf8', 'control-characters'])
def test_read_yaml_of_a_whole_option_file_names_what_is_wrong(tmp_path, content, message):
    from allinone_basicsr.utils.options import OptionFileError, read_yaml
    (tmp_path / 'bad.yml').write_bytes(content)
    with pytest.raises(OptionFileError, match=re.escape(f'{tmp_path / "bad.yml"}: {message}')):
        read_yaml(str(tmp_path / 'bad.yml'), mapping=True)


@pytest.mark.slow
def test_a_name_that_is_a_path_is_refused_before_any_folder_is_made(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    opt = demo()
    opt['name'] = '../../escaped'
    write(work, 'x.yml', opt)
    proc = run_python(['-m', 'allinone_basicsr.train', '-opt', 'x.yml'], work, check=False, timeout=300, threads=1)
    assert not (tmp_path / 'escaped').exists() and not (work / 'experiments').exists()
    assert proc.returncode == 2
    assert "option file x.yml: name: '../../escaped' is a path, not a name" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize('phase', ['train', 'val_rain'])
def test_persistent_workers_without_workers_names_both_keys(tmp_path, phase):
    opt = demo()
    opt['datasets']['train']['num_worker_per_gpu'] = 0
    if phase == 'train':
        expected = ('datasets.train.persistent_workers: true needs loader workers, but '
                    'datasets.train.num_worker_per_gpu is 0')
    else:
        opt['datasets']['train']['persistent_workers'] = False
        opt['datasets'][phase]['persistent_workers'] = True
        expected = 'datasets.val_rain.persistent_workers: true needs loader workers, and BasicSR loads val sets without'
    write(tmp_path, 'x.yml', opt)
    proc = run_python(['-m', 'allinone_basicsr.train', '-opt', 'x.yml'], tmp_path, check=False, timeout=300,
                      threads=1)
    assert proc.returncode == 2
    assert expected in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_crop_to_multiple_larger_than_an_image_names_the_option_and_the_image(tmp_path):
    (tmp_path / 'gt').mkdir()
    cv2.imwrite(str(tmp_path / 'gt' / 'small.png'), np.full((20, 24, 3), 128, np.uint8))
    opt = {'name': 'crop', 'model_type': 'AllInOneModel', 'scale': 1, 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'test_1': {'name': 'tiny', 'type': 'AllInOneTestDataset', 'degradation': 'noise',
                                   'dataroot_gt': 'gt', 'noise_sigma': 25, 'crop_to_multiple': 32}},
           'network_g': TINY_NET, 'path': {'pretrain_network_g': None},
           'val': {'save_img': False, 'pbar': False, 'metrics': {'psnr': {'type': 'calculate_psnr_aio'}}}}
    write(tmp_path, 'x.yml', opt)
    proc = run_python(['-m', 'allinone_basicsr.test', '-opt', 'x.yml'], tmp_path, check=False, timeout=300, threads=1)
    assert proc.returncode != 0
    assert ("datasets.test (name 'tiny'): crop_to_multiple 32 is larger than the GT image 'small' (20x24)"
            in proc.stderr), proc.stderr[-2000:]
