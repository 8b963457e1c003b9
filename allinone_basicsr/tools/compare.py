"""One comparison table across test runs: a column per test set plus the average, and the size of each model.

    python -m allinone_basicsr.tools.compare results/SymUNet_demo_test results/DaAIR_demo_test ... \
        [--metric psnr] [--out results/compare] [--macs 256] [--common-sets] [--format svg|pdf] \
        [--grid SET:IMAGE ...] [--crop Y X SIZE]

Each folder is a ``results/<name>`` written by ``allinone_basicsr.test``: its ``metrics.csv`` (one row per test set
plus an ``Average`` row) and the options it ran with (``options.yml``). A run is named by the ``name`` of that option
file, or by the folder's basename when there is none.

Writes into ``--out``:

- ``compare.md`` / ``compare.csv``: the metric per test set and run, the average, the parameters and, with
  ``--macs S``, the MACs at S×S counted as ``benchmarks/complexity.py`` does;
- ``compare_<metric>.png`` (and ``.svg`` / ``.pdf`` with ``--format``): a grouped bar plot (``compare_plot``)
  (one group per test set plus the average, one colour per run, the value on each bar). The y-axis starts a bit
  below the smallest value, not at 0, so that differences of a tenth of a dB stay visible: read the ticks;
- ``grid_<SET>_<IMAGE>.png`` for each ``--grid SET:IMAGE``: LQ | each method | GT, the same zoomed crop under
  each, PSNR in the captions (needs the runs' outputs, saved with ``val.save_img: true``). SET is a test set's
  ``name``, IMAGE the stem of a saved output without its ``_<suffix>`` (``val.suffix`` or the run's name), i.e. the
  LQ file's stem or LMDB key (noise sets add ``_sigma<σ>``: ``coffee_000_sigma25``); a wrong one lists the names.

The numbers are checked rather than trusted:

- Runs must have been tested on the same test sets; otherwise compare stops and lists each run's sets.
  ``--common-sets`` compares only the sets every run has and says which sets were dropped from which run.
- The average is computed here, as the mean of the finite per-set values in the table, never read from the runs'
  own ``Average`` rows (which may cover other sets or include an ``inf``).
- An ``inf`` or ``nan`` value is shown as such in the table and on the plot (a marker instead of a bar), kept out
  of the average, and reported in a warning naming the run and the set. An infinite PSNR usually means the LQ
  images equal the GT (``dataroot_lq`` pointing at the GT).
- Two folders that give the same run name are refused (one would hide the other).
- A set is what its images are, not its name: each row of a metrics.csv records the set's ``fingerprint`` (a hash of
  every image's bytes and the noise level, ``utils.metric_table.set_fingerprint``). Runs whose fingerprints of one
  set differ are refused, naming the set and both runs (``--common-sets`` leaves such sets out instead); a run
  without fingerprints (an older metrics.csv) is compared by name, with a one-line warning.
- Each run's ``metrics.json`` records what made its numbers (the versions of torch, scikit-image, basicsr and the
  plugin, and the metric's protocol: function and options, ``utils/run_record.py``); runs that differ in any of them
  get one warning per differing field, naming the runs; runs without the record (older results) one notice.
- A set with a value that is not finite in any column (e.g. an inf PSNR) is left out of that run's average of every
  metric, as in the runs' own tables.

Invalid input is a usage error (exit status 2, one line naming the run and the problem); warnings are one line each.
"""
import argparse
import csv
import glob
import math
import os
import warnings
from os import path as osp

import cv2
import numpy as np

from allinone_basicsr.tools.common import InputNotFoundError, UsageError, build_network, read_metrics_csv, run
from allinone_basicsr.tools.compare_plot import PLOT_FORMATS, finite, plot_metric, save_plot, show
from allinone_basicsr.utils.metric_table import finite_mean
from allinone_basicsr.utils.options import read_yaml
from allinone_basicsr.utils.run_record import differences, read_record


class CompareWarning(UserWarning):
    """A value compare shows but keeps out of the averages (``inf``, ``nan``)."""


def read_metrics(folder, metric):
    """{test_set: value} of the metric in ``folder/metrics.csv`` in file order, the ``Average`` row left out."""
    return {name: row[metric] for name, row in read_metrics_csv(folder, [metric]).items()}


def _not_finite(row):
    """The columns of a metrics.csv row (``read_metrics_csv``) whose number is inf / nan, as 'column value'."""
    return [f'{k} {v}' for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]


def read_options(folder):
    """The options ``allinone_basicsr.test`` wrote into the run folder (``options.yml``: the run's own, overrides
    applied; older runs: the first ``*.yml``), or None."""
    own = osp.join(folder, 'options.yml')
    ymls = [own] if osp.isfile(own) else sorted(glob.glob(osp.join(folder, '*.yml')))
    if not ymls:
        return None
    return read_yaml(ymls[0], 'the run\'s option file')


def read_run(folder, metric):
    """{test_set: value} (the Average row excluded), the run's option file (or None) and its rows
    ({test_set: {column: value}}, the ``fingerprint`` among them)."""
    rows = read_metrics_csv(folder, [metric])
    return {name: row[metric] for name, row in rows.items()}, read_options(folder), rows


def run_name(folder, opt):
    """The option file's ``name``, else the folder's basename."""
    return (opt or {}).get('name') or osp.basename(osp.normpath(folder))


def model_size(opt, macs_size=None):
    """(trainable params, MACs or None) of the run's network_g."""
    import torch
    net = build_network(opt['network_g'])
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    macs = None
    if macs_size:
        from allinone_basicsr.utils.complexity import analyse
        with torch.no_grad():
            macs = analyse(net, macs_size)[0]
    return params, macs


def select_sets(runs, common_sets=False):
    """The test sets to compare (in the first run's order) and the notes on the sets dropped.

    ``runs`` is a list of (name, folder, {set: value}). Different sets are an error unless ``common_sets``.
    """
    first = list(runs[0][2])
    if all(set(values) == set(first) for _, _, values in runs):
        return first, []
    listing = ''.join(f'\n  {name} ({folder}): {", ".join(values)}' for name, folder, values in runs)
    common = [s for s in first if all(s in values for _, _, values in runs)]
    if not common_sets:
        hint = (f'pass --common-sets to compare only the sets all runs share ({", ".join(common)})' if common
                else 'they share no test set')
        raise ValueError(f'the runs were tested on different test sets:{listing}\nAn average over different sets '
                         f'compares nothing; {hint}')
    if not common:
        raise ValueError(f'--common-sets: the runs share no test set:{listing}')
    notes = [f'--common-sets: compared {len(common)} set(s) all runs share: {", ".join(common)}']
    for name, folder, values in runs:
        dropped = [s for s in values if s not in common]
        if dropped:
            notes.append(f'--common-sets: dropped from {name} ({folder}): {", ".join(dropped)}')
    return common, notes


def check_fingerprints(runs, sets, common_sets=False):
    """The sets of ``sets`` whose data every run agrees on, and the notes.

    ``runs`` is a list of (name, folder, {set: row}); a row's ``fingerprint`` (``utils.metric_table.set_fingerprint``)
    tells what images the set held. Two runs whose fingerprints of one set differ tested on different data under one
    name: a ``ValueError`` naming the set and both runs, unless ``common_sets`` (the set is then left out, with a
    note). A run without fingerprints (a metrics.csv written before they were recorded, or a stock dataset) is
    compared by name, with one note naming the run and its sets."""
    notes, differing = [], []
    for name, folder, rows in runs:
        unknown = [s for s in sets if not rows[s].get('fingerprint')]
        if unknown:
            notes.append(f'{name} ({folder}): no test-set fingerprint in its metrics.csv (an older file, or a stock '
                         f'dataset) for {", ".join(unknown)}: compared by name only')
    for test_set in sets:
        known = [(name, folder, rows[test_set]['fingerprint']) for name, folder, rows in runs
                 if rows[test_set].get('fingerprint')]
        other = next((run for run in known if run[2] != known[0][2]), None)
        if other is not None:
            differing.append(test_set)
            notes.append(f'test set {test_set!r} holds different data in {known[0][0]} ({known[0][1]}, '
                         f'{known[0][2]}) and in {other[0]} ({other[1]}, {other[2]}): the same name, other images '
                         f'or another noise level')
    if differing and not common_sets:
        raise ValueError('; '.join(n for n in notes if n.startswith('test set ')) + '. Their scores are not '
                         'comparable: point both option files at the same data, or pass --common-sets to leave '
                         'out the sets whose data differ')
    kept = [s for s in sets if s not in differing]
    if differing:
        if not kept:
            raise ValueError('--common-sets: no test set holds the same data in all runs: ' + '; '.join(notes))
        notes.append(f'--common-sets: left out {", ".join(differing)} (different data under one name)')
    return kept, notes


def average(name, values, sets, metric, rows=None):
    """(mean of the finite values of ``sets``, number averaged, warnings for the values left out). With the run's
    ``rows``, a set with an inf / nan in any column is left out too, as the runs' own Average rows do
    (``utils.metric_table.average_row``), so that the averages of every metric cover the same sets."""
    kept, notes = [], []
    for test_set in sets:
        value = values.get(test_set)
        others = [c for c in _not_finite((rows or {}).get(test_set, {})) if c.split(' ')[0] != metric]
        if finite(value) and others:
            notes.append(f'{name} / {test_set}: {metric} {show(value, metric)} left out of the average: the set has '
                         f'{", ".join(others)} (a set with a value that is not finite is left out of every average)')
            continue
        if finite(value):
            kept.append(value)
            continue
        shown = show(value, metric)
        note = f'{name} / {test_set}: {metric} is {shown if value is not None else "missing"}, left out of the average'
        if value is not None and math.isinf(value) and 'psnr' in metric.lower():
            note += (' (an infinite PSNR means the images equal the GT exactly: usually the LQ is identical to the GT,'
                     ' e.g. dataroot_lq pointing at the GT folder)')
        elif value is not None and math.isnan(value):
            note += ' (a nan usually means the metric failed on this set: check the run\'s log)'
        notes.append(note)
    return finite_mean(kept), len(kept), notes


def compare(folders, metric='psnr', out='results/compare', macs_size=None, common_sets=False, formats=()):
    """Build the table; returns (methods, sets, {method: {set: value}}, {method: (params, macs)}).

    Raises ``ValueError`` for two folders with the same run name, and for runs tested on different sets unless
    ``common_sets``. Writes ``compare.md``, ``compare.csv`` and the plot into ``out``.
    """
    runs, seen = [], {}
    for folder in folders:
        values, opt, rows = read_run(folder, metric)
        name = run_name(folder, opt)
        if name in seen:
            raise ValueError(f'two runs are named {name!r}: {seen[name]} and {folder} (the name is the option file\'s '
                             f'`name`, else the folder name); one would hide the other in the table')
        seen[name] = folder
        runs.append((name, folder, values, opt, rows))
    sets, notes = select_sets([(name, folder, values) for name, folder, values, *_ in runs], common_sets)
    sets, fingerprint_notes = check_fingerprints([(name, folder, rows) for name, folder, _, _, rows in runs], sets,
                                                 common_sets)
    record_notes = differences([(name, folder, read_record(folder)) for name, folder, *_ in runs], [metric])
    for message in fingerprint_notes + record_notes:
        warnings.warn(message, CompareWarning, stacklevel=2)
    notes += fingerprint_notes + record_notes
    methods = [name for name, *_ in runs]
    table = {name: {s: values[s] for s in sets} for name, _, values, *_ in runs}
    averages, counts = {}, {}
    for method, (*_, rows) in zip(methods, runs):
        averages[method], counts[method], left_out = average(method, table[method], sets, metric, rows)
        for message in left_out:
            warnings.warn(message, CompareWarning, stacklevel=2)
        notes += left_out
    sizes = {name: model_size(opt, macs_size) if opt and opt.get('network_g') else (None, None)
             for name, _, _, opt, _ in runs}

    columns = ['method'] + sets + ['average', 'averaged_sets', 'params (M)'] + \
        ([f'GMACs {macs_size}²'] if macs_size else [])
    rows = []
    for method in methods:
        params, macs = sizes[method]
        row = [method] + [table[method][s] for s in sets]
        row += [averages[method], counts[method], params / 1e6 if params else None]
        if macs_size:
            row.append(macs / 1e9 if macs else None)
        rows.append(row)
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'compare.csv'), 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([['' if v is None else v for v in row] for row in rows])

    def cell(column, v, method):
        if column in ('method', 'averaged_sets'):
            return str(v)
        if column == 'params (M)' or column.startswith('GMACs'):
            return '–' if v is None else f'{v:.2f}'
        text = show(v, metric)
        return text + '*' if column == 'average' and v is not None and counts[method] < len(sets) else text

    md_rows = ['| ' + ' | '.join(cell(c, v, row[0]) for c, v in zip(columns, row)) + ' |' for row in rows]
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)] + md_rows
    legend = (f'average: the mean of the finite per-set values in this table, computed by compare over '
              f'{len(sets)} set(s) (not the runs\' own Average rows); averaged_sets: how many sets it covers, '
              f'* when fewer than {len(sets)} (an inf, nan or missing value left out, see the notes): such an '
              f'average is not comparable with the others.')
    markdown = f'{metric} per test set\n\n' + '\n'.join(lines) + f'\n\n{legend}\n'
    if notes:
        markdown += '\nNotes:\n\n' + ''.join(f'- {note}\n' for note in notes)
    with open(osp.join(out, 'compare.md'), 'w') as f:
        f.write(markdown)
    fig = plot_metric(methods, sets, table, metric, averages, counts)
    save_plot(fig, out, metric, formats)
    print(markdown)
    return methods, sets, table, sizes


def _listed(names, few=5):
    """``a, b, c, ... (N in all)``: the first ``few`` of ``names``."""
    names = list(names)
    return ', '.join(names[:few]) + (f', ... ({len(names)} in all)' if len(names) > few else '') if names else 'none'


def saved_images(folder, opt):
    """{test set: image names} of the outputs a run saved (``visualization/<set>/<image>_<suffix>.png``, the suffix
    being ``val.suffix`` or the run's ``name``; the image name is the stem of the LQ file or LMDB key)."""
    suffix = '_' + str(((opt or {}).get('val') or {}).get('suffix') or (opt or {}).get('name') or '')
    found = {}
    for path in sorted(glob.glob(osp.join(folder, 'visualization', '*', '*.png'))):
        stem = osp.splitext(osp.basename(path))[0]
        image = stem[:-len(suffix)] if len(suffix) > 1 and stem.endswith(suffix) else stem
        found.setdefault(osp.basename(osp.dirname(path)), []).append(image)
    return found


def _available(folder, opt):
    """What ``--grid SET:IMAGE`` can name in a run: its saved sets and a few image names of each."""
    saved = saved_images(folder, opt)
    sets = '; '.join(f'{name}: {_listed(images)}' for name, images in saved.items())
    return (f'{folder} saved outputs for {sets}' if saved else
            f'{folder} saved no outputs (test with val.save_img: true)')


def _find_item(opt, test_set, image):
    """(lq, gt) HxWx3 float RGB of image ``image`` of the test set named ``test_set`` in a run's option file."""
    from allinone_basicsr.data.mixed_degradation_dataset import AllInOneTestDataset
    names = []
    for key, dataset_opt in opt.get('datasets', {}).items():
        names.append(str(dataset_opt.get('name')))
        if dataset_opt.get('name') == test_set:
            dataset = AllInOneTestDataset(dict(dataset_opt, phase=key))
            stems = []
            for i in range(len(dataset)):
                item = dataset[i]
                stems.append(osp.splitext(osp.basename(item['lq_path']))[0])
                if stems[-1] == image:
                    return item['lq'].permute(1, 2, 0).numpy(), item['gt'].permute(1, 2, 0).numpy()
            raise ValueError(f'--grid: no image {image!r} in test set {test_set!r}; its images: {_listed(stems)}')
    raise ValueError(f'--grid: no test set named {test_set!r} in the option file; its test sets: {_listed(names)}')


def visual_grid(folders, test_set, image, out, crop=None, zoom=3):
    """LQ | each method | GT, each with the same zoomed crop underneath and its PSNR in the caption.

    Method outputs are the PNGs ``allinone_basicsr.test`` saves with ``val.save_img: true``
    (``results/<name>/visualization/<test_set>/<image>_*.png``); LQ and GT come from the run's option file.
    """
    from allinone_basicsr.metrics.psnr_ssim_metric import calculate_psnr_aio
    panels = []
    lq = gt = None
    for folder in folders:
        opt = read_options(folder)
        if opt is None:
            raise FileNotFoundError(f'{folder}: no option file (*.yml) to find the LQ and GT of --grid')
        if lq is None:
            try:
                lq, gt = _find_item(opt, test_set, image)
            except ValueError as err:
                raise ValueError(f'{err}. {_available(folder, opt)}') from None
            panels.append(('input', lq))
        files = sorted(glob.glob(osp.join(folder, 'visualization', test_set, f'{image}_*.png')))
        if not files:
            raise FileNotFoundError(f'{folder}: no saved output for {test_set}/{image} (test with val.save_img: '
                                    f'true). {_available(folder, opt)}')
        restored = cv2.imread(files[0])[..., ::-1].astype(np.float32) / 255.0
        panels.append((run_name(folder, opt), restored))
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
    parser = argparse.ArgumentParser(prog='allinone-compare',
                                     description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n\n'.join(__doc__.split('\n\n')[2:]))
    parser.add_argument('folders', nargs='+', help='results/<name> folders written by allinone_basicsr.test')
    parser.add_argument('--metric', default='psnr', help='a column of metrics.csv (psnr, ssim, routing_acc, ...)')
    parser.add_argument('--out', default='results/compare', help='output folder (default: results/compare)')
    parser.add_argument('--macs', type=int, default=None, help='also count MACs at this square size')
    parser.add_argument('--common-sets', action='store_true',
                        help='runs tested on different sets: compare only the sets all runs share (and say which '
                             'were dropped); the average is recomputed over them')
    parser.add_argument('--format', nargs='+', default=[], choices=[f for f in PLOT_FORMATS if f != 'png'],
                        dest='formats', help='a vector copy of the bar plot besides the PNG')
    parser.add_argument('--grid', nargs='*', default=[], metavar='SET:IMAGE',
                        help='visual comparison grids (needs outputs saved with val.save_img: true); SET is a test '
                             "set's name, IMAGE the stem of its LQ file or LMDB key (noise sets add _sigma<σ>, e.g. "
                             'coffee_000_sigma25): the saved visualization/SET/IMAGE_<name>.png without _<name>')
    parser.add_argument('--crop', type=int, nargs=3, default=None, metavar=('Y', 'X', 'SIZE'),
                        help='the zoomed region of the grids (default: a square around the centre-left third)')
    args = parser.parse_args(argv)
    for spec in args.grid:
        if ':' not in spec:
            parser.error(f'--grid {spec}: expected SET:IMAGE')
    try:
        compare(args.folders, args.metric, args.out, args.macs, args.common_sets, args.formats)
        for spec in args.grid:
            test_set, image = spec.split(':', 1)
            print('grid:', visual_grid(args.folders, test_set, image, args.out, args.crop))
    except FileNotFoundError as err:
        raise InputNotFoundError(str(err)) from None
    except ValueError as err:
        raise UsageError(str(err)) from None
    return 0


def cli(argv=None):
    run(main, 'compare', argv)


if __name__ == '__main__':
    cli()
