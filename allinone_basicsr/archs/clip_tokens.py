"""Frozen CLIP image tokens for SE-SymUNet (open_clip visual tower).

The official SE-SymUNet feeds HF ``CLIPModel('openai/clip-vit-large-patch14').vision_model(x).last_hidden_state``
to its cross-attentions: all 257 tokens (CLS first) of the last transformer block, *before* ``post_layernorm``,
computed on the LQ image resized (short side, bicubic, antialias) and centre-cropped to 224 and normalised with
the CLIP mean/std. :class:`CLIPTokenizer` computes the same tokens with open_clip's ``ViT-L-14-quickgelu`` tower
(the same OpenAI weights).

Only the visual tower is built (the text tower is never used), it is frozen (eval mode, ``requires_grad=False``,
run under ``torch.no_grad()``), and it is *not* an ``nn.Module`` child of the network that uses it, so it is not
in ``parameters()`` (the optimizer never sees it) nor in ``state_dict()`` (checkpoints stay small). Networks
built with the same CLIP options in one process (``net_g`` and ``net_g_ema``) share one tower.

Weights (``clip_pretrained``):
    * ``None``: random initialisation from a fixed seed (tests, smoke runs); a warning says the tokens carry no
      meaning.
    * a local file: open_clip's ``open_clip_pytorch_model.bin`` / ``.safetensors`` (full CLIP, ``visual.*`` keys),
      OpenAI's original ``ViT-L-14.pt`` (TorchScript), or a bare visual-tower state dict.
    * an open_clip pretrained tag such as ``openai``: downloaded (and cached) by open_clip on first use. Without
      network this fails with a message naming the file to fetch and where to put it.
"""
import os
import threading
import warnings
import weakref

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

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
_SHARED_LOCK = threading.Lock()


def resolve_clip_model_name(name):
    """Map an official (Hugging Face) CLIP id to ``(open_clip model name, default tag)``; open_clip names pass."""
    import open_clip
    name = name or DEFAULT_CLIP_MODEL
    if name in HF_TO_OPEN_CLIP:
        return HF_TO_OPEN_CLIP[name]
    if open_clip.get_model_config(name) is None:
        raise ValueError(f'Unknown CLIP model {name!r}: use an open_clip model name (e.g. {DEFAULT_CLIP_MODEL!r}, '
                         f'see open_clip.list_models()) or one of {sorted(HF_TO_OPEN_CLIP)}')
    return name, None


def clip_vision_config(model_name, overrides=None):
    """The open_clip vision config of ``model_name`` (a dict), with ``overrides`` applied."""
    import open_clip
    cfg = open_clip.get_model_config(model_name)
    vision = dict(cfg['vision_cfg'])
    vision.update(overrides or {})
    return {'embed_dim': cfg['embed_dim'], 'quick_gelu': cfg.get('quick_gelu', False), 'vision_cfg': vision}


def _load_state_dict_file(path):
    """Read a CLIP weight file in any of the layouts listed in the module docstring; returns the visual keys."""
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as load_error:  # OpenAI's original files are TorchScript archives
            try:
                state = torch.jit.load(path, map_location='cpu').state_dict()
            except Exception:
                raise RuntimeError(f'Cannot read CLIP weights {path!r}: {load_error}') from load_error
    for wrapper in ('state_dict', 'model'):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    if any(k.startswith('visual.') for k in state):
        state = {k[len('visual.'):]: v for k, v in state.items() if k.startswith('visual.')}
    return state


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
    import open_clip
    if pretrained in open_clip.list_pretrained_tags_by_model(model_name):
        return pretrained
    raise FileNotFoundError(f'network_g.clip_pretrained: {pretrained!r} is neither an existing file nor an '
                            f'open_clip pretrained tag of {model_name!r} '
                            f'({open_clip.list_pretrained_tags_by_model(model_name)}). Put the weights file there, '
                            f'e.g. {DEFAULT_CLIP_FILE}')


class CLIPTokenizer:
    """Frozen open_clip visual tower: RGB [0, 1] images -> (B, 1 + patches, width) tokens before ``ln_post``.

    Not an ``nn.Module`` on purpose (see the module docstring); :meth:`to` moves it. Use :func:`shared_clip_tokenizer`
    to build one, so that networks with equal CLIP options share it.

    Args:
        model_name (str): open_clip model name. Default: ``ViT-L-14-quickgelu``.
        pretrained (str | None): local weight file, open_clip tag, or None (random init).
        vision_overrides (dict | None): changes to the model's open_clip vision config (tests use a tiny tower).
    """

    def __init__(self, model_name=DEFAULT_CLIP_MODEL, pretrained=None, vision_overrides=None):
        import open_clip
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        cfg = clip_vision_config(model_name, vision_overrides)
        self.model_name, self.pretrained = model_name, pretrained
        # Built with its own seed: a random tower is the same in every process (train, test, each DDP rank), and
        # building it (lazily, at the first forward) leaves the global RNG stream of training untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            self.tower = _build_vision_tower(cfg['embed_dim'], CLIPVisionCfg(**cfg['vision_cfg']),
                                             quick_gelu=cfg['quick_gelu'])
        if pretrained is None:
            warnings.warn(f'CLIP {model_name} has random weights (network_g.clip_pretrained is not set; seeded, so '
                          f'equal in every process): its tokens carry no image semantics. Fine for tests and smoke '
                          f'runs only.', stacklevel=2)
        else:
            path = pretrained
            if not os.path.isfile(path):
                try:
                    path = open_clip.download_pretrained(open_clip.get_pretrained_cfg(model_name, pretrained))
                except Exception as error:
                    raise RuntimeError(_offline_message(model_name, pretrained, error)) from error
            state = _load_state_dict_file(path)
            try:
                self.tower.load_state_dict(state, strict=True)
            except RuntimeError as error:
                raise RuntimeError(f'CLIP weights {path!r} do not fit the {model_name} visual tower: '
                                   f'{error}') from error
        self.tower.eval().requires_grad_(False)

        pre = open_clip.get_pretrained_cfg(model_name, 'openai') or {}
        self.mean = tuple(pre.get('mean', open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(pre.get('std', open_clip.OPENAI_DATASET_STD))
        size = cfg['vision_cfg']['image_size']
        self.image_size = size if isinstance(size, int) else size[0]
        self.width = cfg['vision_cfg']['width']

    def to(self, *args, **kwargs):
        self.tower.to(*args, **kwargs)
        return self

    @property
    def device(self):
        return self.tower.conv1.weight.device

    def num_parameters(self):
        return sum(p.numel() for p in self.tower.parameters())

    def preprocess(self, img):
        """Resize the short side to the tower's input size (bicubic, antialias), centre-crop, normalise."""
        h, w = int(img.shape[-2]), int(img.shape[-1])  # python ints, also under jit tracing (complexity analysis)
        size = self.image_size
        new_h, new_w = (size, int(w * size / h)) if h < w else (int(h * size / w), size)
        img = TF.resize(img, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # torchvision's centre crop
        img = img[..., top:top + size, left:left + size]
        return TF.normalize(img, self.mean, self.std)

    @torch.no_grad()
    def __call__(self, img):
        x = self.preprocess(img.to(self.device, torch.float32))
        out = self.tower.forward_intermediates(x, indices=1, stop_early=True, normalize_intermediates=False,
                                               intermediates_only=True, output_fmt='NLC', output_extra_tokens=True)
        tokens = torch.cat([out['image_intermediates_prefix'][0], out['image_intermediates'][0]], dim=1)
        return tokens.to(img.dtype)


def shared_clip_tokenizer(model_name=DEFAULT_CLIP_MODEL, pretrained=None, vision_overrides=None):
    """One :class:`CLIPTokenizer` per set of options while any network holds it."""
    key = (model_name, pretrained, repr(sorted((vision_overrides or {}).items())))
    with _SHARED_LOCK:
        tokenizer = _SHARED_TOWERS.get(key)
        if tokenizer is None:
            tokenizer = CLIPTokenizer(model_name, pretrained, vision_overrides)
            _SHARED_TOWERS[key] = tokenizer
    return tokenizer


class FrozenTokenizerSlot:
    """Holds a tokenizer outside the module tree; deep copies (e.g. an EMA copy) share it instead of cloning it."""

    def __init__(self, factory):
        self._factory = factory
        self.tokenizer = None

    def get(self, device):
        if self.tokenizer is None:
            self.tokenizer = self._factory()
        if self.tokenizer.device != device:
            self.tokenizer.to(device)
        return self.tokenizer

    def __deepcopy__(self, memo):
        return self
