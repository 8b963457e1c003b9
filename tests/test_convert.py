"""``python -m allinone_basicsr.tools.convert``: every supported layout to our lean files, losslessly.

The layouts are built here from our own random weights at tiny configs (nothing is downloaded): BasicSR's
``{'params': ...}`` as its ``save_network`` writes it (the official SymUNet code's format), ``params_ema``, PromptIR's
Lightning ``model.ckpt`` (``state_dict`` with the ``net.`` prefix, plus Lightning's metadata) and the official
SE-SymUNet file, whose ``params`` also hold the whole Hugging Face CLIPModel under ``clip_model.`` (vision and text
towers). The builders are shared with ``test_models/test_official_checkpoints.py``.
"""
import re

import pytest
import torch
import yaml

from allinone_basicsr.archs.clip_tokens import CLIPTokenizer
from allinone_basicsr.tools.common import UsageError
from allinone_basicsr.tools.convert import main as convert
from allinone_basicsr.utils.checkpoint import extract_state_dict, load_checkpoint

from basicsr.utils.registry import ARCH_REGISTRY

pytestmark = pytest.mark.filterwarnings('ignore:CLIP .* has random weights')

CLIP_MODEL = 'openai/clip-vit-large-patch14'  # the official option file's name (= open_clip ViT-L-14-quickgelu)
TINY_CLIP = {'image_size': 28, 'patch_size': 7, 'width': 64, 'layers': 2, 'head_width': 32}
TINY_NETS = {
    'SymUNet': dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1]),
    'SESymUNet': dict(width=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1, dec_blk_nums=[1, 1, 1],
                      cross_attn_inner_dims=[32, 32, 64], cross_attn_heads=[1, 2, 4], middle_cross_attn_inner_dim=64,
                      middle_cross_attn_heads=4, patch_sizes=[4, 4, 2], middle_patch_size=2,
                      clip_model_name=CLIP_MODEL, clip_vision_cfg=TINY_CLIP),
    'PromptIR': dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 4, 8],
                     prompt_dims=[8, 16, 40], prompt_sizes=[16, 8, 4]),
    'DaAIR': dict(dim=8, num_blocks=[1, 1, 1, 2], num_dec_blocks=[1, 2, 1], num_refinement_blocks=1,
                  heads=[1, 2, 2, 4], rank_ratio=4, expert_kernel_size=5),
    'PromptDSANet': dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 4, 8],
                         prompt_dims=[8, 16, 40], prompt_sizes=[16, 8, 4], prompt_net='resnet18'),
}
# the layout each method's released (or, without a release, our own) checkpoint has
LAYOUTS = {'SymUNet': 'basicsr', 'SESymUNet': 'se_official', 'PromptIR': 'lightning', 'DaAIR': 'basicsr',
           'PromptDSANet': 'basicsr'}


def perturb(module, seed):
    """Move every weight off its initial value (SE-SymUNet's alpha = 1e-4 would hide its cross-attention)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
            if p.ndim == 0:
                p.fill_(0.5)
    return module


def tiny_net(arch, seed=0, **options):
    """The tiny ``arch`` with random weights, in eval mode (``options`` override the tiny config)."""
    return perturb(ARCH_REGISTRY.get(arch)(**dict(TINY_NETS[arch], **options)), seed).eval()


def clip_tower(seed=1):
    """A tiny open_clip visual tower's weights, away from the seeded random tower ``clip_pretrained: ~`` builds."""
    tower = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP).tower
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in tower.state_dict().items()}


def write_open_clip_file(visual, path):
    """``visual`` as open_clip's CLIP files hold it (``visual.*`` keys; a text key too)."""
    state = {f'visual.{k}': v for k, v in visual.items()}
    state['token_embedding.weight'] = torch.zeros(49, 16)
    torch.save(state, path)
    return str(path)


def hf_clip_model_state(visual, seed=2):
    """A Hugging Face ``CLIPModel`` state dict whose vision half holds the open_clip tower ``visual``, written out
    here independently of the package's converter (its inverse): patch conv, class and position embeddings,
    ``pre_layrnorm`` (sic), per layer q/k/v split from ``in_proj``, ``out_proj``, ``layer_norm1/2``, ``mlp.fc1/fc2``,
    ``post_layernorm``, ``visual_projection`` = ``proj`` transposed; ``position_ids`` buffers (older transformers
    save them) and a small text tower with ``text_projection`` and ``logit_scale``."""
    gen = torch.Generator().manual_seed(seed)
    hf = {
        'logit_scale': torch.tensor(2.6592),
        'text_model.embeddings.token_embedding.weight': torch.randn(49, 16, generator=gen),
        'text_model.embeddings.position_embedding.weight': torch.randn(7, 16, generator=gen),
        'text_model.embeddings.position_ids': torch.arange(7)[None],
        'text_model.encoder.layers.0.self_attn.q_proj.weight': torch.randn(16, 16, generator=gen),
        'text_model.final_layer_norm.weight': torch.ones(16),
        'vision_model.embeddings.class_embedding': visual['class_embedding'],
        'vision_model.embeddings.patch_embedding.weight': visual['conv1.weight'],
        'vision_model.embeddings.position_embedding.weight': visual['positional_embedding'],
        'vision_model.embeddings.position_ids': torch.arange(len(visual['positional_embedding']))[None],
    }
    for kind in ('weight', 'bias'):
        hf[f'vision_model.pre_layrnorm.{kind}'] = visual[f'ln_pre.{kind}']
        hf[f'vision_model.post_layernorm.{kind}'] = visual[f'ln_post.{kind}']
    layers = sum(k.endswith('.ln_1.weight') for k in visual)
    for i in range(layers):
        ours, theirs = f'transformer.resblocks.{i}.', f'vision_model.encoder.layers.{i}.'
        for kind in ('weight', 'bias'):
            for name, part in zip('qkv', visual[f'{ours}attn.in_proj_{kind}'].chunk(3)):
                hf[f'{theirs}self_attn.{name}_proj.{kind}'] = part.clone()
            for hf_name, name in (('self_attn.out_proj', 'attn.out_proj'), ('layer_norm1', 'ln_1'),
                                  ('layer_norm2', 'ln_2'), ('mlp.fc1', 'mlp.c_fc'), ('mlp.fc2', 'mlp.c_proj')):
                hf[f'{theirs}{hf_name}.{kind}'] = visual[f'{ours}{name}.{kind}']
    hf['visual_projection.weight'] = visual['proj'].t().contiguous()
    hf['text_projection.weight'] = torch.randn(visual['proj'].shape[1], 16, generator=gen)
    return hf


def official_checkpoint(layout, state, visual=None):
    """A checkpoint of ``state`` (a network state dict) in ``layout``."""
    if layout == 'basicsr':  # BasicSR's save_network: {'params': state dict, 'module.' removed, on the CPU}
        return {'params': state}
    if layout == 'params_ema':
        return {'params': {k: torch.zeros_like(v) for k, v in state.items()}, 'params_ema': state}
    if layout == 'lightning':  # the official PromptIR model.ckpt (Lightning 2.0.1)
        return {'epoch': 119, 'global_step': 534120, 'pytorch-lightning_version': '2.0.1',
                'state_dict': {f'net.{k}': v for k, v in state.items()},
                'loops': {'fit_loop': {'epoch_progress': {'total': {'ready': 120, 'completed': 119}}}},
                'callbacks': {'ModelCheckpoint': {'dirpath': 'train_ckpt', 'kth_value': torch.tensor(float('inf'))}},
                'optimizer_states': [{'state': {0: {'step': torch.tensor(534120.)}},
                                      'param_groups': [{'lr': 2.3e-05, 'betas': (0.9, 0.999), 'params': [0]}]}],
                'lr_schedulers': [{'warmup_epochs': 15, 'max_epochs': 150, 'last_epoch': 119}]}
    if layout == 'se_official':  # BasicSR's save_network of the official SESymUNet: CLIPModel inside
        return {'params': dict(state, **{f'clip_model.{k}': v for k, v in hf_clip_model_state(visual).items()})}
    raise ValueError(layout)


def write_official(path, arch, seed=0, layout=None, **options):
    """Save a tiny random ``arch`` as its official layout; returns the network that was saved (its CLIP tower from
    an open_clip file beside ``path``, for SE-SymUNet) and the CLIP tower's weights (or None)."""
    visual = None
    if arch == 'SESymUNet':
        visual = clip_tower(seed + 1)
        options['clip_pretrained'] = write_open_clip_file(visual, f'{path}.source_clip.bin')
    net = tiny_net(arch, seed, **options)
    torch.save(official_checkpoint(layout or LAYOUTS[arch], net.state_dict(), visual), path)
    return net, visual


def output(net, seed=3, shape=(1, 3, 40, 52)):
    with torch.no_grad():
        return net(torch.rand(shape, generator=torch.Generator().manual_seed(seed)))


def load_as_the_package_does(arch, path, param_key='params', **options):
    """A fresh tiny ``arch`` loaded from ``path`` the way ``path.pretrain_network_g`` and ``restore`` read files."""
    net = ARCH_REGISTRY.get(arch)(**dict(TINY_NETS[arch], **options)).eval()
    net.load_state_dict(extract_state_dict(load_checkpoint(str(path)), param_key, str(path)), strict=True)
    return net


@pytest.mark.parametrize('arch, layout', [('SymUNet', 'basicsr'), ('SymUNet', 'params_ema'),
                                          ('PromptIR', 'lightning'), ('SESymUNet', 'se_official')])
def test_convert_writes_lean_files_losslessly(tmp_path, capsys, arch, layout):
    """OUT is ``{'params': ...}`` with exactly the network's tensors; an SE file also gives ``OUT_clip_visual.pth``
    (open_clip ``visual.*`` keys, exactly the embedded tower); the output before (official file) and after
    (converted files) is bit-identical."""
    source, visual = write_official(tmp_path / 'official.pth', arch, layout=layout)
    param_key = 'params_ema' if layout == 'params_ema' else 'params'
    convert([str(tmp_path / 'official.pth'), str(tmp_path / 'lean.pth'), '--param-key', param_key])
    printed = capsys.readouterr().out

    lean = torch.load(tmp_path / 'lean.pth', weights_only=True)
    assert set(lean) == {'params'}
    want = source.state_dict()
    assert list(lean['params']) == list(want)  # the network's own keys only: no clip_model.*, no net. prefix
    assert all(torch.equal(lean['params'][k], v) for k, v in want.items())
    if layout == 'basicsr':  # the module versions torch keeps with a state dict are kept too
        assert lean['params']._metadata == want._metadata
    before = output(load_as_the_package_does(arch, tmp_path / 'official.pth', param_key))
    assert torch.equal(before, output(source))

    clip_file = tmp_path / 'lean_clip_visual.pth'
    options = {}
    if arch == 'SESymUNet':
        assert 'dropped the text tower (7 keys)' in printed and f'clip_pretrained: {clip_file}' in printed
        clip = torch.load(clip_file, weights_only=True)
        assert set(clip) == {f'visual.{k}' for k in visual}
        assert all(torch.equal(clip[f'visual.{k}'], v) for k, v in visual.items())
        options['clip_pretrained'] = str(clip_file)
    else:
        assert not clip_file.exists()
    after = output(load_as_the_package_does(arch, tmp_path / 'lean.pth', **options))
    assert torch.equal(after, before)


def test_convert_checks_the_result_against_an_option_file(tmp_path, capsys):
    """``--opt`` builds that file's network, loads OUT strictly and the CLIP file into its tower; a network_g that
    does not fit the weights fails with the first mismatching keys."""
    write_official(tmp_path / 'official.pth', 'SESymUNet')
    opt = tmp_path / 'test.yml'
    opt.write_text(yaml.safe_dump({'network_g': dict(TINY_NETS['SESymUNet'], type='SESymUNet',
                                                     clip_pretrained='pretrained/clip/absent.bin')}))
    convert([str(tmp_path / 'official.pth'), str(tmp_path / 'lean.pth'), '--opt', str(opt)])
    assert 'checked: ' in capsys.readouterr().out
    convert([str(tmp_path / 'official.pth'), str(tmp_path / 'lean2.pth'), '--arch', 'SESymUNet', '--opt', str(opt)])

    opt.write_text(yaml.safe_dump({'network_g': dict(TINY_NETS['SESymUNet'], type='SESymUNet', width=16)}))
    assert convert([str(tmp_path / 'official.pth'), str(tmp_path / 'lean.pth'), '--opt', str(opt)]) == 1
    assert re.search(r'convert: check failed: .*shape mismatch', capsys.readouterr().err)
    opt.write_text(yaml.safe_dump({'network_g': dict(TINY_NETS['SESymUNet'], type='SESymUNet',
                                                     clip_vision_cfg=dict(TINY_CLIP, layers=1))}))
    assert convert([str(tmp_path / 'official.pth'), str(tmp_path / 'lean.pth'), '--opt', str(opt)]) == 1
    assert re.search(r'convert: check failed: .*do not fit', capsys.readouterr().err)
    assert convert([str(tmp_path / 'official.pth'), str(tmp_path / 'lean.pth'), '--arch', 'SymUNet']) == 1
    assert re.search(r'convert: check failed: .*has no CLIP tower', capsys.readouterr().err)


def test_convert_names_what_it_cannot_convert(tmp_path):
    """An embedded CLIPModel with a layer missing its k projection, or with keys of something else, is refused with
    the key named; nothing is written."""
    _, visual = write_official(tmp_path / 'ok.pth', 'SESymUNet')
    ckpt = torch.load(tmp_path / 'ok.pth', weights_only=True)
    broken = dict(ckpt['params'])
    del broken['clip_model.vision_model.encoder.layers.1.self_attn.k_proj.bias']
    torch.save({'params': broken}, tmp_path / 'broken.pth')
    with pytest.raises(UsageError, match='vision layer 1 lacks self_attn.k_proj.bias'):
        convert([str(tmp_path / 'broken.pth'), str(tmp_path / 'out.pth')])
    odd = dict(ckpt['params'], **{'clip_model.vision_model.adapter.weight': torch.zeros(1)})
    torch.save({'params': odd}, tmp_path / 'odd.pth')
    with pytest.raises(UsageError, match=r'clip_model\.vision_model\.adapter\.weight'):
        convert([str(tmp_path / 'odd.pth'), str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists() and not (tmp_path / 'out_clip_visual.pth').exists()


def test_convert_creates_the_output_folder_and_names_out_on_errors(tmp_path, capsys):
    """OUT's folder is made; OUT that is a folder, and IN that is missing, are usage errors naming the argument
    (exit status 2 through the command), never a temporary file's name."""
    write_official(tmp_path / 'official.pth', 'SymUNet')
    assert convert([str(tmp_path / 'official.pth'), str(tmp_path / 'new' / 'deeper' / 'lean.pth')]) == 0
    assert (tmp_path / 'new' / 'deeper' / 'lean.pth').is_file()
    with pytest.raises(UsageError, match=r'^OUT .*: a folder'):
        convert([str(tmp_path / 'official.pth'), str(tmp_path / 'new')])
    with pytest.raises(UsageError, match=r'^IN .*missing.pth: no such file'):
        convert([str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth')])
    from allinone_basicsr.tools.convert import cli
    with pytest.raises(SystemExit) as exit_:
        cli([str(tmp_path / 'missing.pth'), str(tmp_path / 'out.pth')])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith('convert: error: IN ')
