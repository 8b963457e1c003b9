"""Restore arbitrary images with a trained model: any size and format, optional tiled inference.

    python -m allinone_basicsr.tools.restore -opt options/test_symunet.yml --input DIR_OR_IMAGE --output DIR
                                       [--tile 512 [--tile-overlap 32]] [--device cpu|cuda|cuda:N] [--overwrite]

The network and weights come from the option file (``network_g``, ``path.pretrain_network_g``, any checkpoint
layout ``AllInOneModel`` loads). Grey images are restored as RGB, alpha channels are dropped, 16-bit images are
read as 8-bit (with a warning). ``--tile T`` cuts the image into T×T tiles that overlap by ``--tile-overlap`` pixels,
restores them one by one and blends the seams with a linear ramp, so memory depends on T, not on the image size
(tiles see less context than the whole image: outputs differ slightly from untiled ones).

Checked before the model loads (an error, exit status 2, nothing written): ``--tile`` is 0 (whole images) or
positive; ``--tile-overlap`` is at least 0 and at most half the tile (each tile's blending ramps rise over its
first and fall over its last ``overlap`` pixels, so two of them must fit in a tile; the default is 32, or half the
tile if that is smaller); the option file, its network type and its weights file exist; ``--input`` exists and
holds images; ``--output`` is not the input folder nor inside it (real paths compared, so symlinks do not hide it;
for a single image: not the image's folder) unless ``--overwrite`` is given; the output folder is created and a
file can be written in it (a read-only folder is an error, even for root); ``--device`` exists on this machine.

Outputs: one PNG per input, named after it (``photo.jpg`` -> ``photo.png``). Inputs that share a stem (compared
ignoring case, as case-insensitive file systems would merge them) get their extension in the name: ``x.jpg`` and
``x.png`` -> ``x_jpg.png`` and ``x_png.png``, the others keep theirs; names that still clash are numbered (``_1``,
``_2``, in sorted input order). Hidden files (names starting with ``.``) are skipped. An output file left by an earlier
run in the output folder is replaced (the summary counts them); an input file is never replaced, unless
``--overwrite`` allowed the input folder as output (then ``x.png`` is restored in place; ``x.jpg`` gives a new
``x.png`` beside it). Every output is encoded in memory, written to a hidden temporary file in the output folder,
synced and renamed, so a failed or killed run never leaves half a PNG (temporary files of dead runs are removed at
the next start).

Failures: an unreadable, corrupt or truncated image (a JPEG without its end-of-image marker, a PNG cut short or
failing a chunk checksum, a TIFF whose directory or strips run past the end, a WebP shorter than its RIFF size, any
image Pillow can open but not decode completely, which covers BMP, PPM and PGM), a failed write, or an error while
restoring one image is reported; that image is skipped and the others are restored. A summary at the end lists
every failed file with the reason; the exit status is then 1 (0 when every image was restored; 2 for an argument
error or a network that cannot be built from the option file).
"""
import argparse
import os
import pickle
import re
import socket
import sys
import tempfile
from collections import Counter
from os import path as osp

import cv2
import numpy as np
import torch
from tqdm import tqdm

import allinone_basicsr  # noqa: F401  (registers the archs)
from allinone_basicsr.data.image_io import IMG_EXTENSIONS, ImageError, read_image
from allinone_basicsr.models.precision import amp_dtype, autocast
from allinone_basicsr.tools.common import InputNotFoundError, UsageError
from allinone_basicsr.tools.common import build_network as common_build_network
from allinone_basicsr.tools.common import run
from allinone_basicsr.utils.atomic import atomic_write
from allinone_basicsr.utils.checkpoint import check_state_dict_fits, extract_state_dict, load_checkpoint
from allinone_basicsr.utils.experiment import alive
from allinone_basicsr.utils.options import OptionFileError, read_yaml

from basicsr.utils.registry import ARCH_REGISTRY

DEFAULT_OVERLAP = 32
_HOST = re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname()) or 'host'
_TMP_RE = re.compile(r'^\..+\.tmp-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)$')


# ---------------------------------------------------------------------------------------------------------------
# The network and tiled inference


def build_network(opt, device):
    """The option file's network with its weights (``path.pretrain_network_g``, ``path.param_key_g``), in eval mode on
    ``device``; external weight files (CLIP) as the options name them."""
    net = common_build_network(opt['network_g'], pretrained=True)
    path = (opt.get('path') or {}).get('pretrain_network_g')
    if not path:
        raise ValueError('path.pretrain_network_g: the option file names no weights to restore with')
    if not osp.isfile(path):
        raise FileNotFoundError(f'path.pretrain_network_g: no such file: {path}')
    state = extract_state_dict(load_checkpoint(path), (opt.get('path') or {}).get('param_key_g', 'params'), path)
    check_state_dict_fits(net, state, True, path)  # one message, not torch's lists of every key
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def _ramp(length, overlap):
    """Blending weights along one axis of a tile: rising over ``overlap`` pixels at both ends, never zero."""
    w = np.ones(length, np.float32)
    if overlap > 0:
        ramp = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        n = min(overlap, length // 2)
        w[:n], w[length - n:] = ramp[:n], ramp[:n][::-1]
    return w


def _blend_mask(height, width, overlap, like):
    """(1, 1, height, width) blending weights of one tile, on ``like``'s device and dtype."""
    return torch.from_numpy(np.outer(_ramp(height, overlap), _ramp(width, overlap))).to(like)[None, None]


def _starts(size, tile, step):
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


def tiling_problem(tile, overlap):
    """None when ``tile`` and ``overlap`` can be blended, otherwise why not.

    Tiles start every ``tile - overlap`` pixels and each one's weights rise over its first ``overlap`` pixels and
    fall over its last ``overlap`` ones (``_ramp``): a negative overlap leaves gaps that no tile covers (weight 0:
    black or NaN stripes), and an overlap above half the tile makes the two ramps collide (``_ramp`` cuts them to
    half the tile) while every pixel falls into three or more tiles: the seams are not blended as asked and the
    number of tiles explodes. So: ``tile`` >= 0 (0 = whole images) and, when tiling, 0 <= 2 * overlap <= tile.
    """
    if tile < 0:
        return f'--tile {tile}: must be positive (or 0 to restore whole images)'
    if overlap < 0:
        return f'--tile-overlap {overlap}: must be 0 or more (a negative overlap leaves unrestored stripes)'
    if tile and 2 * overlap > tile:
        return (f'--tile-overlap {overlap} is more than half of --tile {tile}: the blending ramps at both ends of a '
                f'tile would collide; use --tile-overlap {tile // 2} or less, or --tile {2 * overlap} or more')
    return None


@torch.no_grad()
def restore_tensor(net, img, tile=0, overlap=DEFAULT_OVERLAP):
    """(1, 3, H, W) -> restored (1, 3, H, W). ``tile`` > 0: blended overlapping tiles of that size (a ValueError
    when ``tile`` and ``overlap`` cannot be blended, see :func:`tiling_problem`)."""
    if tile:
        problem = tiling_problem(tile, overlap)
        if problem:
            raise ValueError(problem)
    h, w = img.shape[-2:]
    if not tile or (h <= tile and w <= tile):
        return net(img)
    out = torch.zeros_like(img)
    weight = torch.zeros((1, 1, h, w), dtype=img.dtype, device=img.device)
    step = tile - overlap
    masks = {}  # tile shape -> blend mask: made (and copied to the device) once per shape, not once per tile
    for y in _starts(h, tile, step):
        for x in _starts(w, tile, step):
            patch = img[..., y:y + tile, x:x + tile]
            ph, pw = patch.shape[-2:]
            mask = masks.get((ph, pw))
            if mask is None:
                mask = masks[(ph, pw)] = _blend_mask(ph, pw, overlap, img)
            out[..., y:y + ph, x:x + pw] += net(patch) * mask
            weight[..., y:y + ph, x:x + pw] += mask
    return out / weight


# ---------------------------------------------------------------------------------------------------------------
# Arguments, inputs and outputs


def list_inputs(path):
    """The image files to restore: ``path`` itself, or the images of folder ``path`` (by extension, sorted, hidden
    files skipped, no sub-folders)."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise InputNotFoundError(f'--input: no such file or folder: {path}')
    files = sorted(osp.join(path, f) for f in os.listdir(path)
                   if not f.startswith('.') and osp.splitext(f)[1].lower() in IMG_EXTENSIONS
                   and osp.isfile(osp.join(path, f)))
    if not files:
        raise UsageError(f'--input: no images in {path} (extensions: {" ".join(IMG_EXTENSIONS)})')
    return files


def output_names(files):
    """Input path -> output PNG name, unique even on case-insensitive file systems. An input whose stem no other
    input shares (compared case-insensitively) keeps it: ``photo.jpg`` -> ``photo.png``. Inputs sharing a stem
    take their extension: ``x.jpg``, ``x.png`` -> ``x_jpg.png``, ``x_png.png``; a name that still clashes
    (``X.JPG`` and ``x.jpg``, or an input already called ``x_jpg.png``, which keeps its name) is numbered in input
    order: ``X_jpg_1.png``, ``x_jpg_2.png``. Deterministic: the same inputs always give the same names."""
    split = {p: osp.splitext(osp.basename(p)) for p in files}
    stems = Counter(stem.casefold() for stem, _ in split.values())
    names = {p: stem for p, (stem, _) in split.items() if stems[stem.casefold()] == 1}
    taken = {name.casefold() for name in names.values()}
    wanted = {p: f'{stem}_{ext[1:].lower() or "noext"}' for p, (stem, ext) in split.items() if p not in names}
    counts = Counter(w.casefold() for w in wanted.values())
    clear = {p: w for p, w in wanted.items() if counts[w.casefold()] == 1 and w.casefold() not in taken}
    names.update(clear)
    taken |= {w.casefold() for w in clear.values()}
    for path in files:
        if path in wanted and path not in clear:
            k = 1
            while f'{wanted[path]}_{k}'.casefold() in taken:
                k += 1
            names[path] = f'{wanted[path]}_{k}'
            taken.add(names[path].casefold())
    return {path: names[path] + '.png' for path in files}


def _same_or_inside(folder, other):
    """'is' when ``folder`` is ``other``, 'is inside' when it lies below it, else None. Real paths and file
    identities are compared, so symlinks (and bind mounts) do not hide it; ``folder`` need not exist yet."""
    target = os.stat(other)
    probe = osp.realpath(folder)
    first = True
    while True:
        try:
            if osp.samestat(os.stat(probe), target):
                return 'is' if first else 'is inside'
        except OSError:  # not created yet
            pass
        parent = osp.dirname(probe)
        if parent == probe:
            return None
        probe, first = parent, False


def check_output_folder(input_path, output, overwrite):
    """The output folder may not be (or lie inside) the input folder, unless ``overwrite``: restored PNGs would
    replace inputs or be mixed with them. For a single image, only its own folder is refused."""
    if osp.exists(output) and not osp.isdir(output):
        raise UsageError(f'--output {output}: exists and is not a folder')
    if overwrite:
        return
    if osp.isdir(input_path):
        where = _same_or_inside(output, input_path)
        folder = input_path
    else:
        folder = osp.dirname(osp.abspath(input_path))
        where = 'is' if _same_or_inside(output, folder) == 'is' else None
    if where:
        raise UsageError(f'--output {output} {where} the input folder {folder}: the restored PNGs could replace the '
                         'originals or be mixed with them; choose another folder, or pass --overwrite to allow it')


def check_device(name):
    """``name`` -> a torch.device that exists and works on this machine (a UsageError otherwise)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UsageError(f'--device {name!r}: not a device name ({err}); use cpu, cuda or cuda:N') from None
    try:
        torch.zeros(1, device=device)
    except Exception as err:  # no CUDA build or driver, an index beyond the device count, an unknown backend...
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f'--device {name}: not usable on this machine ({msg})') from None
    return device


def load_options(path):
    """The option file (``utils.options.read_yaml``: data only), with what restoring needs checked (a UsageError
    naming the key otherwise)."""
    try:
        opt = read_yaml(path)
    except OptionFileError as err:
        raise UsageError(f'-opt {path}: {err}') from None
    net = opt.get('network_g') if isinstance(opt, dict) else None
    if not isinstance(net, dict) or not net.get('type'):
        raise UsageError(f'-opt {path}: network_g (a mapping with a type) is missing')
    if net['type'] not in ARCH_REGISTRY:
        raise UsageError(f'-opt {path}: network_g.type {net["type"]!r} is not a registered network')
    weights = (opt.get('path') or {}).get('pretrain_network_g')
    if not weights:
        raise UsageError(f'-opt {path}: path.pretrain_network_g names no weights to restore with')
    if not osp.isfile(weights):
        raise UsageError(f'-opt {path}: path.pretrain_network_g: no such file: {weights}')
    return opt


def prepare_output_folder(output):
    """Create ``output``, prove a file can be written there (os.access is no proof: root passes it on a read-only
    mount) and remove the temporary files that killed runs on this host left behind."""
    try:
        os.makedirs(output, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.restore-probe-', dir=output)
        try:
            os.write(fd, b'probe')
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        raise UsageError(f'--output {output}: cannot write there ({err.strerror or err})') from None
    for name in os.listdir(output):
        match = _TMP_RE.match(name)
        if match and match['host'] == _HOST and not alive(int(match['pid'])):
            try:
                os.remove(osp.join(output, name))
            except OSError:
                pass


def _file_id(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def write_png(target, bgr):
    """Write ``bgr`` (HxWx3 uint8) as a PNG at ``target`` atomically: encoded in memory, written to a hidden
    temporary file beside ``target``, synced, renamed. Any failure raises; no partial file stays."""
    ok, buf = cv2.imencode('.png', bgr)
    if not ok or buf is None:
        raise OSError(f'cannot write {target} (PNG encoding failed)')
    folder, name = osp.split(target)
    try:
        atomic_write(target, lambda f: f.write(buf.tobytes()), osp.join(folder, f'.{name}.tmp-{_HOST}-{os.getpid()}'))
    except OSError as err:
        raise OSError(f'cannot write {target} ({err.strerror or err})') from err


_ALLOCATION_FAILURES = ('out of memory', 'not enough memory', "can't allocate", 'cannot allocate')
_ASKED = re.compile(r'(?:tried to allocate|Tried to allocate) (\d+(?:\.\d+)?) ?(bytes|[KMGT]iB)', re.I)


def allocation_failure(err, tile=0):
    """A hint for an allocation failure during restoration (``MemoryError``, ``torch.OutOfMemoryError`` / CUDA's, a
    RuntimeError of the CPU allocator: "DefaultCPUAllocator: can't allocate memory" / "not enough memory"), else None:
    the memory asked for when the message says it, and the ``--tile`` to use (512 for whole images, else half the
    tile)."""
    oom = getattr(torch, 'OutOfMemoryError', torch.cuda.OutOfMemoryError)
    text = str(err)
    if not isinstance(err, (MemoryError, oom)) and not (
            isinstance(err, RuntimeError) and any(s in text.lower() for s in _ALLOCATION_FAILURES)):
        return None
    asked = _ASKED.search(text)
    if asked:
        number, unit = float(asked.group(1)), asked.group(2)
        size = f'{number / 2**30:.2f} GiB' if unit.lower() == 'bytes' else f'{number:g} {unit}'
        asked = f'it asked for {size} more'
    advice = ('use --tile 512 (or smaller) to restore the image in tiles' if not tile else
              f'use a smaller tile, e.g. --tile {max(tile // 2, 16)}')
    return f'not enough memory ({asked or "the allocation failed"}): {advice}'


def _reason(err, tile=0):
    if isinstance(err, ImageError):
        return err.reason
    if isinstance(err, OSError):
        return f'{err.strerror}: {err.filename}' if err.strerror and err.filename else str(err)
    reason = f'{type(err).__name__}: {err}'
    hint = allocation_failure(err, tile)
    return f'{hint} [{reason.splitlines()[0]}]' if hint else reason


def _parser():
    doc = __doc__.split('\n\n')
    parser = argparse.ArgumentParser(prog='allinone-restore', description=doc[0],
                                     epilog='\n\n'.join(doc[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='a test option file (network_g, path.pretrain_network_g)')
    parser.add_argument('--input', required=True, help='an image or a folder of images (not its sub-folders)')
    parser.add_argument('--output', required=True,
                        help='folder for the restored PNG files (created; not the input folder nor inside it)')
    parser.add_argument('--tile', type=int, default=0, help='tile size in pixels (0 = whole image, the default)')
    parser.add_argument('--tile-overlap', type=int, default=None,
                        help=f'overlap of neighbouring tiles in pixels, 0 to --tile/2 (default: {DEFAULT_OVERLAP}, '
                             'or --tile/2 if smaller)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--amp', choices=('bf16', 'fp16', 'fp32'), default=None,
                        help="inference precision (default: the option file's val.amp, else fp32); bf16 runs on CPUs "
                             'and GPUs, fp16 is for GPUs')
    parser.add_argument('--overwrite', action='store_true',
                        help='allow --output to be the input folder or inside it (restores x.png in place)')
    return parser


def main(argv=None):
    """Restore the images; returns how many were restored. Argument errors raise a :class:`UsageError` (a
    ValueError; ``--input`` missing: also a FileNotFoundError) before the model loads; when any image failed, the
    summary is printed on stderr and ``SystemExit(1)`` is raised after all the others were restored."""
    args = _parser().parse_args(argv)
    tile = args.tile
    overlap = args.tile_overlap if args.tile_overlap is not None else min(DEFAULT_OVERLAP, max(tile, 0) // 2)
    problem = tiling_problem(tile, overlap)
    if problem:
        raise UsageError(problem)
    opt = load_options(args.opt)
    try:
        precision = amp_dtype(args.amp or (opt.get('val') or {}).get('amp'), 'val.amp')
    except ValueError as err:
        raise UsageError(f'-opt {args.opt}: {err}') from None
    files = list_inputs(args.input)
    check_output_folder(args.input, args.output, args.overwrite)
    device = check_device(args.device)
    created = not osp.isdir(args.output)
    prepare_output_folder(args.output)
    try:
        net = build_network(opt, device)
    except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        if created:  # leave no empty folder behind
            try:
                os.rmdir(args.output)
            except OSError:
                pass
        raise UsageError(f'cannot build the network of {args.opt}: {err}') from err

    names = output_names(files)
    inputs = {}
    for path in files:
        try:
            inputs[_file_id(path)] = path
        except OSError:  # vanished: reported when it is read
            pass
    failures, replaced, done = [], 0, 0
    for path in tqdm(files, unit='image', desc='restore'):
        target = osp.join(args.output, names[path])
        try:
            existed = osp.lexists(target)
            other = inputs.get(_file_id(target)) if existed and osp.exists(target) else None
            if other is not None and (other != path or not args.overwrite):  # hard links, symlinked files
                raise OSError(f'{target} is the input file {other}: not replaced'
                              + ('' if args.overwrite else ' (without --overwrite)'))
            img = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].to(device)
            with autocast(device, precision):
                out = restore_tensor(net, img, tile, overlap)
            out = out[0].float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            del img
            write_png(target, (out[..., ::-1] * 255.0).round().astype(np.uint8))
        except Exception as err:  # one bad image must not stop the batch: reported here and in the summary
            if device.type == 'cuda':
                torch.cuda.empty_cache()
            failures.append((path, _reason(err, tile)))
            tqdm.write(f'restore: failed: {path}: {failures[-1][1]}', file=sys.stderr)
            continue
        done += 1
        replaced += existed

    note = f' ({replaced} existing files replaced)' if replaced else ''
    print(f'restore: {done} of {len(files)} images restored into {args.output}{note}')
    if failures:
        lines = '\n'.join(f'  {path}: {reason}' for path, reason in failures)
        print(f'restore: {len(failures)} of {len(files)} images FAILED (skipped):\n{lines}', file=sys.stderr)
        raise SystemExit(1)
    return done


def cli(argv=None):
    """The command: exit status 0 (all restored), 1 (some images failed, listed) or 2 (an argument error)."""
    run(lambda args: main(args) and 0, 'restore', argv)  # main returns the count of restored images


if __name__ == '__main__':
    cli()
