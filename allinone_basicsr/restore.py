"""Restore arbitrary images with a trained model: any size and format, optional tiled inference.

    python -m allinone_basicsr.restore -opt options/test_symunet.yml --input DIR_OR_IMAGE --output DIR
                                       [--tile 512 --tile-overlap 32] [--device cpu|cuda]

The network and weights come from the option file (``network_g``, ``path.pretrain_network_g``, any checkpoint
layout ``AllInOneModel`` loads). Grey images are restored as RGB, alpha channels are dropped, 16-bit images are
read as 8-bit (with a warning). ``--tile T`` cuts the image into T×T tiles that overlap by ``--tile-overlap`` pixels,
restores them one by one and blends the seams with a linear ramp, so memory depends on T, not on the image size
(tiles see less context than the whole image: outputs differ slightly from untiled ones). Outputs are PNG files
named like the inputs.
"""
import argparse
import os
from os import path as osp

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

import allinone_basicsr  # noqa: F401  (registers the archs)
from allinone_basicsr.data.image_io import IMG_EXTENSIONS, to_bgr8
from allinone_basicsr.models.checkpoint_util import extract_state_dict, load_checkpoint
from basicsr.utils.registry import ARCH_REGISTRY


def read_image(path):
    """Any image file -> HxWx3 float32 RGB in [0, 1] (grey -> RGB, alpha dropped, 16-bit -> 8-bit with a warning)."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image {path} (missing, corrupt or an unsupported format)')
    return np.ascontiguousarray(to_bgr8(img, path)[..., ::-1]).astype(np.float32) / 255.0


def build_network(opt, device):
    net_opt = dict(opt['network_g'])
    net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    path = (opt.get('path') or {}).get('pretrain_network_g')
    if not path:
        raise ValueError('path.pretrain_network_g: the option file names no weights to restore with')
    if not osp.isfile(path):
        raise FileNotFoundError(f'path.pretrain_network_g: no such file: {path}')
    state = extract_state_dict(load_checkpoint(path), (opt.get('path') or {}).get('param_key_g', 'params'), path)
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


@torch.no_grad()
def restore_tensor(net, img, tile=0, overlap=32):
    """(1, 3, H, W) -> restored (1, 3, H, W). ``tile`` > 0: blended overlapping tiles of that size."""
    h, w = img.shape[-2:]
    if not tile or (h <= tile and w <= tile):
        return net(img)
    if overlap >= tile:
        raise ValueError(f'--tile-overlap {overlap} must be smaller than --tile {tile}')
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


def list_inputs(path):
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'--input: no such file or folder: {path}')
    files = sorted(osp.join(path, f) for f in os.listdir(path) if osp.splitext(f)[1].lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f'--input: no images in {path}')
    return files


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('-opt', required=True, help='a test option file (network_g, path.pretrain_network_g)')
    parser.add_argument('--input', required=True, help='an image or a folder of images')
    parser.add_argument('--output', required=True, help='folder for the restored PNG files')
    parser.add_argument('--tile', type=int, default=0, help='tile size in pixels (0 = whole image)')
    parser.add_argument('--tile-overlap', type=int, default=32, help='overlap of neighbouring tiles in pixels')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    with open(args.opt) as f:
        opt = yaml.safe_load(f)
    device = torch.device(args.device)
    net = build_network(opt, device)
    files = list_inputs(args.input)
    os.makedirs(args.output, exist_ok=True)
    for path in tqdm(files, unit='image', desc='restore'):
        img = torch.from_numpy(read_image(path)).permute(2, 0, 1)[None].to(device)
        out = restore_tensor(net, img, args.tile, args.tile_overlap)[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy()
        name = osp.splitext(osp.basename(path))[0] + '.png'
        cv2.imwrite(osp.join(args.output, name), (out[..., ::-1] * 255.0).round().astype(np.uint8))
    return len(files)


if __name__ == '__main__':
    main()
