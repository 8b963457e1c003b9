"""Convert a checkpoint once into the lean, weights-only format the package loads.

    python -m allinone_basicsr.convert IN OUT [--param-key params] [--trust-pickle]

Reads IN in any layout ``path.pretrain_network_g`` understands (BasicSR ``params`` / ``params_ema``, a Lightning
``state_dict`` with the ``net.`` prefix such as the official PromptIR release, a bare state dict; a DDP ``module.``
prefix is removed) and writes OUT as BasicSR's ``{'params': state_dict}`` with tensors only, atomically.

By default IN is read with ``weights_only=True`` like every load of the package. ``--trust-pickle`` reads a file that
holds other Python objects (hyper-parameter classes of a training script, a TorchScript archive) with a full
unpickle, which runs whatever code the file names: only for files from a source you trust. The OUT it writes holds
weights only, so later loads need no trust.
"""
import argparse
import sys

import torch

from allinone_basicsr.models.checkpoint_util import (UnsafeCheckpointError, atomic_torch_save, check_torch_file,
                                                     extract_state_dict, load_checkpoint)


def read_trusted(path):
    """A full unpickle (or a TorchScript archive's state dict): runs code named in the file."""
    check_torch_file(path, 'IN')
    try:
        return torch.load(path, map_location='cpu', weights_only=False)
    except RuntimeError as err:
        if 'TorchScript' not in str(err) and 'jit' not in str(err):
            raise
        return torch.jit.load(path, map_location='cpu').state_dict()


def convert(src, dst, param_key='params', trust_pickle=False):
    """Write ``dst`` = ``{'params': the network state dict of src}`` (tensors only); returns the number of tensors."""
    ckpt = read_trusted(src) if trust_pickle else load_checkpoint(src, key='IN')
    state = extract_state_dict(ckpt, param_key, src)
    tensors = {k: v.detach().cpu().clone() for k, v in state.items() if torch.is_tensor(v)}
    dropped = sorted(set(state) - set(tensors))
    if dropped:
        print(f'convert: dropped {len(dropped)} non-tensor entries: {dropped[:5]}', file=sys.stderr)
    atomic_torch_save({'params': tensors}, dst)
    return len(tensors)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', metavar='IN', help='checkpoint to read')
    parser.add_argument('dst', metavar='OUT', help='weights-only BasicSR file to write')
    parser.add_argument('--param-key', default='params', help='params or params_ema of a BasicSR file (default params)')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='read IN with a full unpickle: runs code named in the file; only for trusted sources')
    args = parser.parse_args(argv)
    if args.trust_pickle:
        print(f'convert: --trust-pickle: {args.src} is unpickled in full (it may run code). OUT holds weights only.',
              file=sys.stderr)
    try:
        count = convert(args.src, args.dst, args.param_key, args.trust_pickle)
    except (UnsafeCheckpointError, ValueError, FileNotFoundError) as err:
        sys.exit(f'convert: {err}')
    print(f'convert: wrote {count} tensors to {args.dst}')


if __name__ == '__main__':
    main()
