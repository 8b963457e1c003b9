"""Checkpoint reading and atomic writing for AllInOneModel (not a model module: the registry scan skips it)."""
import argparse
import collections
import pickle

import numpy as np
import torch

from .atomic import atomic_write


def atomic_torch_save(obj, path):
    """``torch.save`` atomically (:func:`.atomic.atomic_write`): a crash or a kill never leaves half a file under
    ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


# Pure-data classes that Lightning checkpoints (and older training scripts) pickle besides tensors: hyper-parameter
# containers and numpy scalars. Rebuilding them sets attributes or builds numbers; it runs no code from the file.
_multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray  # numpy 2 / numpy 1
SAFE_GLOBALS = [argparse.Namespace, collections.OrderedDict, collections.defaultdict, np.dtype, _multiarray.scalar]
SAFE_GLOBALS += [type(np.dtype(t)) for t in ('float64', 'float32', 'int64', 'int32', 'bool')]
TORCH_MAGIC = (b'PK\x03\x04', b'\x80')  # a torch.save zip archive, a legacy pickle


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A file that needs more than weights to be loaded: loading it would run Python code named in the file."""


def check_torch_file(path, key='path.pretrain_network_g'):
    """A file that is not a PyTorch file (JSON, an image, text, ...) is refused before anything unpickles it."""
    with open(path, 'rb') as f:
        head = f.read(8)
    if not head.startswith(TORCH_MAGIC):
        raise ValueError(f'{key}: {path} is not a PyTorch checkpoint (it starts with {head!r}; torch.save writes a '
                         'zip archive starting with PK, older files a pickle starting with \\x80)')


def load_checkpoint(path, logger=None, key='path.pretrain_network_g'):
    """``torch.load`` on the CPU with ``weights_only=True`` (tensors, numbers, strings, containers and the pure-data
    classes of ``SAFE_GLOBALS``): nothing in the file can run code. A file that needs anything else is refused with
    an :class:`UnsafeCheckpointError` naming the file and the offending globals, and how to convert it once with
    ``python -m allinone_basicsr.tools.convert IN OUT --trust-pickle`` if its source is trusted. The official PromptIR
    release (a Lightning checkpoint: state dict, optimizer and scheduler states, loop and callback metadata) loads.
    """
    check_torch_file(path, key)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'{key}: {path} holds Python objects that only a full unpickle can rebuild ({_offending(path, err)}); '
            'loading it could run code from the file, so it is refused. If you trust its source, convert it once to '
            f'a weights-only file: python -m allinone_basicsr.tools.convert {path} CONVERTED.pth --trust-pickle, then '
            f'point {key} at CONVERTED.pth.') from None


def _offending(path, err):
    """The globals (beyond :data:`SAFE_GLOBALS`) that the file at ``path`` needs, as text, from torch's refusal
    ``err``."""
    try:
        offending = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: the error message names the first one
        offending = [str(err).split('GLOBAL ')[-1].split(' ')[0]] if 'GLOBAL ' in str(err) else []
    allowed = {f'{g.__module__}.{g.__qualname__}' for g in SAFE_GLOBALS}
    return ', '.join([g for g in offending if g not in allowed] or ['objects torch does not name'])


def load_training_state(path, what='training state'):
    """A training state (``training_states/<iter>.state``) or the network file saved with it, ``torch.load``-ed on
    the CPU with ``weights_only=True``. One that holds pickled Python objects is refused with an
    :class:`UnsafeCheckpointError` naming the file and the objects, and our advice instead of torch's (which is to
    unpickle it fully: never for a file of unknown origin): the training writes only tensors and numbers, so such
    a file was written by another program or altered; resume from another state or start from weights."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f'{what} {path} holds Python objects that only a full unpickle can rebuild ({_offending(path, err)}); '
            'loading it could run code from the file, so it is refused. The training writes only tensors and numbers '
            'there: this file was written by another program or altered. Resume from another state (remove this one '
            'and --auto_resume takes the one before), or start afresh from a trusted weights file '
            '(path.pretrain_network_g).') from None


# Frozen submodules that official checkpoints save beside the network's own weights, which our archs hold outside
# their module tree: the official SE-SymUNet's whole Hugging Face CLIPModel (``clip_model.*``).
CLIP_PREFIX = 'clip_model.'
EMBEDDED_PREFIXES = (CLIP_PREFIX, )


class NetworkState(dict):
    """A network's state dict as a checkpoint holds it, minus the frozen submodules it embeds.

    ``embedded`` maps a prefix of :data:`EMBEDDED_PREFIXES` to that submodule's entries (prefix removed), e.g.
    ``{'clip_model.': {'vision_model.embeddings.class_embedding': ..., 'text_model...': ...}}``. A plain ``dict`` to
    everything else (key checks, ``nn.Module.load_state_dict``); an arch that holds such a submodule takes it from
    ``embedded`` in its own ``load_state_dict`` (``SESymUNet.load_official_state``), the others never see it.
    """

    def __init__(self, entries=(), embedded=None):
        super().__init__(entries)
        self.embedded = dict(embedded or {})
        self.source = None  # which part of the file it is, for the log (extract_state_dict sets it)


def split_embedded(state):
    """``state`` as a :class:`NetworkState`: the entries under :data:`EMBEDDED_PREFIXES` moved to ``embedded``
    (a NetworkState passes through; a state without such entries gets an empty ``embedded``)."""
    if isinstance(state, NetworkState):
        return state
    embedded = {}
    for prefix in EMBEDDED_PREFIXES:
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if part:
            embedded[prefix] = part
    own = NetworkState(((k, v) for k, v in state.items() if not k.startswith(EMBEDDED_PREFIXES)), embedded)
    if hasattr(state, '_metadata'):  # the module versions a saved state dict keeps: load_state_dict reads them
        own._metadata = state._metadata
    return own


def save_network_file(states, path):
    """BasicSR's network file, ``{param_key: state_dict}``: tensors on the CPU, without DDP's ``module.`` prefix,
    written atomically."""
    atomic_torch_save({key: {k: v.cpu() for k, v in strip_prefix(state).items()} for key, state in states.items()},
                      path)


def strip_prefix(state, prefix='module.'):
    """``state`` without ``prefix`` (DDP's ``module.`` by default) when every key has it; otherwise unchanged."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def extract_state_dict(ckpt, param_key='params', path='checkpoint', option='path.param_key_g'):
    """The network state dict inside a loaded checkpoint, whatever the known layout.

    Known layouts:
        - BasicSR / official SymUNet: ``{'params': ..., 'params_ema': ...}``: the entry ``param_key`` names (``None``:
          ``params``). A key the file lacks is a ValueError listing the keys it has, except ``params_ema`` in a file
          with only ``params`` (what a training without EMA writes): ``params`` is used, as stock BasicSR does, and
          ``source`` says so;
        - PyTorch Lightning / official PromptIR ``model.ckpt``: ``{'state_dict': {'net.<key>': ...}, 'epoch': ...}``
          (the ``net.`` entries, prefix removed; all entries if none has that prefix);
        - a bare state dict (the whole dict).
    The last two have no param key: ``param_key`` does not apply to them. DDP's ``module.`` prefix is removed.
    Anything else raises a ValueError listing the top-level keys found.
    Returns a :class:`NetworkState`: frozen submodules the checkpoint embeds (official SE-SymUNet: ``params`` with
    the Hugging Face CLIPModel under ``clip_model.``) are set apart in its ``embedded``, so the key checks see the
    network's own entries and the arch's ``load_state_dict`` takes the rest. Its ``source`` says, for the log, which
    part of the file it is (``param key [params_ema]``, ``the whole dict: the file has no param key ...``).
    """
    if not isinstance(ckpt, dict):
        raise ValueError(f'{path}: expected a dict checkpoint, got {type(ckpt).__name__}')
    state, source = None, None
    param_keys = sorted(str(k) for k, v in ckpt.items() if str(k).startswith('params') and isinstance(v, dict))
    ignored = f' ({option}: {param_key} does not apply)' if param_key not in (None, 'params') else ''
    if param_keys:
        use = 'params' if param_key is None else param_key
        if use not in param_keys and use == 'params_ema' and 'params' in param_keys:
            use, source = 'params', 'param key [params] (the file has no params_ema: BasicSR uses params then)'
        if use not in param_keys:
            raise ValueError(f'{option}: {use!r} is not a key of {path}; the keys it has: {param_keys}. Set {option} '
                             'to one of them (params_ema: the EMA weights, when the training kept them).')
        state, source = ckpt[use], source or f'param key [{use}]'
    elif isinstance(ckpt.get('state_dict'), dict):
        state = ckpt['state_dict']
        net = {k[len('net.'):]: v for k, v in state.items() if k.startswith('net.')}
        state = net or state
        what = "its state_dict's net.* entries" if net else 'its whole state_dict'
        source = f'{what}: the file has no param key (a Lightning checkpoint){ignored}'
    elif ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state, source = ckpt, f'the whole dict: the file has no param key (a bare state dict){ignored}'
    if state is None:
        raise ValueError(f'{path}: unknown checkpoint layout; top-level keys: {sorted(map(str, ckpt))[:20]}. '
                         'Known layouts: BasicSR {"params"/"params_ema": state_dict}, Lightning '
                         '{"state_dict": {"net.<key>": ...}} (official PromptIR), or a bare state_dict.')
    state = split_embedded(strip_prefix(state))
    state.source = source
    return state


_SYMUNET = {'intro', 'ending', 'encoders', 'downs', 'ups', 'decoders', 'middle_blks'}
_PROMPT = {'patch_embed', 'encoder_level1', 'encoder_level2', 'encoder_level3', 'latent', 'down1_2', 'down2_3',
           'down3_4', 'up4_3', 'up3_2', 'up2_1', 'decoder_level1', 'decoder_level2', 'decoder_level3',
           'reduce_chan_level2', 'reduce_chan_level3', 'prompt1', 'prompt2', 'prompt3', 'noise_level1', 'noise_level2',
           'noise_level3', 'reduce_noise_level1', 'reduce_noise_level2', 'reduce_noise_level3', 'refinement', 'output'}
# The top-level modules of each of the plugin's archs, as their state dicts name them (the first part of a key).
ARCH_SIGNATURES = {
    'SymUNet': _SYMUNET,
    'SESymUNet': _SYMUNET | {'middle_guide_attention', 'middle_refine_attention', 'decoder_guide_attentions',
                             'decoder_refine_attentions'},
    'DaAIR': {'patch_embed', 'encoders', 'downs', 'ups', 'decoders', 'fusions', 'refinement', 'output'},
    'PromptIR': _PROMPT | {'chnl_reduce1', 'chnl_reduce2', 'chnl_reduce3', 'reduce_noise_channel_1',
                           'reduce_noise_channel_2', 'reduce_noise_channel_3'},
    'PromptDSANet': _PROMPT | {'prompt_net', 'pim_convs'},
}


def guess_arch(keys):
    """The arch of :data:`ARCH_SIGNATURES` whose top-level modules best match those of the state dict ``keys``
    (Jaccard similarity of the first key parts, at least 0.75), or None when none does."""
    top = {k.split('.')[0] for k in keys}
    scores = {arch: len(top & names) / len(top | names) for arch, names in ARCH_SIGNATURES.items()}
    best = max(scores, key=scores.get) if top else None
    return best if best and scores[best] >= 0.75 else None


def check_state_dict_fits(net, state, strict, load_path, key='path.pretrain_network_g'):
    """A clear error for a checkpoint of another arch or config, in one message: the file, the arch the options
    build, the arch the file's keys look like (:func:`guess_arch`, when another one), and the count of mismatching,
    missing and unexpected keys with the first three of each."""
    own = net.state_dict()
    wrong = [f'{k}: checkpoint {tuple(v.shape)} vs network {tuple(own[k].shape)}'
             for k, v in state.items() if k in own and hasattr(v, 'shape') and v.shape != own[k].shape]
    missing = [k for k in own if k not in state] if strict else []
    unexpected = [k for k in state if k not in own] if strict else []
    if wrong or missing or unexpected:
        parts = [f'{name} ({len(keys)}): {", ".join(keys[:3])}{" ..." if len(keys) > 3 else ""}'
                 for name, keys in (('shape mismatch', wrong), ('missing in the checkpoint', missing),
                                    ('not in the network', unexpected)) if keys]
        arch, seems = net.__class__.__name__, guess_arch(state)
        why = (f'the file seems to be a {seems} checkpoint: set network_g.type (and its options) to match, or point '
               f'{key} at a {arch} file' if seems and seems != arch else
               'another arch or network_g config? network_g must describe the network the file was saved from')
        raise ValueError(f'{key}: {load_path} does not fit {arch} (the network network_g builds); {why}. '
                         + '; '.join(parts))
