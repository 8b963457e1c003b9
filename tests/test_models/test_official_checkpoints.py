"""Official releases load and score through our test pipeline, SE-SymUNet's embedded CLIP included (issue 22).

Every file is built from our own random weights at tiny configs in the official layout (see ``test_convert.py``):
BasicSR's ``{'params': ...}`` (official SymUNet), the official SE-SymUNet file with the Hugging Face CLIPModel under
``clip_model.*``, PromptIR's Lightning ``model.ckpt``. They load through ``path.pretrain_network_g`` as they are,
and after ``python -m allinone_basicsr.tools.convert`` every ``options/test_*.yml`` scores a converted file with the
same numbers.
"""
import argparse
import csv
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_util import run_python
from test_convert import (TINY_CLIP, TINY_NETS, clip_tower, official_checkpoint, output, perturb, tiny_net,
                          write_official, write_open_clip_file)

from allinone_basicsr.archs.clip_tokens import CLIPTokenizer, hf_clip_to_open_clip_visual, tower_differences

from basicsr.models import build_model

pytestmark = pytest.mark.filterwarnings('ignore:CLIP .* has random weights')

REPO = Path(__file__).resolve().parents[2]
OPTION_FILES = sorted(p.name for p in (REPO / 'options').glob('test_*.yml'))
OFFICIAL_RELEASES = ('test_symunet.yml', 'test_se_symunet.yml', 'test_promptir.yml')  # scored as released, too
# what the official SE file of test_convert.hf_clip_model_state holds for the tiny 2-layer tower
SE_LOG = ('SESymUNet: the checkpoint embeds the official CLIPModel (48 clip_model.* keys): vision tower and '
          'visual_projection, 40 keys -> 32 tensors of the open_clip ViT-L-14-quickgelu visual tower; dropped the '
          'text tower (7 keys: text_model.*, text_projection, logit_scale) and 1 position_ids buffer(s)')


def build(path, arch, **options):
    """AllInOneModel as the test pipeline builds it, ``path`` as ``path.pretrain_network_g`` (strict)."""
    return build_model({
        'name': 'official', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
        'rank': 0, 'network_g': dict(TINY_NETS[arch], type=arch, **options),
        'path': {'pretrain_network_g': str(path), 'strict_load_g': True}})


def model_output(model, seed=3, shape=(1, 3, 40, 52)):
    model.feed_data({'lq': torch.rand(shape, generator=torch.Generator().manual_seed(seed))})
    model.test()
    return model.output


@pytest.fixture
def info_log(caplog):
    caplog.set_level(logging.INFO, logger='basicsr')
    return caplog


def test_basicsr_saved_official_symunet_loads(tmp_path):
    source, _ = write_official(tmp_path / 'net_g_latest.pth', 'SymUNet')
    assert set(torch.load(tmp_path / 'net_g_latest.pth', weights_only=True)) == {'params'}
    assert torch.equal(model_output(build(tmp_path / 'net_g_latest.pth', 'SymUNet')), output(source))


def test_promptir_lightning_release_loads(tmp_path):
    source = tiny_net('PromptIR')
    ckpt = official_checkpoint('lightning', source.state_dict())
    ckpt.update(hyper_parameters=argparse.Namespace(lr=2e-4, epochs=120), hparams_name='opt')
    torch.save(ckpt, tmp_path / 'model.ckpt')
    assert torch.equal(model_output(build(tmp_path / 'model.ckpt', 'PromptIR')), output(source))


def test_official_se_symunet_loads_with_its_embedded_clip(tmp_path, info_log):
    """No CLIP file: the tower comes from the checkpoint (converted from the HF layout), the restorer loads strictly,
    the output equals the saved network's; the log says what was found and used; the network's own state dict
    stays CLIP-free; a second model of the same file shares the tower."""
    source, visual = write_official(tmp_path / 'net_g_latest.pth', 'SESymUNet')
    model = build(tmp_path / 'net_g_latest.pth', 'SESymUNet')
    assert torch.equal(model_output(model), output(source))
    assert f'{SE_LOG}; using it as the frozen CLIP tower (network_g.clip_pretrained is not set).' in info_log.text
    tokenizer = model.net_g.clip_tokenizer()
    assert tower_differences(tokenizer.tower, visual) == []
    assert not any(k.startswith('clip_model') for k in model.net_g.state_dict())
    assert build(tmp_path / 'net_g_latest.pth', 'SESymUNet').net_g.clip_tokenizer() is tokenizer

    # the embedded CLIP is what makes the output equal: the restorer alone (random CLIP) gives another one
    restorer = {k: v for k, v in torch.load(tmp_path / 'net_g_latest.pth')['params'].items()
                if not k.startswith('clip_model.')}
    torch.save({'params': restorer}, tmp_path / 'restorer_only.pth')
    assert not torch.equal(model_output(build(tmp_path / 'restorer_only.pth', 'SESymUNet')), output(source))


def test_official_se_symunet_checks_clip_pretrained(tmp_path, info_log):
    """With ``clip_pretrained`` the embedded tower must equal it: equal loads (and says so), different is refused."""
    source, visual = write_official(tmp_path / 'net_g_latest.pth', 'SESymUNet')
    same = write_open_clip_file(visual, tmp_path / 'same.bin')
    model = build(tmp_path / 'net_g_latest.pth', 'SESymUNet', clip_pretrained=same)
    assert torch.equal(model_output(model), output(source))
    assert f'{SE_LOG}; checked equal to network_g.clip_pretrained ({same}), which is used.' in info_log.text

    other = write_open_clip_file(clip_tower(seed=9), tmp_path / 'other.bin')
    with pytest.raises(ValueError, match=r'network_g.clip_pretrained \(.*other.bin\) differs from the CLIP embedded '
                       r'in the checkpoint: 32 of 32 tensors \(class_embedding: max \|diff\|'):
        build(tmp_path / 'net_g_latest.pth', 'SESymUNet', clip_pretrained=other)


def test_official_se_symunet_clip_must_fit_the_tower(tmp_path):
    write_official(tmp_path / 'net_g_latest.pth', 'SESymUNet')
    with pytest.raises(ValueError, match=r'(?s)embedded CLIP weights do not fit the ViT-L-14-quickgelu visual tower .*'
                       r'clip_vision_cfg.*Unexpected key\(s\).*transformer\.resblocks\.1\.'):
        build(tmp_path / 'net_g_latest.pth', 'SESymUNet', clip_vision_cfg=dict(TINY_CLIP, layers=1))


def test_tokens_equal_transformers_clip_vision_model():
    """The converted tower's tokens are those of the vision model of a Hugging Face ``CLIPModel`` (what the official
    network holds as ``clip_model``; its state dict is the official checkpoint's ``clip_model.*`` part, text tower
    included): ``last_hidden_state``, the official features."""
    transformers = pytest.importorskip('transformers')
    vision = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                  patch_size=7, hidden_act='quick_gelu')
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPConfig(vision_config=vision, text_config=text, projection_dim=768)
    hf = perturb(transformers.CLIPModel(config), seed=4).eval()
    visual, counts = hf_clip_to_open_clip_visual(hf.state_dict())
    assert counts['tensors'] == 32 and counts['text'] > 0  # the text tower is counted and dropped
    tokenizer = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP, state=visual)
    img = torch.rand(2, 3, 40, 60, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = hf.vision_model(pixel_values=tokenizer.preprocess(img)).last_hidden_state
    got = tokenizer(img)
    assert got.shape == want.shape == (2, 17, 64)
    assert (got - want).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------- test pipeline
DRIVER = """
import json, runpy, sys
for argv in json.load(open(sys.argv[1])):  # python -m <module> <args>, one after the other in this process
    sys.argv = list(argv)
    try:
        runpy.run_module(argv[0], run_name='__main__', alter_sys=True)
    except SystemExit as exit:
        if exit.code not in (None, 0):
            raise
"""


def write_lmdb(path, seed, shape=(32, 48)):
    """A one-image LMDB (key ``img0``) as BasicSR's ``make_lmdb_from_imgs`` writes it."""
    import contextlib
    import io

    import cv2
    import numpy as np

    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    png = path.parent / f'{path.name}.png'
    png.mkdir(parents=True)
    img = np.random.default_rng(seed).integers(0, 256, size=shape + (3, ), dtype=np.uint8)
    assert cv2.imwrite(str(png / 'img0.png'), img)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        make_lmdb_from_imgs(str(png), str(path), ['img0.png'], ['img0'])


def tiny_network(opt):
    """The option file's ``network_g`` at the tiny size of its arch (its classes / experts and protocol kept),
    external weight files unset."""
    arch = opt['network_g']['type']
    network = dict(opt['network_g'], **TINY_NETS[arch])
    for key in ('clip_pretrained', 'prompt_net_pretrained'):
        if key in network:
            network[key] = None
    return arch, network


def scored_run(opt, name, network, checkpoint):
    return dict(opt, name=name, num_gpu=0, network_g=network, path=dict(opt['path'], pretrain_network_g=checkpoint),
                val=dict(opt['val'], pbar=False))


def read_table(path):
    with open(path) as f:
        return {row['test_set']: row for row in csv.DictReader(f)}


def test_each_test_option_file_scores_a_converted_file(tmp_path):
    """For every ``options/test_*.yml``, at its arch's tiny size on one-image LMDBs at its own dataset paths: a file in
    the method's released layout (our own BasicSR file for DaAIR and PromptDSANet, which have no release) goes
    through the convert tool (``--opt``), and ``python -m allinone_basicsr.test`` builds the file's
    datasets and network from the converted file and writes the table of all its sets. The three released layouts
    are also scored as they are (SE-SymUNet with no CLIP file): the same numbers as after conversion."""
    roots = {d[k] for name in OPTION_FILES for d in yaml.safe_load((REPO / 'options' / name).read_text())['datasets']
             .values() for k in ('dataroot_gt', 'dataroot_lq') if k in d}
    for i, root in enumerate(sorted(roots)):
        write_lmdb(tmp_path / root, seed=i)

    commands, runs = [], {}
    for i, name in enumerate(OPTION_FILES):
        opt = yaml.safe_load((REPO / 'options' / name).read_text())
        arch, network = tiny_network(opt)
        stem = name[:-len('.yml')]
        official, lean = tmp_path / 'official' / f'{stem}.pth', tmp_path / 'lean' / f'{stem}.pth'
        official.parent.mkdir(exist_ok=True)
        lean.parent.mkdir(exist_ok=True)
        write_official(official, arch, seed=i, **{k: v for k, v in network.items() if k != 'type'})
        converted = dict(network)
        if arch == 'SESymUNet':
            converted['clip_pretrained'] = str(lean.parent / f'{stem}_clip_visual.pth')
        run_file = tmp_path / f'{stem}.yml'
        run_file.write_text(yaml.safe_dump(scored_run(opt, f'{opt["name"]}_converted', converted, str(lean))))
        commands += [['allinone_basicsr.tools.convert', str(official), str(lean), '--opt', str(run_file)],
                     ['allinone_basicsr.test', '-opt', str(run_file)]]
        runs[f'{opt["name"]}_converted'] = (arch, lean, opt)
        if name in OFFICIAL_RELEASES:
            run_file = tmp_path / f'{stem}_official.yml'
            run_file.write_text(yaml.safe_dump(scored_run(opt, f'{opt["name"]}_official', network, str(official))))
            commands.append(['allinone_basicsr.test', '-opt', str(run_file)])
            runs[f'{opt["name"]}_official'] = (arch, official, opt)
    (tmp_path / 'commands.json').write_text(json.dumps(commands))

    proc = run_python(['-c', DRIVER, 'commands.json'], cwd=tmp_path, timeout=300, threads=1)
    log = proc.stdout + proc.stderr
    assert log.count('convert: checked: ') == len(OPTION_FILES)
    for run, (arch, checkpoint, opt) in runs.items():
        assert f'Loading {arch} from {checkpoint} (strict=True).' in log, run
        table = read_table(tmp_path / 'results' / run / 'metrics.csv')
        assert set(table) == {d['name'] for d in opt['datasets'].values()} | {'Average'}, run
        assert all(math.isfinite(float(row['psnr'])) for row in table.values()), run
    assert f'{SE_LOG}; using it as the frozen CLIP tower' in log
    for name in OFFICIAL_RELEASES:
        run = yaml.safe_load((REPO / 'options' / name).read_text())['name']
        columns = ('psnr', 'ssim', 'input_psnr')
        assert {s: [r[c] for c in columns] for s, r in read_table(tmp_path / 'results' / f'{run}_official'
                                                                  / 'metrics.csv').items()} == \
            {s: [r[c] for c in columns] for s, r in read_table(tmp_path / 'results' / f'{run}_converted'
                                                               / 'metrics.csv').items()}, name
