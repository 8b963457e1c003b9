"""One comparison table across test runs: a column per test set plus the average, and the size of each model.

    python -m allinone_basicsr.compare results/SymUNet_demo_test results/DaAIR_demo_test ... \
        [--metric psnr] [--out results/compare] [--macs 256]

Each folder is a ``results/<name>`` written by ``allinone_basicsr.test`` (its ``metrics.csv`` and the option file
BasicSR copies there). Writes ``compare.md`` / ``compare.csv`` (the metric per set, its average, parameters and,
with ``--macs S``, MACs at S×S counted as ``benchmarks/complexity.py`` does) and ``compare_<metric>.png``, a bar
plot of the metric per test set and method. ``--grid SET:IMAGE`` adds ``grid_<SET>_<IMAGE>.png``: LQ | each method |
GT, the same zoomed crop under each, PSNR in the captions (needs the runs' outputs, saved with
``val.save_img: true``).
"""
import argparse
import csv
import glob
import os
from os import path as osp

import cv2
import numpy as np
import yaml

PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]  # BGR


def read_run(folder, metric):
    """{test_set: value} (the Average row excluded) and the run's option file (or None)."""
    path = osp.join(folder, 'metrics.csv')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{folder}: no metrics.csv (run `python -m allinone_basicsr.test -opt ...` first)')
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if rows and metric not in rows[0]:
        raise ValueError(f'{path}: no column {metric!r}; columns: {list(rows[0])}')
    values = {r['test_set']: float(r[metric]) for r in rows if r['test_set'] != 'Average'}
    ymls = sorted(glob.glob(osp.join(folder, '*.yml')))
    opt = None
    if ymls:
        with open(ymls[0]) as f:
            opt = yaml.safe_load(f)
    return values, opt


def model_size(opt, macs_size=None):
    """(trainable params, MACs or None) of the run's network_g."""
    import torch

    import allinone_basicsr  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY
    net_opt = dict(opt['network_g'])
    if net_opt.get('clip_pretrained'):
        net_opt['clip_pretrained'] = None  # the size does not depend on the CLIP weights
    if net_opt.get('prompt_net_pretrained'):
        net_opt['prompt_net_pretrained'] = None
    net = ARCH_REGISTRY.get(net_opt.pop('type'))(**net_opt)
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    macs = None
    if macs_size:
        from allinone_basicsr.complexity import analyse
        with torch.no_grad():
            macs = analyse(net, macs_size)[0]
    return params, macs


def bar_plot(methods, sets, table, path, metric):
    """A grouped bar chart (one group per test set, one bar per method), drawn with OpenCV."""
    width, height, margin = 140 * len(sets) + 240, 420, 60
    img = np.full((height, width, 3), 255, np.uint8)
    values = [v for m in methods for v in table[m].values() if v is not None]
    low, high = min(0.0, min(values)), max(values) * 1.1
    scale = (height - 2 * margin) / (high - low)
    bar = max(4, int(100 / len(methods)))
    cv2.line(img, (margin, height - margin), (width - 180, height - margin), (0, 0, 0), 1)
    for i, test_set in enumerate(sets):
        x0 = margin + 10 + i * 140
        for j, method in enumerate(methods):
            value = table[method].get(test_set)
            if value is None:
                continue
            x, top = x0 + j * bar, int(height - margin - (value - low) * scale)
            cv2.rectangle(img, (x, top), (x + bar - 2, height - margin), PALETTE[j % len(PALETTE)], -1)
            cv2.putText(img, f'{value:.1f}', (x, top - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1)
        cv2.putText(img, test_set[:18], (x0, height - margin + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1)
    for j, method in enumerate(methods):
        y = 20 + 18 * j
        cv2.rectangle(img, (width - 175, y - 10), (width - 165, y), PALETTE[j % len(PALETTE)], -1)
        cv2.putText(img, method[:26], (width - 160, y), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    cv2.putText(img, metric, (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.imwrite(path, img)


def compare(folders, metric='psnr', out='results/compare', macs_size=None):
    """Build the table; returns (methods, sets, {method: {set: value}}, {method: (params, macs)})."""
    table, sizes, sets = {}, {}, []
    for folder in folders:
        values, opt = read_run(folder, metric)
        name = (opt or {}).get('name') or osp.basename(osp.normpath(folder))
        table[name] = values
        sets += [s for s in values if s not in sets]
        sizes[name] = model_size(opt, macs_size) if opt and opt.get('network_g') else (None, None)
    methods = list(table)
    columns = ['method'] + sets + ['average', 'params (M)'] + ([f'GMACs {macs_size}²'] if macs_size else [])
    rows = []
    for method in methods:
        vals = [table[method].get(s) for s in sets]
        present = [v for v in vals if v is not None]
        params, macs = sizes[method]
        row = [method] + vals + [sum(present) / len(present) if present else None,
                                 params / 1e6 if params else None]
        if macs_size:
            row.append(macs / 1e9 if macs else None)
        rows.append(row)
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'compare.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([['' if v is None else v for v in row] for row in rows])

    def cell(v):
        if v is None:
            return '–'
        return (f'{v:.4f}' if 'ssim' in metric else f'{v:.2f}') if isinstance(v, float) else str(v)

    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
    markdown = f'{metric} per test set\n\n' + '\n'.join(lines) + '\n'
    with open(osp.join(out, 'compare.md'), 'w') as f:
        f.write(markdown)
    bar_plot(methods, sets, table, osp.join(out, f'compare_{metric}.png'), metric)
    print(markdown)
    return methods, sets, table, sizes


def _find_item(opt, test_set, image):
    """(lq, gt) HxWx3 float RGB of image ``image`` of the test set named ``test_set`` in a run's option file."""
    from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset
    for key, dataset_opt in opt.get('datasets', {}).items():
        if dataset_opt.get('name') == test_set:
            dataset = AllInOneTestDataset(dict(dataset_opt, phase=key))
            for i in range(len(dataset)):
                item = dataset[i]
                if osp.splitext(osp.basename(item['lq_path']))[0] == image:
                    return item['lq'].permute(1, 2, 0).numpy(), item['gt'].permute(1, 2, 0).numpy()
            raise ValueError(f'--grid: no image {image!r} in test set {test_set!r}')
    raise ValueError(f'--grid: no test set named {test_set!r} in the option file')


def visual_grid(folders, test_set, image, out, crop=None, zoom=3):
    """LQ | each method | GT, each with the same zoomed crop underneath and its PSNR in the caption.

    Method outputs are the PNGs ``allinone_basicsr.test`` saves with ``val.save_img: true``
    (``results/<name>/visualization/<test_set>/<image>_*.png``); LQ and GT come from the run's option file.
    """
    from allinone_basicsr.metrics.psnr_ssim_metric import calculate_psnr_aio
    panels = []
    lq = gt = None
    for folder in folders:
        _, opt = read_run(folder, 'psnr')
        if lq is None:
            lq, gt = _find_item(opt, test_set, image)
            panels.append(('input', lq))
        files = sorted(glob.glob(osp.join(folder, 'visualization', test_set, f'{image}_*.png')))
        if not files:
            raise FileNotFoundError(f'{folder}: no saved output for {test_set}/{image} (test with val.save_img: true)')
        restored = cv2.imread(files[0])[..., ::-1].astype(np.float32) / 255.0
        panels.append((opt.get('name', osp.basename(folder)), restored))
    panels.append(('ground truth', gt))
    h, w = gt.shape[:2]
    y, x, size = crop or (h // 3, w // 3, max(16, min(h, w) // 4))
    tiles = []
    for name, img in panels:
        full = (np.clip(img, 0, 1)[..., ::-1] * 255).round().astype(np.uint8).copy()
        zoomed = cv2.resize(full[y:y + size, x:x + size], (size * zoom, size * zoom), interpolation=cv2.INTER_NEAREST)
        cv2.rectangle(full, (x, y), (x + size, y + size), (0, 0, 255), 1)
        zoomed = cv2.resize(zoomed, (w, int(w * zoomed.shape[0] / zoomed.shape[1])))
        caption = np.full((24, w, 3), 255, np.uint8)
        label = name if name == 'ground truth' else f'{name[:22]} {calculate_psnr_aio(img, gt):.2f} dB'
        cv2.putText(caption, label, (3, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1)
        tiles.append(np.vstack([full, zoomed, caption]))
    grid = np.hstack([np.pad(t, ((0, 0), (0, 4), (0, 0)), constant_values=255) for t in tiles])
    os.makedirs(out, exist_ok=True)
    path = osp.join(out, f'grid_{test_set}_{image}.png')
    cv2.imwrite(path, grid)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folders', nargs='+', help='results/<name> folders written by allinone_basicsr.test')
    parser.add_argument('--metric', default='psnr', help='a column of metrics.csv (psnr, ssim, routing_acc, ...)')
    parser.add_argument('--out', default='results/compare')
    parser.add_argument('--macs', type=int, default=None, help='also count MACs at this square size')
    parser.add_argument('--grid', nargs='*', default=[], metavar='SET:IMAGE',
                        help='visual comparison grids (needs outputs saved with val.save_img: true)')
    parser.add_argument('--crop', type=int, nargs=3, default=None, metavar=('Y', 'X', 'SIZE'),
                        help='the zoomed region of the grids (default: a square around the centre-left third)')
    args = parser.parse_args(argv)
    result = compare(args.folders, args.metric, args.out, args.macs)
    for spec in args.grid:
        test_set, image = spec.split(':', 1)
        print('grid:', visual_grid(args.folders, test_set, image, args.out, args.crop))
    return result


if __name__ == '__main__':
    main()
