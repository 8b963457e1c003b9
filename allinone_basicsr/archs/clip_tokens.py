"""Frozen CLIP image tokens for SE-SymUNet (open_clip visual tower).

The official SE-SymUNet feeds HF ``CLIPModel('openai/clip-vit-large-patch14').vision_model(x).last_hidden_state``
to its cross-attentions: all 257 tokens (CLS first) of the last transformer block, *before* ``post_layernorm``,
computed on the LQ image resized (short side, bicubic, antialias) and centre-cropped to 224 and normalised with
the CLIP mean/std. :class:`CLIPTokenizer` computes the same tokens with open_clip's ``ViT-L-14-quickgelu`` tower
(the same OpenAI weights).

Only the visual tower is built (the text tower is never used), it is frozen (eval mode, ``requires_grad=False``,
run under ``torch.no_grad()``), and it is *not* an ``nn.Module`` child of the network that uses it, so it is not
in ``parameters()`` (the optimizer never sees it) nor in ``state_dict()`` (checkpoints stay small). Networks
built with the same CLIP options in one process (``net_g`` and ``net_g_ema``) share one tokenizer, which keeps one
copy of the tower per device and runs the copy on the input's device: DataParallel's replicas (threads, one per
GPU) each use their own copy, and no copy ever moves while another thread may use it.

Weights (``clip_pretrained``):
    * ``None``: random initialisation from a fixed seed (tests, smoke runs); a warning says the tokens carry no
      meaning.
    * a local file: open_clip's ``open_clip_pytorch_model.bin`` / ``.safetensors`` (full CLIP, ``visual.*`` keys),
      or a bare visual-tower state dict, read weights-only (nothing in the file runs). OpenAI's original
      ``ViT-L-14.pt`` is a TorchScript archive (loading it runs code): convert it once with
      ``python -m allinone_basicsr.tools.convert ViT-L-14.pt OUT.pth --trust-pickle`` if you trust it.
    * an open_clip pretrained tag such as ``openai``: downloaded (and cached) by open_clip on first use. Without
      network this fails with a message naming the file to fetch and where to put it.

Official SE-SymUNet checkpoints embed the whole Hugging Face ``CLIPModel`` (submodule ``clip_model``).
:func:`hf_clip_to_open_clip_visual` turns its vision half into this tower's layout (exactly: renames, q/k/v
concatenated into ``in_proj``, ``visual_projection`` transposed into ``proj``) and drops the text half;
:func:`embedded_clip_tokenizer` makes a tokenizer of those weights (SESymUNet's ``load_official_state``).
"""
import os
import re
import threading
import warnings
import weakref

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from allinone_basicsr.utils.extras import require

DEFAULT_CLIP_MODEL = 'ViT-L-14-quickgelu'
DEFAULT_CLIP_FILE = 'pretrained/clip/ViT-L-14-quickgelu_openai.bin'
RANDOM_INIT_SEED = 0

# Hugging Face model ids (what the official option files name) -> (open_clip model, pretrained tag).
HF_TO_OPEN_CLIP = {
    'openai/clip-vit-large-patch14': ('ViT-L-14-quickgelu', 'openai'),
    'openai/clip-vit-large-patch14-336': ('ViT-L-14-336-quickgelu', 'openai'),
    'openai/clip-vit-base-patch16': ('ViT-B-16-quickgelu', 'openai'),
    'openai/clip-vit-base-patch32': ('ViT-B-32-quickgelu', 'openai'),
}

_SHARED_TOWERS = weakref.WeakValueDictionary()
_EMBEDDED_TOWERS = weakref.WeakSet()  # tokenizers of weights embedded in a checkpoint (no file name to key them by)
_SHARED_LOCK = threading.Lock()

# Hugging Face CLIPModel (vision half, keys after ``vision_model.``) -> open_clip visual tower.
_HF_VISION_NAMES = {
    'embeddings.patch_embedding.weight': 'conv1.weight',
    'embeddings.class_embedding': 'class_embedding',
    'embeddings.position_embedding.weight': 'positional_embedding',
    'pre_layrnorm.weight': 'ln_pre.weight',  # sic: Hugging Face's spelling
    'pre_layrnorm.bias': 'ln_pre.bias',
    'post_layernorm.weight': 'ln_post.weight',
    'post_layernorm.bias': 'ln_post.bias',
}
_HF_LAYER_NAMES = {
    'self_attn.out_proj.weight': 'attn.out_proj.weight',
    'self_attn.out_proj.bias': 'attn.out_proj.bias',
    'layer_norm1.weight': 'ln_1.weight',
    'layer_norm1.bias': 'ln_1.bias',
    'layer_norm2.weight': 'ln_2.weight',
    'layer_norm2.bias': 'ln_2.bias',
    'mlp.fc1.weight': 'mlp.c_fc.weight',
    'mlp.fc1.bias': 'mlp.c_fc.bias',
    'mlp.fc2.weight': 'mlp.c_proj.weight',
    'mlp.fc2.bias': 'mlp.c_proj.bias',
}
_HF_LAYER = re.compile(r'encoder\.layers\.(\d+)\.(.+)$')
_HF_QKV = re.compile(r'self_attn\.([qkv])_proj\.(weight|bias)$')
_HF_BUFFERS = ('embeddings.position_ids',)  # an arange that older transformers versions saved: not a weight
_HF_TEXT = ('text_model.', 'text_projection.', 'logit_scale')  # the text half: never used by SE-SymUNet


def _open_clip():
    """open_clip (the ``[se]`` extra), imported on first use: SymUNet and the package do not need it."""
    return require('open_clip', 'open_clip_torch', 'se', 'SESymUNet')


def resolve_clip_model_name(name):
    """Map an official (Hugging Face) CLIP id to ``(open_clip model name, default tag)``; open_clip names pass."""
    open_clip = _open_clip()
    name = name or DEFAULT_CLIP_MODEL
    if name in HF_TO_OPEN_CLIP:
        return HF_TO_OPEN_CLIP[name]
    if open_clip.get_model_config(name) is None:
        raise ValueError(f'Unknown CLIP model {name!r}: use an open_clip model name (e.g. {DEFAULT_CLIP_MODEL!r}, '
                         f'see open_clip.list_models()) or one of {sorted(HF_TO_OPEN_CLIP)}')
    return name, None


def clip_vision_config(model_name, overrides=None):
    """The open_clip vision config of ``model_name`` (a dict), with ``overrides`` applied."""
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(model_name)
    vision = dict(cfg['vision_cfg'])
    vision.update(overrides or {})
    return {'embed_dim': cfg['embed_dim'], 'quick_gelu': cfg.get('quick_gelu', False), 'vision_cfg': vision}


def _load_state_dict_file(path):
    """Read a CLIP weight file in any of the layouts listed in the module docstring; returns the visual keys."""
    from allinone_basicsr.utils.checkpoint import load_checkpoint, strip_prefix
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        try:
            state = load_checkpoint(path, key='network_g.clip_pretrained')  # weights only: runs nothing from the file
        except Exception as load_error:
            raise RuntimeError(
                f'network_g.clip_pretrained: cannot read the CLIP weights {path!r} as a weights-only file '
                f'({load_error}). OpenAI\'s original ViT-L-14.pt is a TorchScript archive, which runs code when '
                f'loaded: if you trust it, convert it once (python -m allinone_basicsr.tools.convert {path} '
                f'clip_vit_l14.pth --trust-pickle) and name the converted file, or use open_clip\'s '
                f'open_clip_pytorch_model.bin') from None
    for wrapper in ('state_dict', 'model', 'params'):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = strip_prefix(state)
    if any(k.startswith('visual.') for k in state):
        state = {k[len('visual.'):]: v for k, v in state.items() if k.startswith('visual.')}
    return state


def hf_clip_to_open_clip_visual(state, where='clip_model'):
    """The vision tower of a Hugging Face ``CLIPModel`` state dict (keys without the ``clip_model.`` prefix) in the
    open_clip visual tower's layout, and what was found.

    ``vision_model.*`` and ``visual_projection.weight`` are converted exactly (the tensors themselves, renamed;
    ``in_proj_weight/bias`` = q, k, v concatenated; ``proj`` = ``visual_projection.weight`` transposed); the text
    tower (``text_model.*``, ``text_projection``, ``logit_scale``) and ``position_ids`` buffers are dropped.
    Any other key, or a layer missing one of q/k/v, is an error naming it (``where`` prefixes the names).

    Returns:
        (dict, dict): the open_clip visual state dict, and counts ``{'keys', 'vision', 'text', 'buffers',
        'tensors'}`` (HF keys found, vision keys converted, text keys and buffers dropped, tensors written).
    """
    visual, qkv, unknown = {}, {}, []
    counts = dict(keys=len(state), vision=0, text=0, buffers=0)
    for key, value in state.items():
        if key.startswith(_HF_TEXT):
            counts['text'] += 1
            continue
        if key == 'visual_projection.weight':
            visual['proj'] = value.t().contiguous()
            counts['vision'] += 1
            continue
        name = key[len('vision_model.'):] if key.startswith('vision_model.') else None
        layer = _HF_LAYER.match(name or '')
        attn = _HF_QKV.match(layer.group(2)) if layer else None
        if name in _HF_BUFFERS:
            counts['buffers'] += 1
            continue
        if name in _HF_VISION_NAMES:
            visual[_HF_VISION_NAMES[name]] = value
        elif layer and layer.group(2) in _HF_LAYER_NAMES:
            visual[f'transformer.resblocks.{layer.group(1)}.{_HF_LAYER_NAMES[layer.group(2)]}'] = value
        elif attn:
            qkv.setdefault((int(layer.group(1)), attn.group(2)), {})[attn.group(1)] = value
        else:
            unknown.append(f'{where}.{key}')
            continue
        counts['vision'] += 1
    if unknown:
        raise ValueError(f'{where}: {len(unknown)} key(s) are not part of a Hugging Face CLIPModel as this converter '
                         f'knows it: {", ".join(unknown[:5])}{" ..." if len(unknown) > 5 else ""}')
    for (layer, kind), parts in sorted(qkv.items()):
        missing = [p for p in 'qkv' if p not in parts]
        if missing:
            raise ValueError(f'{where}: vision layer {layer} lacks self_attn.{"/".join(missing)}_proj.{kind}')
        visual[f'transformer.resblocks.{layer}.attn.in_proj_{kind}'] = torch.cat([parts[p] for p in 'qkv'])
    if not visual:
        raise ValueError(f'{where}: holds no vision tower (vision_model.*); found {counts["keys"]} key(s)')
    counts['tensors'] = len(visual)
    return visual, counts


def tower_differences(tower, state):
    """How the weights of ``tower`` (an ``nn.Module``) differ from ``state``: a list of readable lines, empty when
    the keys are the same and every tensor is exactly equal."""
    own = tower.state_dict()
    lines = [f'{k}: missing' for k in own if k not in state] + [f'{k}: unexpected' for k in state if k not in own]
    for key in own:
        if key not in state:
            continue
        mine, theirs = own[key], state[key].to(own[key].device)
        if mine.shape != theirs.shape:
            lines.append(f'{key}: shape {tuple(theirs.shape)} vs {tuple(mine.shape)}')
        elif not torch.equal(mine, theirs.to(mine.dtype)):
            diff = (mine.double() - theirs.double()).abs().max().item()
            lines.append(f'{key}: max |diff| {diff:.3g}')
    return lines


def _offline_message(model_name, tag, error):
    return (f'Could not fetch the CLIP weights {model_name!r} / {tag!r} ({type(error).__name__}: {error}). '
            f'Offline? Download them on a machine with network, e.g. '
            f'`python -c "import open_clip; print(open_clip.download_pretrained(open_clip.get_pretrained_cfg('
            f'\'{model_name}\', \'{tag}\')))"` (or the file open_clip_pytorch_model.bin of the Hugging Face repo '
            f'timm/vit_large_patch14_clip_224.openai for ViT-L-14), copy the file to {DEFAULT_CLIP_FILE} and set '
            f'network_g.clip_pretrained: {DEFAULT_CLIP_FILE}')


def resolve_clip_weights(model_name, pretrained):
    """Check ``clip_pretrained`` early (at network build time) and return a local file path, a tag, or None."""
    if pretrained is None:
        return None
    pretrained = os.path.expanduser(str(pretrained))
    if os.path.isfile(pretrained):
        return os.path.realpath(pretrained)
    open_clip = _open_clip()
    if pretrained in open_clip.list_pretrained_tags_by_model(model_name):
        return pretrained
    raise FileNotFoundError(f'network_g.clip_pretrained: {pretrained!r} is neither an existing file nor an '
                            f'open_clip pretrained tag of {model_name!r} '
                            f'({open_clip.list_pretrained_tags_by_model(model_name)}). Put the weights file there, '
                            f'e.g. {DEFAULT_CLIP_FILE}')


class CLIPTokenizer:
    """Frozen open_clip visual tower: RGB [0, 1] images -> (B, 1 + patches, width) tokens before ``ln_post``.

    Not an ``nn.Module`` on purpose (see the module docstring). Calling it runs the tower's copy on the image's
    device (:meth:`tower_on`); use :func:`shared_clip_tokenizer` to build one, so that networks with equal CLIP
    options share it.

    Args:
        model_name (str): open_clip model name. Default: ``ViT-L-14-quickgelu``.
        pretrained (str | None): local weight file, open_clip tag, or None (random init).
        vision_overrides (dict | None): changes to the model's open_clip vision config (tests use a tiny tower).
        state (dict | None): the tower's weights (open_clip layout, e.g. converted from a checkpoint's embedded
            CLIP by :func:`hf_clip_to_open_clip_visual`); taken instead of ``pretrained``.
    """

    def __init__(self, model_name=DEFAULT_CLIP_MODEL, pretrained=None, vision_overrides=None, state=None):
        open_clip = _open_clip()

        cfg = clip_vision_config(model_name, vision_overrides)
        self.model_name, self.pretrained = model_name, pretrained
        self.vision_overrides = dict(vision_overrides or {})
        self._cfg = cfg
        tower = self._build_seeded() if state is None else self._from_state(state)
        if state is None and pretrained is None:
            warnings.warn(f'CLIP {model_name} has random weights (network_g.clip_pretrained is not set; seeded, so '
                          f'equal in every process): its tokens carry no image semantics. Fine for tests and smoke '
                          f'runs only.', stacklevel=2)
        elif state is None:
            path = pretrained
            if not os.path.isfile(path):
                try:
                    path = open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, pretrained))
                except Exception as error:
                    raise RuntimeError(_offline_message(model_name, pretrained, error)) from error
            state = _load_state_dict_file(path)
            try:
                tower.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise RuntimeError(f'CLIP weights {path!r} do not fit the {model_name} visual tower: '
                                   f'{error}') from error
        tower.eval().requires_grad_(False)
        # The built tower (CPU) is "spare" until a device first asks for a copy: that device takes it (moved, since
        # nobody uses it yet), so a GPU run keeps no second copy in host memory. Later devices get new copies.
        self._spare = tower
        self._towers = {}  # device -> tower copy, never moved once here
        self._lock = threading.Lock()

        pre = open_clip.get_pretrained_cfg(model_name, 'openai') or {}
        self.mean = tuple(pre.get('mean', open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pre.get('std', open_clip.OPENAI_DATASET_STD))
        self._norm = {}  # (device, dtype) -> (mean, std) tensors of shape (3, 1, 1)
        size = cfg['vision_cfg']['image_size']
        self.image_size = size if isinstance(size, int) else size[0]
        self.width = cfg['vision_cfg']['width']

    def _build(self):
        _open_clip()
        from open_clip.model import CLIPVisionCfg, _build_vision_tower
        cfg = self._cfg
        return _build_vision_tower(cfg['embed_dim'], CLIPVisionCfg(**cfg['vision_cfg']), quick_gelu=cfg['quick_gelu'])

    def _from_state(self, state):
        """The tower holding ``state`` (its tensors, as float32): built on 'meta' (no random init of a 300M-parameter
        tower only to overwrite it), then the tensors assigned."""
        with torch.device('meta'):
            tower = self._build()
        try:
            tower.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise ValueError(f'the embedded CLIP weights do not fit the {self.model_name} visual tower '
                             f'{self._cfg["vision_cfg"]} (network_g.clip_model_name / clip_vision_cfg): '
                             f'{error}') from None
        if any(t.is_meta for t in _tensors(tower)):
            raise ValueError(f'the {self.model_name} visual tower has tensors no state dict fills')
        return tower.float()

    def _build_seeded(self):
        """The tower on the CPU, initialised from :data:`RANDOM_INIT_SEED`: the same in every process (train, test,
        each DDP rank). Only the CPU generator is seeded (``torch.manual_seed`` would reseed every CUDA generator
        too), inside a fork that restores it, so the RNG streams of training are untouched; no CUDA generator is
        read or written (forking them all would also create a CUDA context on every GPU in every rank)."""
        with torch.random.fork_rng(devices=[]), torch.device('cpu'):
            torch.default_generator.manual_seed(RANDOM_INIT_SEED)
            return self._build()

    @property
    def tower(self):
        """A copy of the tower with values (for inspection): the unused one, else the CPU one, else the first."""
        with self._lock:
            if self._spare is not None:
                return self._spare
            towers = [t for d, t in self._towers.items() if d.type != 'meta']
            return self._towers.get(torch.device('cpu'), towers[0])

    def tower_on(self, device):
        """The tower's copy on ``device``, made on first use there (under a lock: concurrent threads build it once)
        from an existing copy; existing copies are never moved."""
        device = torch.device(device)
        if device.index is None and device.type not in ('cpu', 'meta'):  # 'cuda' -> 'cuda:<current>', as tensors say
            device = torch.empty(0, device=device).device
        tower = self._towers.get(device)
        if tower is None:
            with self._lock:
                tower = self._towers.get(device)
                if tower is None:
                    tower = self._copy_to(device)
                    self._towers[device] = tower
        return tower

    def _copy_to(self, device):
        """A new copy on ``device``: the spare (moved), or the structure built on 'meta' (no memory, no RNG),
        allocated on ``device`` and filled from an existing copy (the CPU one when there is one). A 'meta' copy
        holds no values, so it never takes the spare nor serves as a source."""
        if self._spare is not None and device.type != 'meta':
            tower, self._spare = self._spare, None
            return tower.to(device)
        with torch.device('meta'):
            tower = self._build()
        tower = tower.to_empty(device=device).eval().requires_grad_(False)
        if device.type != 'meta':
            sources = [t for d, t in self._towers.items() if d.type != 'meta']
            source = self._towers.get(torch.device('cpu'), sources[0])
            with torch.no_grad():
                for mine, theirs in zip(_tensors(tower), _tensors(source)):
                    mine.copy_(theirs)
        return tower

    @property
    def devices(self):
        """Devices that have a copy of the tower."""
        return list(self._towers)

    def num_parameters(self):
        return sum(p.numel() for p in self.tower.parameters())

    def _normalisation(self, device, dtype):
        """CLIP's mean and std as (3, 1, 1) tensors on ``device``: made once per device and dtype, so a forward makes
        no host-to-device copy (and, unlike torchvision's ``normalize``, no ``(std == 0).any()`` host sync)."""
        key = (device, dtype)
        stats = self._norm.get(key)
        if stats is None:
            stats = tuple(torch.tensor(v, dtype=dtype).view(-1, 1, 1).to(device) for v in (self.mean, self.std))
            self._norm[key] = stats
        return stats

    def preprocess(self, img):
        """Resize the short side to the tower's input size (bicubic, antialias), centre-crop, normalise."""
        h, w = int(img.shape[-2]), int(img.shape[-1])  # python ints, also under jit tracing (complexity analysis)
        size = self.image_size
        new_h, new_w = (size, int(w * size / h)) if h < w else (int(h * size / w), size)
        img = TF.resize(img, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # torchvision's centre crop
        img = img[..., top:top + size, left:left + size]
        mean, std = self._normalisation(img.device, img.dtype)
        return (img - mean) / std  # torchvision's normalize, same numbers

    @torch.no_grad()
    def __call__(self, img):
        tower = self.tower_on(img.device)
        x = self.preprocess(img.to(torch.float32))
        out = tower.forward_intermediates(x, indices=1, stop_early=True, normalize_intermediates=False,
                                          intermediates_only=True, output_fmt='NLC', output_extra_tokens=True)
        tokens = torch.cat([out['image_intermediates_prefix'][0], out['image_intermediates'][0]], dim=1)
        return tokens.to(img.dtype)


def _tensors(module):
    """Parameters and buffers (persistent or not) in module order: the same order in two towers of one config."""
    return list(module.parameters()) + list(module.buffers())


def shared_clip_tokenizer(model_name=DEFAULT_CLIP_MODEL, pretrained=None, vision_overrides=None):
    """One :class:`CLIPTokenizer` per set of options while any network holds it."""
    key = (model_name, pretrained, repr(sorted((vision_overrides or {}).items())))
    with _SHARED_LOCK:
        tokenizer = _SHARED_TOWERS.get(key)
        if tokenizer is None:
            tokenizer = CLIPTokenizer(model_name, pretrained, vision_overrides)
            _SHARED_TOWERS[key] = tokenizer
    return tokenizer


def embedded_clip_tokenizer(model_name, state, vision_overrides=None):
    """A :class:`CLIPTokenizer` of the weights ``state`` (open_clip layout). A live tokenizer of the same options
    whose tower holds exactly these weights is reused (net_g and net_g_ema loading one checkpoint keep one tower)."""
    overrides = dict(vision_overrides or {})
    with _SHARED_LOCK:
        for tokenizer in list(_EMBEDDED_TOWERS):
            if (tokenizer.model_name, tokenizer.vision_overrides) == (model_name, overrides) and \
                    not tower_differences(tokenizer.tower, state):
                return tokenizer
        tokenizer = CLIPTokenizer(model_name, None, overrides, state=state)
        _EMBEDDED_TOWERS.add(tokenizer)
    return tokenizer


class FrozenTokenizerSlot:
    """Holds a tokenizer outside the module tree, built on first use; deep copies (e.g. an EMA copy) and
    DataParallel's replicas share it instead of cloning it (the tokenizer keeps its per-device copies itself)."""

    def __init__(self, factory):
        self._factory = factory
        self.tokenizer = None

    def get(self):
        if self.tokenizer is None:  # a race builds nothing twice: shared_clip_tokenizer hands both the same object
            self.tokenizer = self._factory()
        return self.tokenizer

    def __deepcopy__(self, memo):
        return self
