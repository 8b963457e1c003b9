"""The per-set metric table of a validation or test round: how images are scored, one row per set plus the average,
logged and written as ``metrics.csv`` / ``metrics.md``.

``AllInOneModel`` scores every image with :func:`score`, averages a set's scores and hands the set's row to a
:class:`MetricTable`, which knows when a round is complete. The formatting helpers are used by ``compare`` too.

A row records its set's ``fingerprint`` (what the images are, :func:`set_fingerprint`), so that ``compare`` can
tell two sets of one name apart; ``metrics.json`` beside the tables records what made the numbers (the library
versions and :func:`metric_protocol`, ``utils/run_record.py``). A set with an inf / NaN value in any column is left
out of the Average of every column (its PSNR and SSIM alike), and the table names it.
"""
import csv
import inspect
import math
import os
from collections import OrderedDict
from os import path as osp

import torch

from allinone_basicsr.utils.run_record import format_record, versions, write_record

from basicsr.metrics import calculate_metric
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import METRIC_REGISTRY

ROUTING_METRICS = ('calculate_routing_accuracy',)  # scored on the task logits, not on the image
INF_HINT = 'An infinite PSNR means images equal to their GT: usually the LQ images are the GT (check dataroot_lq).'


def score(metric_opt, img, gt):
    """One image's score under ``val.metrics.<name>`` (``metric_opt``), as a float, fed the way the metric expects.

    - this plugin's metrics (``calculate_psnr_aio``, ...): the float RGB tensors (the all-in-one protocol);
    - BasicSR's ``*_pt`` metrics: the float RGB tensors too (their tensor result becomes a float);
    - BasicSR's numpy metrics (``calculate_psnr`` / ``calculate_ssim`` with ``crop_border``, ``test_y_channel``,
      NIQE, ...): uint8 BGR images from ``tensor2img``, exactly as BasicSR's SRModel gives them.
    """
    if _fed_tensors(metric_opt):
        value = calculate_metric({'img': img, 'img2': gt}, metric_opt)
    else:
        value = calculate_metric({'img': tensor2img([img]), 'img2': tensor2img([gt])}, metric_opt)
    return float(value.mean() if torch.is_tensor(value) else value)


def _fed_tensors(metric_opt):
    """Whether :func:`score` feeds the metric the float RGB tensors (else uint8 BGR images)."""
    func = METRIC_REGISTRY.get(metric_opt['type'])
    return func.__module__.startswith('allinone_basicsr.') or metric_opt['type'].endswith('_pt')


def metric_protocol(val_opt):
    """What each metric of ``val_opt['metrics']`` computes, as the run's record keeps it: the function, its options
    (the option file's over the function's defaults: ``crop_border``, ``test_y_channel``, ``data_range``, ...),
    the images it is fed (:func:`score`) and whether the output is clamped to [0, 1] first (``val.clamp``)."""
    protocol = OrderedDict()
    for name, metric_opt in (val_opt.get('metrics') or {}).items():
        func = METRIC_REGISTRY.get(metric_opt['type'])
        entry = OrderedDict(function=f'{func.__module__}.{func.__name__}')
        entry.update((k, p.default) for k, p in inspect.signature(func).parameters.items()
                     if p.default is not inspect.Parameter.empty)
        entry.update((k, v) for k, v in metric_opt.items() if k != 'type')
        entry['input'] = ('task logits' if metric_opt['type'] in ROUTING_METRICS else
                          'float RGB tensors' if _fed_tensors(metric_opt) else 'uint8 BGR images (tensor2img)')
        entry['clamp'] = bool(val_opt.get('clamp', True))
        protocol[name] = entry
    return protocol


class SetScores:
    """The per-image scores of one val/test set under ``val.metrics`` (``metrics``): every metric on the output, and
    with ``score_input`` every image metric on the degraded input too. Routing metrics score the task logits (``arch``
    names the network in their errors). ``scores`` maps an image index to its row (images with ground truth only);
    the rows of several ranks merge by index (``models/distributed.gather_scores``)."""

    def __init__(self, metrics, score_input, arch):
        self.metrics, self.score_input, self.arch = metrics, score_input, arch
        self.names = list(metrics)
        self.image_names = [n for n in self.names if metrics[n].get('type') not in ROUTING_METRICS]
        self.width = len(self.names) + (len(self.image_names) if score_input else 0)
        self.scores = {}

    def add(self, index, output, lq, gt, task_logits, degradation):
        row = [self._routing(n, task_logits, degradation) if n not in self.image_names else
               score(self.metrics[n], output, gt) for n in self.names]
        if self.score_input:
            row += [score(self.metrics[n], lq, gt) for n in self.image_names]
        self.scores[index] = row

    def averages(self):
        """``(metric -> mean over the images, input metric -> mean)`` in image order, or None without any image."""
        rows = [self.scores[i] for i in sorted(self.scores)]
        if not rows:
            return None
        mean = [sum(r[j] for r in rows) / len(rows) for j in range(self.width)]
        return (dict(zip(self.names, mean)), dict(zip(self.image_names, mean[len(self.names):])), len(rows))

    def _routing(self, name, task_logits, degradation):
        metric_opt = self.metrics[name]
        if task_logits is None:
            raise ValueError(f'val.metrics.{name}: {metric_opt["type"]} needs an arch with task logits; '
                             f'{self.arch} has none')
        if degradation is None:
            raise ValueError(f'val.metrics.{name}: the val/test dataset returns no "degradation" label')
        return calculate_metric({'task_logits': task_logits, 'degradation': degradation}, metric_opt)


def set_fingerprint(dataset):
    """The identity of a val/test set's data as its row records it (``fingerprint`` column of ``metrics.csv``, checked
    by ``tools/compare``): the dataset's own ``fingerprint()`` (``AllInOneTestDataset``: a hash of every image's bytes
    and the noise level), or None for datasets without one (stock BasicSR datasets)."""
    method = getattr(dataset, 'fingerprint', None)
    return method() if callable(method) else None


def set_row(name, degradation, count, results, inputs, fingerprint=None):
    """A set's row: its averages ``results`` (metric -> value), each preceded by the degraded input's score when
    ``inputs`` has it, and for PSNR-like metrics followed by the gain over the input; last, the data's
    ``fingerprint`` (:func:`set_fingerprint`) when known."""
    row = OrderedDict(test_set=name, degradation=degradation, images=count)
    for metric, value in results.items():
        if metric in inputs:
            row[f'input_{metric}'] = inputs[metric]
        row[metric] = value
        if metric in inputs and 'psnr' in metric.lower():
            row[f'gain_{metric}'] = value - inputs[metric]
    if fingerprint:
        row['fingerprint'] = fingerprint
    return row


class MetricTable:
    """The rows of one validation / test round, one per set of ``expected``: each new row rewrites the files in
    ``folder``; the complete table is logged once every set is in. A row for a new iteration, or one arriving after
    a complete round (stock ``train_pipeline``'s final validation after a periodic one at the same iteration),
    starts a round."""

    def __init__(self, name, folder, expected, record=None):
        self.name, self.folder, self.expected, self.record = name, folder, list(expected), record
        self.iteration, self.rows = None, OrderedDict()

    @classmethod
    def for_run(cls, opt):
        """The table of a training run (in its experiment folder) or test run (results folder), expecting every
        ``val*`` / ``test*`` set of ``opt['datasets']``; its record: the library versions and
        :func:`metric_protocol`."""
        expected = [k for k in opt['datasets'] if k.split('_')[0] in ('val', 'test')]
        record = OrderedDict(versions=versions(), protocol=metric_protocol(opt.get('val') or {}))
        return cls(opt['name'], opt['path']['experiments_root' if opt['is_train'] else 'results_root'], expected,
                   record)

    def add(self, iteration, row):
        if self.iteration != iteration or len(self.rows) >= len(self.expected):
            self.iteration, self.rows = iteration, OrderedDict()
        self.rows[row['test_set']] = row
        bad = [f'{key} is {value}' for key, value in row.items()
               if isinstance(value, float) and not math.isfinite(value)]
        if bad:
            get_root_logger().warning(f'Test set {row["test_set"]}: {", ".join(bad)}; the set is left out of the '
                                      'Average (of every metric). ' + INF_HINT)
        rows = list(self.rows.values())
        write_metric_table(rows, self.folder, self.name, self.record)
        if len(rows) >= len(self.expected):
            get_root_logger().info(f'Results of {self.name} at {iteration}:\n' + format_metric_table(rows))


def decimals(metric):
    """Decimals a metric is shown with: SSIM 4, accuracies 3, PSNR and the rest 2."""
    key = metric.lower()
    return 4 if 'ssim' in key else 3 if 'acc' in key else 2


def format_value(metric, value, sign=False):
    """A metric's value as every table shows it (:func:`decimals`; ``sign``: a difference, +/-); ``inf`` / ``nan``
    spelled out, None as ''."""
    if value is None:
        return ''
    if not math.isfinite(value):
        return 'nan' if math.isnan(value) else 'inf' if value > 0 else '-inf'
    return f'{value:{"+" if sign else ""}.{decimals(metric)}f}'


def finite_mean(values):
    """The mean of the finite values (None, inf and nan left out), or None when none is finite."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def finite_row(row, columns=None):
    """Whether every float of ``row`` (of ``columns``, default all) is finite: a set whose row is not is left out of
    every average, so that the Average's PSNR and SSIM cover the same sets."""
    return all(math.isfinite(v) for k, v in row.items()
               if isinstance(v, float) and (columns is None or k in columns))


def average_row(rows):
    """The mean of every numeric column over the sets whose values are all finite (:func:`finite_row`: a set with
    an inf / NaN in any column is left out of every column's mean, and of ``images``); NaN where no set is left."""
    numeric = [k for k in rows[0] if isinstance(rows[0][k], float)]
    kept = [r for r in rows if finite_row(r)]
    avg = OrderedDict(test_set='Average', degradation='', images=sum(r['images'] for r in kept))
    for key in numeric:
        mean = finite_mean(r.get(key) for r in kept)
        avg[key] = float('nan') if mean is None else mean
    return avg


def _columns(rows):
    """Every column of ``rows`` in first-seen order (a set of a stock dataset has no ``fingerprint``)."""
    return list(OrderedDict((k, None) for r in rows for k in r))


def format_metric_table(rows):
    """Markdown table of per-set rows plus their average (PSNR-like values with 2 decimals, SSIM with 4); a value
    that is not finite is flagged and a note names the sets left out of the Average (``fingerprint`` is in the CSV
    only)."""
    rows = list(rows) + [average_row(rows)]
    columns = [c for c in _columns(rows) if c != 'fingerprint']
    flagged = []

    def fmt(row, key, value):
        if isinstance(value, float):
            if not math.isfinite(value):
                if row['test_set'] != 'Average':
                    flagged.append(f'{row["test_set"]} {key}')
                return f'{value} (!)'
            return format_value(key, value)
        return str(value)

    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(fmt(r, c, r.get(c, '')) for c in columns) + ' |' for r in rows]
    if flagged:
        left_out = list(OrderedDict((r['test_set'], None) for r in rows[:-1] if not finite_row(r)))
        lines += ['', f'(!) not finite: {", ".join(flagged)}. Left out of the Average (every column): '
                  f'{", ".join(left_out)}. ' + INF_HINT]
    return '\n'.join(lines)


@master_only
def write_metric_table(rows, folder, name, record=None):
    """Write ``metrics.csv`` (full precision, with the average row) and ``metrics.md`` into ``folder``; with
    ``record`` (what made the numbers), ``metrics.json`` too, and its one-line summary under the markdown table."""
    os.makedirs(folder, exist_ok=True)
    all_rows = list(rows) + [average_row(rows)]
    with open(osp.join(folder, 'metrics.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=_columns(all_rows))
        writer.writeheader()
        writer.writerows(all_rows)
    with open(osp.join(folder, 'metrics.md'), 'w') as f:
        f.write(f'# {name}\n\n{format_metric_table(rows)}\n' + (f'\n{format_record(record)}\n' if record else ''))
    if record:
        write_record(folder, record)
