"""The recipe report (``allinone-recipe``) as aligned text or a JSON-ready dict."""
from dataclasses import asdict

from allinone_basicsr.data.degradations import format_sigma


def _n(value):
    return f'{value:,}'


def _epochs(value):
    if value is None:
        return 'n/a'
    return f'{round(value):,}' if abs(value - round(value)) < 1e-9 else f'{value:,.2f}'


def _lr(value):
    if value is None:
        return 'n/a (no closed form)'
    if value == 0:
        return '0'
    mantissa, exponent = f'{value:.3e}'.split('e')
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _number(value):
    return _lr(value) if isinstance(value, float) and value and abs(value) < 1e-2 else f'{value:g}'


def _table(rows, right):
    """Aligned text columns; ``right`` = indices of right-aligned columns."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return [
        '  '.join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
        .rstrip() for row in rows
    ]


def format_report(r):
    """The report as aligned text."""
    lines = [f'Recipe of {r.option_file} (name: {r.name})']

    def item(label, text):
        lines.append(f'  {label:<27} {text}')

    item('effective batch', f'{r.world_size} × {r.batch_size_per_gpu} per GPU = {r.effective_batch} '
         f'(world size from {r.world_size_from})')
    item('patch (gt_size)', f'{r.patch}²')
    item('augmentation', ', '.join(r.augment) or 'none')
    total = r.samples_per_epoch
    rows = [('task', 'class', 'images', 'counted from', 'repeat', 'samples', 'share')]
    rows += [(t.name, t.degradation, _n(t.images), f'{t.source}: {t.counted}', f'×{t.repeat}', _n(t.samples),
              f'{t.samples / sum(x.samples for x in r.tasks):.1%}') for t in r.tasks]
    enlarged = f' (dataset_enlarge_ratio {r.dataset_enlarge_ratio})' if r.dataset_enlarge_ratio != 1 else ''
    item('samples per epoch', f'{_n(total)}{enlarged}')
    lines += ['    ' + line for line in _table(rows, right={2, 4, 5, 6})]
    item('class shares', ', '.join(f'{c} {_n(n)} ({s:.1%})' for (c, n), s in
                                   zip(r.class_samples.items(), r.class_shares.values())))
    ranks = f"{r.world_size} rank{'s' if r.world_size > 1 else ''}"
    item('iterations per epoch', f'{_n(r.iters_per_epoch)} = ceil({_n(total)} / {ranks}) = '
         f'{_n(r.samples_per_rank)} per rank // batch {r.batch_size_per_gpu} (last incomplete batch dropped)')
    item('total', f'{_n(r.total_iter)} iterations = {_epochs(r.total_epochs)} epochs (train.total_iter)')
    if r.warmup_key:
        item('warm-up', f'{_n(r.warmup_iter)} iterations = {_epochs(r.warmup_epochs)} epochs ({r.warmup_key})')
    else:
        item('warm-up', 'none')
    if r.cosine_end_key:
        item('cosine end', f'{_n(r.cosine_end_iter)} iterations = {_epochs(r.cosine_end_epochs)} epochs '
             f'({r.cosine_end_key})')
    args = ', '.join(f'{k}={v}' for k, v in r.scheduler.items() if k != 'type')
    item('scheduler', f"{r.scheduler['type']}({args}), stepped every iteration")
    lr = f'start {_lr(r.lr_start)}'
    if r.warmup_key:
        lr += f', end of warm-up {_lr(r.lr_warmup_end)} (iteration {_n(r.warmup_iter)})'
    item('learning rate', f'{lr}, end {_lr(r.lr_end)} (iteration {_n(r.total_iter)})')
    opt = r.optimizer
    extra = ''.join(f', {k.replace("_", " ")} {tuple(v) if isinstance(v, list) else _number(v)}'
                    for k, v in opt.items() if k not in ('type', 'lr'))
    item('optimizer', f"{opt['type']} lr {_lr(opt['lr'])}{extra}")
    item('losses', '; '.join(f"{k}: {v['type']} × {v['loss_weight']:g}" if v['loss_weight'] is not None else
                             f"{k}: {v['type']}" for k, v in r.losses.items()) or 'none')
    item('EMA (train.ema_decay)', f'{r.ema_decay:g}' if r.ema_decay > 0 else 'off')
    item('grad clip (train.grad_clip)', 'off' if r.grad_clip is None else str(r.grad_clip))
    if r.teacher_forcing_iter is not None:
        item('teacher forcing', f'{_n(r.teacher_forcing_iter)} iterations = '
             f'{_epochs(r.epochs(r.teacher_forcing_iter))} epochs (train.teacher_forcing_iter)')
    item('DDP find_unused_parameters', str(r.find_unused_parameters).lower())
    if r.val_freq is not None:
        item('validation', f'every {_n(r.val_freq)} iterations = {_epochs(r.epochs(r.val_freq))} epochs '
             '(val.val_freq), and at the end')
    else:
        item('validation', 'at the end only' if r.val_sets else 'none')
    rows = [('set', 'class', 'σ', 'crop', 'images', 'counted from')]
    rows += [(v.name, v.degradation, '' if v.noise_sigma is None else format_sigma(v.noise_sigma),
              '' if not v.crop_to_multiple else f'×{v.crop_to_multiple}', '?' if v.images is None else _n(v.images),
              v.source) for v in r.val_sets]
    if r.val_sets:
        lines += ['    ' + line for line in _table(rows, right={4})]
    if r.checkpoint_freq is not None:
        item('checkpoints', f'every {_n(r.checkpoint_freq)} iterations = {_epochs(r.epochs(r.checkpoint_freq))} '
             'epochs (logger.save_checkpoint_freq)')
    for note in r.notes:
        item('note', note)
    return '\n'.join(lines)


def report_dict(r):
    """The report as plain JSON-able data (epochs and shares included)."""
    data = asdict(r)
    data['class_shares'] = r.class_shares
    return data
