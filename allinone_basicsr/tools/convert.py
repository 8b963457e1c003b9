"""Convert a checkpoint once into the lean, weights-only format the package loads.

    python -m allinone_basicsr.tools.convert IN OUT [--param-key params] [--trust-pickle] [--clip-out FILE]
                                              [--arch TYPE] [--opt OPTION_FILE]

Reads IN in any layout ``path.pretrain_network_g`` understands (BasicSR ``params`` / ``params_ema`` as the official
SymUNet code saves them, a Lightning ``state_dict`` with the ``net.`` prefix such as the official PromptIR release,
the official SE-SymUNet file with the whole Hugging Face CLIPModel under ``clip_model.``, a bare state dict; a DDP
``module.`` prefix is removed) and writes OUT as BasicSR's ``{'params': state_dict}`` with tensors only, atomically.

An official SE-SymUNet file also gives the CLIP vision tower it embeds, converted to open_clip's layout (the
``visual.*`` keys of an open_clip CLIP state dict), written to OUT's name with the suffix ``_clip_visual.pth``
(``--clip-out`` to choose): set ``network_g.clip_pretrained`` to it. Its text tower is dropped. Nothing is
rounded or recomputed: the converted files give the same outputs as IN.

``--arch TYPE`` and/or ``--opt OPTION_FILE`` check the result: the network (``network_g`` of the option file, or
TYPE with its defaults) is built, OUT loads into it strictly and the CLIP file into its tower.

By default IN is read with ``weights_only=True`` like every load of the package. ``--trust-pickle`` reads a file that
holds other Python objects (hyper-parameter classes of a training script, a TorchScript archive) with a full
unpickle, which runs whatever code the file names: only for files from a source you trust. The OUT it writes holds
weights only, so later loads need no trust.
"""
import argparse
import collections
import os
import sys

import torch

from allinone_basicsr.tools.common import InputNotFoundError, UsageError, build_network, read_options, run
from allinone_basicsr.utils.checkpoint import (CLIP_PREFIX, UnsafeCheckpointError, atomic_torch_save,
                                               check_state_dict_fits, check_torch_file, extract_state_dict,
                                               load_checkpoint)
from allinone_basicsr.utils.smoke import without_pretrained

from basicsr.utils.registry import ARCH_REGISTRY

CLIP_SUFFIX = '_clip_visual.pth'


def read_trusted(path):
    """A full unpickle (or a TorchScript archive's state dict): runs code named in the file."""
    check_torch_file(path, 'IN')
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except RuntimeError as err:
        if 'TorchScript' not in str(err) and 'jit' not in str(err):
            raise
        return torch.jit.load(path, map_location='cpu').state_dict()


def clip_path_for(dst):
    """Where the CLIP vision tower of ``dst`` goes by default: ``net.pth`` -> ``net_clip_visual.pth``."""
    return os.path.splitext(dst)[0] + CLIP_SUFFIX


def _tensors(state, what):
    tensors = {k: v.detach().cpu().clone() for k, v in state.items() if torch.is_tensor(v)}
    dropped = sorted(set(state) - set(tensors))
    if dropped:
        print(f'convert: dropped {len(dropped)} non-tensor entries of {what}: {dropped[:5]}', file=sys.stderr)
    return tensors


def convert(src, dst, param_key='params', trust_pickle=False, clip_dst=None):
    """Write ``dst`` = ``{'params': the network state dict of src}`` (tensors only) and, if src embeds the official
    CLIPModel, its vision tower in open_clip's layout to ``clip_dst`` (default :func:`clip_path_for`).

    Returns:
        dict: ``tensors`` (written to dst), ``clip`` (the CLIP file, or None), ``clip_counts`` (what the embedded
        CLIPModel held: see :func:`~allinone_basicsr.archs.clip_tokens.hf_clip_to_open_clip_visual`).
    """
    ckpt = read_trusted(src) if trust_pickle else load_checkpoint(src, key='IN')
    state = extract_state_dict(ckpt, param_key, src)
    unknown = sorted(set(state.embedded) - {CLIP_PREFIX})
    if unknown:
        raise ValueError(f'{src}: embedded submodules this converter does not know: {unknown}')
    report = {'tensors': 0, 'clip': None, 'clip_counts': None}
    clip = None
    if CLIP_PREFIX in state.embedded:
        from allinone_basicsr.archs.clip_tokens import hf_clip_to_open_clip_visual
        visual, report['clip_counts'] = hf_clip_to_open_clip_visual(state.embedded[CLIP_PREFIX],
                                                                    CLIP_PREFIX.rstrip('.'))
        clip = {f'visual.{k}': v for k, v in _tensors(visual, 'the CLIP tower').items()}
        report['clip'] = clip_dst or clip_path_for(dst)
        if os.path.abspath(report['clip']) == os.path.abspath(dst):
            raise ValueError(f'--clip-out must differ from OUT ({dst})')
    params = collections.OrderedDict(_tensors(state, 'the network'))
    if hasattr(state, '_metadata'):  # module versions, as torch saves them with a state dict (minus the CLIP's)
        params._metadata = collections.OrderedDict(
            (k, v) for k, v in state._metadata.items() if not f'{k}.'.startswith(tuple(state.embedded)))
    atomic_torch_save({'params': params}, dst)
    if clip is not None:
        atomic_torch_save(clip, report['clip'])
    report['tensors'] = len(params)
    return report


def network_options(arch=None, opt_file=None):
    """``network_g`` of ``opt_file`` (or ``{'type': arch}``) with external weight files unset: what the check builds."""
    network = {}
    if opt_file:
        network = dict((read_options(opt_file, check=False)).get('network_g') or {})
        if not network.get('type'):
            raise UsageError(f'--opt {opt_file}: no network_g.type')
        if arch and arch != network['type']:
            raise UsageError(f'--arch {arch} differs from network_g.type {network["type"]} of {opt_file}')
    network.setdefault('type', arch)
    return without_pretrained(network)


def check_fits(dst, report, arch=None, opt_file=None, network=None):
    """Build the network (``--opt`` / ``--arch``, or ``network`` as :func:`network_options` gave it), load ``dst``
    into it strictly and the CLIP file into its tower."""
    network = dict(network or network_options(arch, opt_file))
    if report['clip']:
        cls = ARCH_REGISTRY.get(network['type']) if network['type'] in ARCH_REGISTRY else None
        if not hasattr(cls, 'clip_tokenizer'):
            raise ValueError(f'the checkpoint embeds a CLIP model, but {network["type"]} has no CLIP tower')
        network['clip_pretrained'] = report['clip']
    net = build_network(network, pretrained=True)
    cls = type(net)
    params = load_checkpoint(dst, key='OUT')['params']
    check_state_dict_fits(net, params, True, dst)
    net.load_state_dict(params, strict=True)
    if report['clip']:
        net.clip_tokenizer()  # loads the CLIP file into the network's tower, strictly
    return cls.__name__


def main(argv=None):
    """Convert (and check); returns 0, or 1 when the check failed (the message on stderr); a file that cannot be
    converted is a :class:`UsageError`."""
    parser = argparse.ArgumentParser(prog='allinone-convert', description=__doc__.split('\n\n')[0],
                                     epilog=__doc__.split('\n\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', metavar='IN', help='checkpoint to read')
    parser.add_argument('dst', metavar='OUT', help='weights-only BasicSR file to write')
    parser.add_argument('--param-key', default='params', help='params or params_ema of a BasicSR file (default params)')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='read IN with a full unpickle: runs code named in the file; only for trusted sources')
    parser.add_argument('--clip-out', metavar='FILE',
                        help=f'where the embedded CLIP vision tower goes (default: OUT with suffix {CLIP_SUFFIX})')
    parser.add_argument('--arch', metavar='TYPE', help='check that OUT loads strictly into this arch')
    parser.add_argument('--opt', metavar='OPTION_FILE',
                        help='check that OUT loads strictly into the network_g of this option file')
    args = parser.parse_args(argv)
    if args.trust_pickle:
        print(f'convert: --trust-pickle: {args.src} is unpickled in full (it may run code). OUT holds weights only.',
              file=sys.stderr)
    network = network_options(args.arch, args.opt) if args.arch or args.opt else None  # --opt read first
    if not os.path.isfile(args.src):
        raise InputNotFoundError(f'IN {args.src}: no such file')
    if os.path.isdir(args.dst):
        raise UsageError(f'OUT {args.dst}: a folder; give the file to write')
    folder = os.path.dirname(os.path.abspath(args.dst))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(f'OUT {args.dst}: cannot create its folder {folder} ({err.strerror or err})') from None
    try:
        report = convert(args.src, args.dst, args.param_key, args.trust_pickle, args.clip_out)
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    except OSError as err:  # the write: name OUT, not the temporary file
        raise UsageError(f'OUT {args.dst}: cannot write it ({err.strerror or err})') from None
    print(f'convert: wrote {report["tensors"]} tensors to {args.dst}')
    if report['clip']:
        counts = report['clip_counts']
        print(f'convert: the file embeds the official CLIPModel ({counts["keys"]} {CLIP_PREFIX}* keys): wrote its '
              f'vision tower and visual_projection ({counts["vision"]} keys) as {counts["tensors"]} open_clip '
              f'tensors to {report["clip"]} (set network_g.clip_pretrained: {report["clip"]}); dropped the text '
              f'tower ({counts["text"]} keys)')
    if args.arch or args.opt:
        try:
            name = check_fits(args.dst, report, network=network)
        except UsageError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, FileNotFoundError) as err:
            print(f'convert: check failed: {err}', file=sys.stderr)
            return 1
        print(f'convert: checked: {args.dst} loads strictly into {name}'
              f'{f" (network_g of {args.opt})" if args.opt else " (its defaults)"}'
              f'{", and the CLIP file into its tower" if report["clip"] else ""}')
    return 0


def cli(argv=None):
    run(main, 'convert', argv)


if __name__ == '__main__':
    cli()
