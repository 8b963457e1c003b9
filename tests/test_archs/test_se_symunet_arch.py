"""SE-SymUNet and its frozen CLIP tokens, with a tiny randomly initialised open_clip tower (nothing downloaded).

The full-size keys, shapes and the trainable count 67,432,643 are checked against the official code in
test_official_reference.py (se_symunet_full_keys.json)."""
import copy

import pytest
import torch
from pipeline_util import run_python

from allinone_basicsr.archs import clip_tokens
from allinone_basicsr.archs.clip_tokens import CLIPTokenizer, resolve_clip_model_name
from allinone_basicsr.archs.symunet_arch import ImageGuidanceAttention, SESymUNet, TextRefinementAttention

from basicsr.utils.registry import ARCH_REGISTRY

pytestmark = pytest.mark.filterwarnings('ignore:CLIP .* has random weights')

TINY_CLIP = {'image_size': 28, 'patch_size': 7, 'width': 64, 'layers': 2, 'head_width': 32}
TINY = {'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1, 'dec_blk_nums': [1, 1, 1],
        'cross_attn_inner_dims': [32, 32, 64], 'cross_attn_heads': [1, 2, 4], 'middle_cross_attn_inner_dim': 64,
        'middle_cross_attn_heads': 4, 'patch_sizes': [4, 4, 2], 'middle_patch_size': 2,
        'clip_vision_cfg': TINY_CLIP}


def perturbed(net, seed=0):
    """Move every weight off its init (alpha = 1e-4 would hide the cross-attention otherwise)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
            if p.ndim == 0:
                p.fill_(0.5)
    return net


@pytest.fixture
def clip_file(tmp_path):
    """A tiny CLIP weight file in open_clip's full-model layout (``visual.*`` keys, text keys too)."""
    tower = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP).tower
    state = {f'visual.{k}': v + 0.01 for k, v in tower.state_dict().items()}
    state['token_embedding.weight'] = torch.zeros(4, 4)
    path = tmp_path / 'tiny_clip.bin'
    torch.save(state, path)
    return path


def test_registered_and_accepts_official_keywords():
    net = ARCH_REGISTRY.get('SESymUNet')(img_channel=3, restormer_heads=[1, 2, 4], restormer_middle_heads=8,
                                         clip_model_name='openai/clip-vit-large-patch14', semantic_start_iter=0,
                                         **{k: v for k, v in TINY.items()})
    assert net.clip_tokenizer().model_name == 'ViT-L-14-quickgelu'
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['clip_layer'\]") as err:
        SESymUNet(clip_layer=3, **TINY)
    for option in ('clip_pretrained', 'patch_sizes', 'width', 'enc_blk_nums', 'LayerNorm_type'):  # own + SymUNet's
        assert f"'{option}'" in str(err.value)
    with pytest.raises(ValueError, match='semantic_start_iter'):
        SESymUNet(semantic_start_iter=1000, **TINY)


def test_clip_name_mapping_and_unknown_name():
    assert resolve_clip_model_name('openai/clip-vit-large-patch14') == ('ViT-L-14-quickgelu', 'openai')
    assert resolve_clip_model_name('ViT-B-16') == ('ViT-B-16', None)
    with pytest.raises(ValueError, match='Unknown CLIP model .*ViT-L-14-quickgelu'):
        resolve_clip_model_name('clip-vit-huge-mystery')


@pytest.mark.parametrize('shape', [(1, 3, 45, 67), (2, 3, 33, 40), (1, 3, 8, 8)])
def test_output_shape_equals_input_shape(shape):
    net = perturbed(SESymUNet(**TINY)).eval()
    with torch.no_grad():
        out = net(torch.rand(shape))
    assert out.shape == shape and torch.isfinite(out).all()


def test_tokens_are_all_tokens_before_ln_post_cls_first():
    tok = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    v = tok.tower
    img = torch.rand(2, 3, 40, 60)
    tokens = tok(img)
    assert tokens.shape == (2, 1 + (28 // 7)**2, 64)
    with torch.no_grad():  # the ViT forward written out: patch conv, CLS first, positions, ln_pre, blocks; no ln_post
        x = tok.preprocess(img)
        x = v.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(2, 1, -1), x], dim=1) + v.positional_embedding
        x = v.transformer(v.ln_pre(x))
    assert torch.allclose(tokens, x, atol=1e-5)
    assert not torch.allclose(tokens, v.ln_post(x), atol=1e-2)


def test_preprocess_resizes_short_side_and_centre_crops():
    tok = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    img = torch.rand(1, 3, 56, 168)  # resized to 28×84: only the central 28 columns (of the 84) reach CLIP
    changed = img.clone()
    changed[..., :40] = 0  # the outer left part, outside the central third plus the bicubic support
    assert tok.preprocess(img).shape == (1, 3, 28, 28)
    assert torch.allclose(tok.preprocess(img), tok.preprocess(changed))
    mean = torch.tensor(tok.mean).view(1, 3, 1, 1)
    std = torch.tensor(tok.std).view(1, 3, 1, 1)
    flat = torch.full((1, 3, 28, 28), 0.5)
    assert torch.allclose(tok.preprocess(flat), (flat - mean) / std, atol=1e-6)


def _patches(x, p):  # the official rearrange 'b c (h p1) (w p2) -> b (h w) (c p1 p2)', written with permute
    b, c, h, w = x.shape
    return x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def _attend(attn, query, context):  # plain multi-head softmax attention with the official scale
    q = attn.to_q(attn.norm_query(query))
    k, v = attn.to_k(attn.norm_context(context)), attn.to_v(attn.norm_context(context))
    b, n, inner = q.shape
    heads = attn.num_heads
    q, k, v = (t.view(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) * (inner // heads)**-0.5, dim=-1)
    return attn.to_out((weights @ v).transpose(1, 2).reshape(b, n, inner))


def test_guide_and_refine_equal_a_plain_implementation():
    torch.manual_seed(0)
    guide = perturbed(ImageGuidanceAttention(image_dim=6, text_dim=16, inner_dim=32, num_heads=4, patch_size=2))
    refine = perturbed(TextRefinementAttention(text_dim=16, image_dim=6, inner_dim=32, num_heads=4, patch_size=2))
    image, tokens = torch.randn(2, 6, 8, 10), torch.randn(2, 5, 16)
    pos = guide.position_embedding(20, image.device, image.dtype)
    update = _attend(guide.attention, _patches(image, 2) + pos, tokens)  # (b, 20, 24) -> back to the image
    update = update.view(2, 4, 5, 6, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(2, 6, 8, 10)
    assert torch.allclose(guide(image, tokens), image + guide.alpha * update, atol=1e-5)
    pos = refine.position_embedding(20, image.device, image.dtype)
    want = tokens + refine.alpha * _attend(refine.attention, tokens, _patches(image, 2) + pos)
    assert torch.allclose(refine(tokens, image), want, atol=1e-5)


def test_alpha_starts_at_1e4():
    net = SESymUNet(**TINY)
    alphas = [p for n, p in net.named_parameters() if n.endswith('alpha')]
    assert len(alphas) == 8 and all(a.item() == pytest.approx(1e-4) for a in alphas)


def test_clip_is_frozen_shared_and_outside_parameters_and_state_dict():
    net = SESymUNet(**TINY)
    tower = net.clip_tokenizer().tower
    clip_ids = {id(p) for p in tower.parameters()}
    assert not clip_ids & {id(p) for p in net.parameters()}
    assert not [k for k in net.state_dict() if 'clip' in k or 'visual' in k]
    assert all(not p.requires_grad for p in tower.parameters())
    net.train()
    assert not tower.training
    # net_g and net_g_ema (built separately, or deep-copied) share one tower
    assert SESymUNet(**TINY).clip_tokenizer() is net.clip_tokenizer()
    assert copy.deepcopy(net).clip_tokenizer() is net.clip_tokenizer()
    # gradients reach the SE modules but never CLIP
    perturbed(net)(torch.rand(1, 3, 32, 32)).mean().backward()
    assert net.middle_guide_attention.attention.to_k.weight.grad.abs().sum() > 0
    assert net.decoder_refine_attentions[0].attention.to_q.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.parameters())


def test_deterministic_in_process_and_across_processes(tmp_path, clip_file):
    opt = dict(TINY, clip_pretrained=str(clip_file))
    net = perturbed(SESymUNet(**opt)).eval()
    img = torch.rand(1, 3, 37, 51, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first, second = net(img), net(img)
        other_size = net(torch.rand(1, 3, 64, 64))  # a new token count in between must not change anything
        third = net(img)
    assert torch.equal(first, second) and torch.equal(first, third) and other_size.shape[-1] == 64
    torch.save({'params': net.state_dict(), 'img': img, 'opt': opt}, tmp_path / 'run.pth')
    code = ('import sys, torch\n'
            'from allinone_basicsr.archs.symunet_arch import SESymUNet\n'
            'torch.manual_seed(12345)\n'
            f'd = torch.load({str(tmp_path / "run.pth")!r})\n'
            'net = SESymUNet(**d["opt"]).eval()\n'
            'net.load_state_dict(d["params"], strict=True)\n'
            'with torch.no_grad():\n'
            f'    torch.save(net(d["img"]), {str(tmp_path / "out.pth")!r})\n')
    proc = run_python(['-c', code], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert torch.equal(torch.load(tmp_path / 'out.pth'), first)


def test_clip_weight_file_is_loaded(clip_file):
    tok = CLIPTokenizer('ViT-L-14-quickgelu', str(clip_file), TINY_CLIP)
    want = torch.load(clip_file)['visual.conv1.weight']
    assert torch.equal(tok.tower.conv1.weight, want)
    bare = clip_file.with_name('bare.pth')
    torch.save({k[len('visual.'):]: v for k, v in torch.load(clip_file).items() if k.startswith('visual.')}, bare)
    assert torch.equal(CLIPTokenizer('ViT-L-14-quickgelu', str(bare), TINY_CLIP).tower.conv1.weight, want)
    with pytest.raises(RuntimeError, match='do not fit the ViT-L-14-quickgelu visual tower'):
        CLIPTokenizer('ViT-L-14-quickgelu', str(clip_file), dict(TINY_CLIP, width=32, head_width=16))


def test_missing_clip_file_names_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'network_g.clip_pretrained: .*nope.bin.*openai'):
        SESymUNet(clip_pretrained=str(tmp_path / 'nope.bin'), **TINY)


def test_pretrained_tag_offline_says_which_file_to_put_where(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError('no network')

    monkeypatch.setattr('open_clip.download_pretrained', offline)
    net = SESymUNet(clip_pretrained='openai', **dict(TINY, clip_vision_cfg=dict(TINY_CLIP, layers=1)))
    with pytest.raises(RuntimeError, match=r'Offline\?.*pretrained/clip/.*network_g.clip_pretrained'):
        net(torch.rand(1, 3, 32, 32))


def test_checkpoint_holds_no_clip_and_reloads_equal(tmp_path, clip_file):
    from allinone_basicsr.models.allinone_model import AllInOneModel
    net_opt = dict(TINY, type='SESymUNet', clip_pretrained=str(clip_file))
    opt = {'name': 'se_ckpt', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': net_opt, 'path': {'models': str(tmp_path), 'pretrain_network_g': None}}
    model = AllInOneModel(opt)
    perturbed(model.net_g)
    model.save_network(model.net_g, 'net_g', 7)
    saved = torch.load(tmp_path / 'net_g_7.pth', weights_only=True)['params']
    assert not [k for k in saved if 'clip' in k or 'visual' in k or 'transformer.resblocks' in k]
    trainable = sum(p.numel() for p in model.net_g.parameters())
    assert sum(v.numel() for v in saved.values()) == trainable
    assert (tmp_path / 'net_g_7.pth').stat().st_size < trainable * 4 + 200_000

    opt2 = dict(opt, path={'models': str(tmp_path), 'pretrain_network_g': str(tmp_path / 'net_g_7.pth'),
                           'strict_load_g': True})
    model2 = AllInOneModel(opt2)
    img = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(model.net_g.eval()(img), model2.net_g.eval()(img))


def test_last_refinement_is_not_computed():
    net = perturbed(SESymUNet(**TINY))
    net(torch.rand(1, 3, 32, 32)).mean().backward()
    assert all(p.grad is None for p in net.decoder_refine_attentions[-1].parameters())


def test_shared_cache_frees_unused_towers():
    clip_tokens._SHARED_TOWERS.clear()
    net = SESymUNet(**dict(TINY, clip_vision_cfg=dict(TINY_CLIP, layers=1)))
    net.clip_tokenizer()
    assert len(clip_tokens._SHARED_TOWERS) == 1
    del net
    import gc
    gc.collect()
    assert len(clip_tokens._SHARED_TOWERS) == 0


def test_random_clip_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    first = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    assert torch.equal(torch.rand(1), expected)
    second = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    for a, b in zip(first.tower.parameters(), second.tower.parameters()):
        assert torch.equal(a, b)


def test_clip_tower_has_one_copy_per_device_and_never_moves_one_in_use():
    """DataParallel's replicas share the tokenizer and run in threads, one per GPU: each device gets its own copy
    (emulated here with the 'meta' device), and the CPU copy stays on the CPU and keeps giving the same tokens."""
    tok = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    img = torch.rand(2, 3, 40, 60, generator=torch.Generator().manual_seed(0))
    cpu_tokens = tok(img)
    cpu_tower = tok.tower
    meta_tokens = tok(img.to('meta'))  # a forward on another device
    assert all(p.device.type == 'cpu' for p in cpu_tower.parameters())
    assert meta_tokens.device.type == 'meta' and meta_tokens.shape == cpu_tokens.shape
    assert tok.tower_on('cpu') is cpu_tower and tok.tower is cpu_tower
    meta_tower = tok.tower_on('meta')
    assert meta_tower is not cpu_tower and all(p.is_meta for p in meta_tower.parameters())
    assert not meta_tower.training and not any(p.requires_grad for p in meta_tower.parameters())
    assert set(tok.devices) == {torch.device('cpu'), torch.device('meta')}
    assert torch.equal(tok(img), cpu_tokens)
    # how a further device gets its copy (GPU 1 after GPU 0): built empty, filled from an existing copy
    clone = tok._copy_to(torch.device('cpu'))
    assert clone is not cpu_tower and not clone.training
    pairs = zip(clone.state_dict().values(), cpu_tower.state_dict().values())
    assert all(torch.equal(a, b) and not a.requires_grad for a, b in pairs)
    # a 'meta' copy first (no values) leaves the values for the first real device
    meta_first = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    assert meta_first(img.to('meta')).is_meta and torch.equal(meta_first(img), cpu_tokens)
    # a network and a replica of it on another device share the tokenizer (DataParallel's replicas share the
    # slot; here a deep copy does); the replica's tokens come from its device's copy
    net = perturbed(SESymUNet(**TINY)).eval()
    with torch.no_grad():
        want = net(img)
        replica = copy.deepcopy(net).to('meta')
        assert replica.clip_tokenizer() is net.clip_tokenizer()
        assert replica.clip_tokenizer()(img.to('meta')).is_meta
        assert torch.equal(net(img), want)
    assert all(p.device.type == 'cpu' for p in net.clip_tokenizer().tower_on('cpu').parameters())


def test_concurrent_threads_on_two_devices_get_correct_tokens():
    import threading
    tok = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    want = tok(img)
    start, results, errors = threading.Barrier(3), [], []

    def run(device):
        try:
            start.wait()
            for _ in range(5):
                out = tok(img.to(device))
                results.append((device, out if device == 'meta' else torch.equal(out, want)))
        except Exception as error:  # reported below: a thread's exception would not fail the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(d,)) for d in ('cpu', 'meta', 'cpu')]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(results) == 15
    assert all(ok for d, ok in results if d == 'cpu') and all(out.is_meta for d, out in results if d == 'meta')
    # a device's copy is made once, also when threads ask for it at the same time
    fresh = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    barrier, towers = threading.Barrier(4), []

    def first_use():
        barrier.wait()
        towers.append(fresh.tower_on('meta'))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(towers) == 4 and all(t is towers[0] for t in towers) and fresh.devices == [torch.device('meta')]


class SyncRecorder(torch.overrides.TorchFunctionMode):
    """Records the calls that wait for the device (host reads of tensor values) or copy host data to it."""
    SYNCS = {'item', 'tolist', 'cpu', 'numpy', '__bool__', '__int__', '__float__', '__index__', 'nonzero',
             'tensor', 'as_tensor', 'from_numpy'}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, '__name__', '')
        if name in self.SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_forward_makes_no_host_sync_or_host_to_device_copy():
    net = perturbed(SESymUNet(**TINY)).eval()
    img = torch.rand(1, 3, 37, 51)
    with torch.no_grad():
        net(img)  # builds the tower, the position embeddings and the normalisation constants
        with SyncRecorder() as recorder:
            net(img)
    with SyncRecorder() as check:  # the recorder sees what it must
        bool(torch.as_tensor((1.0, 2.0)).any())
    assert check.calls == ['as_tensor', '__bool__']
    assert recorder.calls == []
    tok = net.clip_tokenizer()
    mean = torch.tensor(tok.mean).view(1, 3, 1, 1)
    std = torch.tensor(tok.std).view(1, 3, 1, 1)
    flat = torch.rand(1, 3, 28, 28)
    from torchvision.transforms.functional import normalize
    assert torch.equal(tok.preprocess(flat), normalize(flat, tok.mean, tok.std))  # torchvision's numbers, exactly
    assert torch.equal(tok.preprocess(flat), (flat - mean) / std)


def test_building_a_tower_seeds_no_global_generator(monkeypatch):
    """``torch.manual_seed`` reseeds every CUDA generator as well; with CUDA mocked, building touches none of
    them, and the CPU generator's state is unchanged."""
    touched = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    for name in ('manual_seed', 'manual_seed_all', 'seed', 'seed_all', 'get_rng_state', 'get_rng_state_all',
                 'set_rng_state', 'set_rng_state_all'):
        monkeypatch.setattr(torch.cuda, name, lambda *args, _name=name, **kwargs: touched.append(_name))
    state = torch.get_rng_state()
    first = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    assert touched == [] and torch.equal(torch.get_rng_state(), state)
    monkeypatch.undo()
    torch.manual_seed(5)
    second = CLIPTokenizer('ViT-L-14-quickgelu', None, TINY_CLIP)
    for a, b in zip(first.tower.parameters(), second.tower.parameters()):  # still seeded: equal towers
        assert torch.equal(a, b)


def test_position_embeddings_are_kept_for_alternating_sizes(monkeypatch):
    from allinone_basicsr.archs import symunet_arch
    guide = ImageGuidanceAttention(image_dim=6, text_dim=16, inner_dim=32, num_heads=4, patch_size=2)
    cpu = torch.device('cpu')
    a, b = guide.position_embedding(20, cpu, torch.float32), guide.position_embedding(30, cpu, torch.float32)
    assert guide.position_embedding(20, cpu, torch.float32) is a
    assert guide.position_embedding(30, cpu, torch.float32) is b
    half = guide.position_embedding(20, cpu, torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, a.half())
    for n in range(40, 40 + symunet_arch.POS_CACHE_SIZE):  # more sizes than the cache keeps: the oldest go
        guide.position_embedding(n, cpu, torch.float32)
    again = guide.position_embedding(20, cpu, torch.float32)
    assert again is not a and torch.equal(again, a)  # drawn again, the same numbers
    assert len(guide._pos_cache[(cpu, torch.float32)]) == symunet_arch.POS_CACHE_SIZE
    # a network alternating two validation sizes draws each size's embeddings once, with identical outputs
    net = perturbed(SESymUNet(**TINY)).eval()
    net.clip_tokenizer()  # built here, not in the counted forwards
    small, large = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 64)
    draws = []
    randn = torch.randn

    def counting_randn(*args, **kwargs):
        draws.append(args)
        return randn(*args, **kwargs)

    monkeypatch.setattr(torch, 'randn', counting_randn)
    with torch.no_grad():
        first = [net(small), net(large)]
        drawn = len(draws)
        for _ in range(2):
            assert torch.equal(net(small), first[0]) and torch.equal(net(large), first[1])
    assert drawn == 2 * 7 and len(draws) == drawn  # 7 computed guide/refine modules, two sizes, no draw after


def test_forward_is_one_graph_for_torch_compile():
    """The frozen CLIP call and the seeded position embeddings run once, eagerly, before the network's graph: dynamo
    breaks the forward there only, leaving the network one graph (it made 30 graphs when every guide / refine step
    broke it, and inductor then failed on the symbolic shapes its recompiles made), and the outputs are those of the
    eager forward."""
    torch.manual_seed(0)
    net = perturbed(SESymUNet(**TINY))
    x = torch.rand(1, 3, 32, 48)
    explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 1 and explained.graph_count == 2, explained.break_reasons
    assert 'torch.compiler.disable' in str(explained.break_reasons[0].reason)
    with torch.no_grad():
        assert torch.allclose(torch.compile(net, backend='aot_eager')(x), net(x), atol=1e-6)
    torch._dynamo.reset()
