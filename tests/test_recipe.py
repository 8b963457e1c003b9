"""The recipe report (``allinone-recipe``): the epoch arithmetic of our training loop, closed-form
learning rates equal to BasicSR's stepped ones, image counts from disk or the public sizes, a clear error for every
inconsistent file, and every options/train_*.yml equal to its row of the protocol table
(allinone_basicsr/tools/protocols.yml), so a copied ``train:`` section fails here."""
import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from allinone_basicsr.models.lr_scheduler import LinearWarmupCosineLR
from allinone_basicsr.models.optimization import scheduler_class
from allinone_basicsr.tools import protocols as pt
from allinone_basicsr.tools import recipe as rc
from allinone_basicsr.utils.resume import ResumableSampler

from basicsr.models.base_model import BaseModel

REPO = Path(__file__).resolve().parents[1]
OPTIONS = REPO / 'options'
TRAIN_FILES = sorted(p.name for p in OPTIONS.glob('train_*.yml'))
PROTOCOLS = pt.load_protocols()


def report(name, root, world_size=None, opt=None):
    return rc.recipe_report(str(OPTIONS / name), world_size=world_size, root=str(root), opt=opt)


def options(name):
    return rc.load_options(str(OPTIONS / name))


# ------------------------------------------------------------------------------------------------ epoch arithmetic
def test_iterations_per_epoch_are_what_the_sampler_and_loader_give():
    assert rc.iterations_per_epoch(142_431, 4, 8) == 4_451  # ceil(142,431 / 4) = 35,608 per rank; // 8
    assert 142_431 // 32 == 4_450  # the naive count the recipes used to have
    assert rc.iterations_per_epoch(2_800, 1, 4) == 700
    assert rc.iterations_per_epoch(5, 4, 2) == 1 and rc.iterations_per_epoch(4, 4, 2) == 0
    for samples, world, batch, ratio in ((142_431, 4, 8, 1), (256_255, 4, 8, 1), (1_001, 3, 7, 2)):
        sampler = ResumableSampler(range(samples), world, world - 1, ratio)  # what train.py builds
        loader = DataLoader(range(samples), batch_size=batch, sampler=sampler, drop_last=True)
        assert len(loader) == sampler.num_samples // batch == rc.iterations_per_epoch(samples, world, batch, ratio)


class _Loop(BaseModel):
    """BasicSR's update_learning_rate on one optimizer and scheduler (no network)."""

    def __init__(self, optimizer, scheduler):
        self.optimizers, self.schedulers = [optimizer], [scheduler]


@pytest.mark.parametrize('scheduler, warmup_iter', [
    ({'type': 'LinearWarmupCosineLR', 'warmup_iter': 5, 'max_iter': 30, 'warmup_start_lr': 1e-5, 'eta_min': 1e-6}, -1),
    ({'type': 'LinearWarmupCosineLR', 'warmup_iter': 5, 'max_iter': 20}, -1),  # max_iter < total_iter: stays at 0
    ({'type': 'CosineAnnealingRestartLR', 'periods': [10, 15], 'restart_weights': [1, 0.5], 'eta_min': 1e-7}, 4),
    ({'type': 'MultiStepRestartLR', 'milestones': [4, 9, 9, 17], 'gamma': 0.5, 'restarts': [12],
      'restart_weights': [0.3]}, -1),
    ({'type': 'CosineAnnealingLR', 'T_max': 25, 'eta_min': 1e-6}, -1),  # a torch scheduler
    ({'type': 'StepLR', 'step_size': 4, 'gamma': 0.5}, -1),
])
def test_closed_form_learning_rates_equal_basicsrs_stepped_ones(scheduler, warmup_iter):
    train_opt = {'optim_g': {'type': 'AdamW', 'lr': 2e-4}, 'scheduler': scheduler, 'warmup_iter': warmup_iter}
    curve = rc.LearningRateCurve(train_opt)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-4)
    args = {k: v for k, v in scheduler.items() if k != 'type'}
    sched_cls = scheduler_class(scheduler['type'])
    loop = _Loop(optimizer, sched_cls(optimizer, **args))
    for iteration in range(1, 26):
        optimizer.step()
        loop.update_learning_rate(iteration, warmup_iter=warmup_iter)
        assert curve.at(iteration) == pytest.approx(loop.get_current_learning_rate()[0], rel=1e-9, abs=1e-15), \
            iteration


def test_chainable_scheduler_after_basicsr_warmup_has_no_closed_form():
    curve = rc.LearningRateCurve({'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'warmup_iter': 10,
                                  'scheduler': {'type': 'MultiStepRestartLR', 'milestones': [20], 'gamma': 0.5}})
    assert curve.at(5) == pytest.approx(5e-4) and curve.at(10) is None and curve.at(30) is None


def test_train_and_recipe_share_one_schedule_check():
    """check_schedule: past the end of the periods is an error for both (BasicSR fails there); periods ending after
    total_iter, or a warm-up as long as the run, are notes for train and errors for the recipe (strict)."""
    from allinone_basicsr.models.optimization import ScheduleError, check_schedule
    train_opt = {'optim_g': {'type': 'AdamW', 'lr': 2e-4}, 'total_iter': 10,
                 'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [4, 4], 'restart_weights': [1, 0.5]}}
    for strict in (False, True):
        with pytest.raises(ScheduleError, match=r'^train.total_iter: 10 is beyond the end of train.scheduler.periods '
                           r'\[4, 4\] \(sum 8\)' if not strict else r'^train.scheduler.periods: \[4, 4\] sum to 8'):
            check_schedule(train_opt, strict=strict)
    longer = dict(train_opt, total_iter=6, warmup_iter=6)
    notes = check_schedule(longer).notes
    assert any(n.startswith('train.scheduler.periods: [4, 4] sum to 8, but train.total_iter is 6') for n in notes)
    assert any(n.startswith('train.warmup_iter: the warm-up (6 iterations) must be shorter') for n in notes)
    with pytest.raises(ScheduleError, match='^train.scheduler.periods'):
        check_schedule(longer, strict=True)
    assert check_schedule(dict(train_opt, total_iter=8)).notes == []


def test_learning_rates_of_the_shipped_recipes(tmp_path):
    promptir = report('train_promptir.yml', tmp_path)
    assert promptir.lr_start == 0 and promptir.lr_warmup_end == pytest.approx(2e-4, rel=1e-12)
    sched = LinearWarmupCosineLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-4), 66_765, 667_650)
    assert promptir.lr_end == sched.lr_at(2e-4, 534_120 - 1)
    assert promptir.lr_end == pytest.approx(2.3e-5, rel=0.02)  # the official run ends near 2.3e-5 (spec §4.1)
    dsanet = report('train_promptdsanet.yml', tmp_path)
    assert dsanet.lr_start == 0 and dsanet.lr_warmup_end == pytest.approx(2e-4, rel=1e-12)
    assert 0 <= dsanet.lr_end < 1e-12  # annealed to 0 at the end of the 200 epochs
    symunet = report('train_symunet.yml', tmp_path)
    assert symunet.lr_start == 1e-3 and symunet.lr_warmup_end is None
    assert symunet.lr_end == pytest.approx(1e-7, rel=1e-6)


# -------------------------------------------------------------------------------------------------- protocol table
def test_protocol_table_has_one_row_per_train_file_and_a_source_for_every_number():
    # 10 main recipes (3- and 5-task per method) + 11 table rows (tables/*.yml): DaAIR single-task ×3, Table 4
    # ablations ×5 and the other column reading's row (a), DaAIR 5-task σ25-only, PromptIR under PromptDSANet's
    # protocol
    assert sorted(PROTOCOLS) == TRAIN_FILES and len(TRAIN_FILES) == 21
    for name, row in PROTOCOLS.items():
        assert row['unit'] in ('epochs', 'iterations'), name
        leaves = [(k, v) for k, v in row.items() if isinstance(v, dict) and k not in pt.PROTOCOL_GROUPS]
        leaves += [(f'{group}.{k}', v) for group in pt.PROTOCOL_GROUPS for k, v in row.get(group, {}).items()]
        assert {k for k, _ in leaves} >= {'world_size', 'effective_batch', 'patch', 'total', 'warmup', 'lr'}, name
        for key, leaf in leaves:
            # a paper label carries its evidence: a quote of the paper's text (tests/test_provenance.py checks it)
            assert set(leaf) == {'value', 'source', 'ref'} | ({'quote'} if leaf['source'] == 'paper' else set()), \
                (name, key)
            assert leaf['source'] in pt.PROTOCOL_SOURCES, (name, key, leaf['source'])
            assert '§' in leaf['ref'], (name, key, leaf['ref'])  # a docs/ section (tests/test_provenance.py)


@pytest.mark.parametrize('name', TRAIN_FILES)
def test_train_file_follows_its_protocol(name, tmp_path):
    r = report(name, tmp_path)  # no data under tmp_path: the public datasets' sizes
    assert {t.source for t in r.tasks} == {rc.PUBLIC}
    mismatches = pt.protocol_mismatches(r, PROTOCOLS[name])
    assert not mismatches, (f'{name} differs from its row of allinone_basicsr/tools/protocols.yml:\n'
                            + '\n'.join(mismatches))
    values = pt.recipe_values(r, PROTOCOLS[name]['unit'])
    if PROTOCOLS[name]['unit'] == 'epochs':  # whole epochs: the iteration counts are exact multiples
        for iterations in (r.total_iter, r.warmup_iter, r.cosine_end_iter):
            assert iterations % r.iters_per_epoch == 0, (name, iterations, r.iters_per_epoch)
    assert values['effective_batch'] == r.world_size * r.batch_size_per_gpu


def test_a_copied_train_section_fails_the_protocol_table(tmp_path):
    opt = options('train_promptdsanet.yml')
    opt['train'] = copy.deepcopy(options('train_daair.yml')['train'])
    mismatches = pt.protocol_mismatches(report('train_promptdsanet.yml', tmp_path, opt=opt),
                                        PROTOCOLS['train_promptdsanet.yml'])
    text = '\n'.join(mismatches)
    assert 'total: file 763.029 epochs, protocol 200 epochs' in text
    assert 'warmup: file 95.3786 epochs, protocol 15 epochs' in text
    assert 'loss_weights.cls_opt: file 0.01, protocol 0.1' in text


def test_a_table_row_that_lost_its_ablation_switch_fails_the_protocol_table(tmp_path):
    opt = options('train_daair_ablation_c.yml')
    del opt['network_g']['controller']  # the arch default (true) comes back: the full model, not row (c)
    mismatches = pt.protocol_mismatches(report('train_daair_ablation_c.yml', tmp_path, opt=opt),
                                        PROTOCOLS['train_daair_ablation_c.yml'])
    text = '\n'.join(mismatches)
    assert ('network.controller: file True, protocol False (assumption: tables.md '
            '§daair-table-4-which-column-is-which') in text
    opt = options('train_daair_ablation_d.yml')  # row (d): no routing loss
    opt['train']['cls_opt'] = {'type': 'TaskClassificationLoss', 'loss_weight': 0.01}
    mismatches = pt.protocol_mismatches(report('train_daair_ablation_d.yml', tmp_path, opt=opt),
                                        PROTOCOLS['train_daair_ablation_d.yml'])
    text = '\n'.join(mismatches)
    assert 'loss_weights.cls_opt: file 0.01, protocol None' in text


def test_table_rows_report_what_they_switch_off(tmp_path):
    r = report('train_daair_ablation_baseline.yml', tmp_path)
    assert 'network_g: DaAIR without agnostic_expert, specialised_experts, controller (switched off)' in r.notes
    assert r.network['agnostic_expert'] is False and 'cls_opt' not in r.losses
    assert not [n for n in report('train_daair.yml', tmp_path).notes if 'switched off' in n]
    opt = options('train_daair_ablation_b.yml')
    opt['train']['cls_opt'] = {'type': 'TaskClassificationLoss', 'loss_weight': 0.01}
    assert 'train.cls_opt is ignored in training: DaAIR without specialised_experts has no routers' in report(
        'train_daair_ablation_b.yml', tmp_path, opt=opt).notes
    for task, classes, samples, iters in (('denoise', ['noise'], 46_296, 5_787), ('derain', ['rain'], 24_000, 3_000),
                                          ('dehaze', ['haze'], 72_135, 9_016)):
        r = report(f'train_daair_{task}.yml', tmp_path)  # single-task: batch 8 on one process (spec §3)
        assert (r.degradation_classes, r.effective_batch, r.samples_per_epoch, r.iters_per_epoch) == (
            classes, 8, samples, iters)
        assert r.total_iter == 120 * iters and r.network['num_experts'] == 1 and 'cls_opt' not in r.losses
    r = report('train_daair_5task_sigma25.yml', tmp_path)
    assert [t.name for t in r.tasks] == ['denoise_25', 'derain', 'dehaze', 'deblur', 'lowlight']
    assert (r.samples_per_epoch, r.iters_per_epoch, r.total_iter) == (205_387, 6_418, 770_160)
    r = report('train_promptir_promptdsanet_protocol.yml', tmp_path)  # PromptDSANet's epoch, PromptIR's network
    assert (r.samples_per_epoch, r.iters_per_epoch, r.total_iter, r.effective_batch) == (2_800, 700, 140_000, 4)
    assert list(r.losses) == ['pixel_opt'] and r.network['decoder'] is True


def test_recipe_numbers(tmp_path):
    r = report('train_promptdsanet.yml', tmp_path)
    assert (r.world_size, r.batch_size_per_gpu, r.effective_batch, r.patch) == (1, 4, 4, 128)
    assert [(t.name, t.images, t.repeat, t.samples) for t in r.tasks] == [
        ('denoise_15', 400, 1, 400), ('denoise_25', 400, 1, 400), ('denoise_50', 400, 1, 400), ('derain', 200, 4, 800),
        ('dehaze', 800, 1, 800)]
    assert r.class_samples == {'noise': 1200, 'rain': 800, 'haze': 800} and r.samples_per_epoch == 2800
    assert (r.iters_per_epoch, r.total_iter, r.warmup_iter, r.cosine_end_iter) == (700, 140_000, 10_500, 140_000)
    assert r.teacher_forcing_iter is None
    assert r.losses['cls_opt'] == {'type': 'TaskClassificationLoss', 'loss_weight': 0.1}
    r = report('train_promptdsanet_3task.yml', tmp_path)
    assert (r.samples_per_epoch, r.iters_per_epoch, r.total_iter, r.warmup_iter, r.cosine_end_iter) == (
        142_431, 4_451, 534_120, 66_765, 667_650)
    r = report('train_promptir_5task.yml', tmp_path)
    assert (r.samples_per_epoch, r.iters_per_epoch, r.total_iter, r.warmup_iter, r.cosine_end_iter) == (
        256_255, 8_008, 960_960, 120_120, 1_201_200)
    assert r.class_shares['lowlight'] == pytest.approx(97_000 / 256_255)
    r = report('train_daair_5task.yml', tmp_path)
    assert (r.samples_per_epoch, r.iters_per_epoch, r.total_iter) == (236_251, 7_382, 885_840)
    assert report('train_promptir.yml', tmp_path, world_size=8).iters_per_epoch == math.ceil(142_431 / 8) // 8


def test_public_sizes_are_what_the_preparation_scripts_write():
    import prepare_3task
    import prepare_5task
    from prep_util import crop_boxes
    sizes = rc.PUBLIC_SIZES
    assert sizes['datasets/train/denoise_gt.lmdb'] == prepare_3task.EXPECTED['denoise']
    assert sizes['datasets/train/rain_lq.lmdb'] == prepare_3task.EXPECTED['derain']
    assert sizes['datasets/train/haze_lq.lmdb'] == prepare_3task.EXPECTED['dehaze']
    assert sizes['datasets/train/haze_lq.lmdb/ots800_keys.txt'] == prepare_3task.OTS_SUBSET
    assert sizes['datasets/train/denoise_gt.lmdb/bsd400_keys.txt'] == 400  # BSD400
    crops = len(crop_boxes(720, 1280, prepare_5task.GOPRO_CROP, prepare_5task.GOPRO_STEP))
    assert sizes['datasets/train/gopro_lq.lmdb'] == prepare_5task.EXPECTED['gopro_train'] * crops == 16_824
    assert sizes['datasets/train/lol_lq.lmdb'] == prepare_5task.EXPECTED['lol_train']
    for path, key in (('test/bsd68', 'bsd68'), ('test/rain100l_lq', 'rain100l'), ('test/sots_outdoor_lq', 'sots')):
        assert sizes[f'datasets/{path}.lmdb'] == prepare_3task.EXPECTED[key]
    assert sizes['datasets/test/gopro_lq.lmdb'] == prepare_5task.EXPECTED['gopro_test']
    assert sizes['datasets/test/lol_lq.lmdb'] == prepare_5task.EXPECTED['lol_test']


# --------------------------------------------------------------------------------------------------- data on disk
@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    import prepare_5task
    from fake_raw import make_raw_5task
    root = tmp_path_factory.mktemp('recipe_data')
    make_raw_5task(str(root / 'raw'))
    prepare_5task.main(['--raw', str(root / 'raw'), '--out', str(root / 'datasets'), '--workers', '1'])
    return root


def test_counts_come_from_the_data_on_disk(prepared):
    r = report('train_symunet_5task.yml', prepared)
    # fake tree: 5 listed denoise images, 3 rain pairs, 3 hazy images (2 clean photos), 7 GoPro crops, 2 LOL pairs
    assert [(t.name, t.images, t.source) for t in r.tasks] == [
        ('denoise_15', 5, 'disk'), ('denoise_25', 5, 'disk'), ('denoise_50', 5, 'disk'), ('derain', 3, 'disk'),
        ('dehaze', 3, 'disk'), ('deblur', 7, 'disk'), ('lowlight', 2, 'disk')]
    assert r.samples_per_epoch == 3 * 15 + 3 * 120 + 3 + 7 + 2 * 200
    assert [(v.name, v.images, v.source) for v in r.val_sets] == [
        ('BSD68_sigma25', 2, 'disk'), ('Rain100L', 2, 'disk'), ('SOTS_outdoor', 1, 'disk'), ('GoPro', 1, 'disk'),
        ('LOL_v1', 1, 'disk')]
    r = report('train_promptdsanet.yml', prepared)  # the key lists (meta_info_file) of the paper's protocol
    assert [(t.name, t.images, t.counted) for t in r.tasks] == [
        ('denoise_15', 3, 'datasets/train/denoise_gt.lmdb/bsd400_keys.txt'),
        ('denoise_25', 3, 'datasets/train/denoise_gt.lmdb/bsd400_keys.txt'),
        ('denoise_50', 3, 'datasets/train/denoise_gt.lmdb/bsd400_keys.txt'),
        ('derain', 3, 'datasets/train/rain_lq.lmdb'), ('dehaze', 3, 'datasets/train/haze_lq.lmdb/ots800_keys.txt')]
    with pytest.raises(rc.RecipeError, match=r'datasets.train.batch_size_per_gpu: 4 is more than the 3 samples per '
                                             r'rank \(24 samples on 8 ranks\)'):
        report('train_promptdsanet.yml', prepared, world_size=8)


def test_counts_mix_disk_and_public_sizes_and_name_unknown_paths(prepared, tmp_path):
    opt = options('train_daair_5task.yml')
    opt['datasets']['train']['tasks'][5]['dataroot_lq'] = 'datasets/train/gopro_elsewhere.lmdb'
    with pytest.raises(rc.RecipeError, match=r"datasets.train.tasks\[5\].dataroot_lq \(task 'deblur'\): no data at "
                                             r'.*datasets/train/gopro_elsewhere.lmdb and no public dataset size'):
        report('train_daair_5task.yml', prepared, opt=opt)
    opt['datasets']['train']['tasks'][5]['dataroot_lq'] = 'datasets/train/gopro_lq.lmdb'
    (tmp_path / 'datasets/train').mkdir(parents=True)
    (tmp_path / 'datasets/train/rain_lq.lmdb').symlink_to(prepared / 'datasets/train/rain_lq.lmdb')
    r = report('train_daair_5task.yml', tmp_path, opt=opt)
    assert [(t.name, t.images, t.source) for t in r.tasks][3:5] == [('derain', 3, 'disk'),
                                                                    ('dehaze', 72_135, 'public size')]


# ----------------------------------------------------------------------------------------------------- bad files
def _expect_error(name, tmp_path, pattern, edit, world_size=None):
    opt = options(name)
    edit(opt)
    with pytest.raises(rc.RecipeError, match=pattern):
        report(name, tmp_path, world_size=world_size, opt=opt)


def test_inconsistent_files_fail_naming_the_option(tmp_path):
    def sched(**values):
        return lambda opt: opt['train']['scheduler'].update(values)

    _expect_error('train_promptir.yml', tmp_path, r'^train.scheduler.warmup_iter: the warm-up \(534,120 iterations\) '
                  r'must be shorter than train.total_iter \(534,120\)', sched(warmup_iter=534_120))
    _expect_error('train_promptir.yml', tmp_path, r'^train.scheduler.warmup_iter: 667,650 must be below '
                  r'train.scheduler.max_iter 667,650', sched(warmup_iter=667_650))
    _expect_error('train_symunet.yml', tmp_path, r'^train.warmup_iter: the warm-up \(300,000 iterations\) must be '
                  r'shorter than train.total_iter', lambda opt: opt['train'].update(warmup_iter=300_000))
    _expect_error('train_symunet.yml', tmp_path, r'^train.scheduler.periods: \[200000, 50000\] sum to 250,000, but '
                  r'train.total_iter is 300,000', sched(periods=[200_000, 50_000], restart_weights=[1, 0.5]))
    _expect_error('train_daair.yml', tmp_path, r"^datasets.train.degradation_classes: class\(es\) \['blur'\] have no "
                  r'task', lambda opt: opt['datasets']['train']['degradation_classes'].append('blur'))
    _expect_error('train_daair.yml', tmp_path, r"^datasets.train.tasks\[3\].degradation: 'snow' \(task 'derain'\) is "
                  r'not one of datasets.train.degradation_classes',
                  lambda opt: opt['datasets']['train']['tasks'][3].update(degradation='snow'))
    _expect_error('train_daair.yml', tmp_path, r"^datasets.val_sots.degradation: 'blur' \(validation set "
                  r"'SOTS_outdoor'\) is not one of datasets.train.degradation_classes \['noise', 'rain', 'haze'\]",
                  lambda opt: opt['datasets']['val_sots'].update(degradation='blur'))
    _expect_error('train_promptdsanet.yml', tmp_path, r'^datasets.train.batch_size_per_gpu: 4 is more than the 3 '
                  r'samples per rank \(2,800 samples on 1000 ranks\)', lambda opt: None, world_size=1000)
    _expect_error('train_symunet.yml', tmp_path, r"^datasets.train.tasks\[0\].dataroot_gt \(task 'denoise_15'\): no "
                  r'data at .*datasets/train/elsewhere.lmdb',
                  lambda opt: opt['datasets']['train']['tasks'][0].update(dataroot_gt='datasets/train/elsewhere.lmdb'))
    _expect_error('train_symunet.yml', tmp_path, r"^num_gpu: 'auto'.*--world-size",
                  lambda opt: opt.update(num_gpu='auto'))
    _expect_error('train_symunet.yml', tmp_path, r"^train.optim_g: AdamW: .*betaz",
                  lambda opt: opt['train']['optim_g'].update(betaz=[0.9, 0.99]))


def test_cosine_end_before_total_is_allowed(tmp_path):
    opt = options('train_promptir.yml')
    opt['train']['scheduler']['max_iter'] = 500_000
    r = report('train_promptir.yml', tmp_path, opt=opt)
    assert r.lr_end == 0 and any('the last 34,120 iterations stay there' in note for note in r.notes)


# ----------------------------------------------------------------------------------------------------------- CLI
def test_cli_reports_every_train_file_and_fails_on_a_bad_one(tmp_path):
    bad = tmp_path / 'train_bad.yml'
    opt = options('train_symunet.yml')
    opt['train']['total_iter'] = 250_000
    bad.write_text(yaml.safe_dump(json.loads(json.dumps(opt))))  # plain dicts (safe_dump writes 1e-7 as 1.0e-07)
    files = [str(OPTIONS / name) for name in TRAIN_FILES]
    proc = subprocess.run([sys.executable, '-m', 'allinone_basicsr.tools.recipe', *files, str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    reports = proc.stdout.split('Recipe of ')[1:]
    assert len(reports) == len(TRAIN_FILES)
    for name, text in zip(TRAIN_FILES, reports):
        row = PROTOCOLS[name]
        world, batch = row['world_size']['value'], row['effective_batch']['value']
        assert text.startswith(str(OPTIONS / name)), name
        assert 'effective batch' in text and f'{world} × {batch // world} per GPU = {batch} ' in text, name
        assert 'iterations per epoch' in text and 'protocol table (protocols.yml' in text and 'every number matches' \
            in text, name
    assert f'error: {bad}: train.scheduler.periods: [300000] sum to 300,000, but train.total_iter is 250,000' \
        in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_cli_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rc.main([str(OPTIONS / 'train_promptir.yml'), '--json']) == 0
    data = json.loads(capsys.readouterr().out)[str(OPTIONS / 'train_promptir.yml')]
    assert (data['effective_batch'], data['iters_per_epoch'], data['total_epochs']) == (32, 4_451, 120.0)
    assert data['class_shares']['rain'] == pytest.approx(24_000 / 142_431)
    assert data['tasks'][0] == {'name': 'denoise_15', 'degradation': 'noise', 'images': 5144, 'source': 'public size',
                                'counted': 'datasets/train/denoise_gt.lmdb', 'repeat': 3, 'samples': 15432}


def test_cls_opt_on_a_net_without_task_logits_is_reported_for_any_arch(tmp_path):
    """The arch says, before it is built, whether its configuration gives task logits (``missing_task_logits``);
    the report and the built net agree, for every arch."""
    from allinone_basicsr.archs.arch_util import missing_task_logits
    from allinone_basicsr.archs.daair_arch import DaAIR
    from allinone_basicsr.archs.promptdsa_arch import PromptDSANet
    from allinone_basicsr.archs.symunet_arch import SymUNet
    cls_opt = {'type': 'TaskClassificationLoss', 'loss_weight': 0.1}
    opt = options('train_symunet.yml')
    opt['train']['cls_opt'] = cls_opt
    assert 'train.cls_opt is ignored in training: SymUNet has no task logits' in report(
        'train_symunet.yml', tmp_path, opt=opt).notes
    opt = options('train_promptdsanet.yml')
    opt['network_g']['prompt_net'] = None
    assert 'train.cls_opt is ignored in training: PromptDSANet without a prompt net has no task logits' in report(
        'train_promptdsanet.yml', tmp_path, opt=opt).notes
    assert not [n for n in report('train_promptdsanet.yml', tmp_path).notes if 'cls_opt' in n]
    assert missing_task_logits(SymUNet, {}) == 'has no task logits'
    tiny = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1])
    for arch, options_, logits in ((DaAIR, dict(tiny, num_dec_blocks=[1, 1, 1], rank_ratio=4), True),
                                   (DaAIR, dict(tiny, num_dec_blocks=[1, 1, 1], rank_ratio=4, controller=False,
                                                specialised_experts=False), False),
                                   (PromptDSANet, dict(tiny, prompt_net=None), False)):
        assert (missing_task_logits(arch, options_) is None) == logits == arch(**options_).has_task_logits
