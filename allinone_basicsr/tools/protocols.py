"""The protocol table (``protocols.yml``): one row per shipped ``options/train_*.yml``, every number of it with its
source (``paper``, ``official code``, ``derived``, ``assumption``; the file's header gives the fields), and the
comparison of a recipe report with its row. The recipe tool and tests/test_recipe.py check every file against it."""
import math
from os import path as osp

from allinone_basicsr.utils.options import plain, read_yaml


def network_options(network_g, arch=None):
    """``network_g`` without ``type``, every option the file leaves out filled with the arch's default (for archs
    decorated with ``check_arch_options``), so a protocol row can pin an arch switch (DaAIR's ablations) whether the
    file writes it or relies on the default."""
    options = {k: v for k, v in network_g.items() if k != 'type'}
    spec = getattr(arch, 'arch_option_spec', None) or {}
    for name, (default, _, _) in spec.items():
        options.setdefault(name, list(default) if isinstance(default, tuple) else default)
    return options


PROTOCOLS_FILE = osp.join(osp.dirname(osp.abspath(__file__)), 'protocols.yml')
PROTOCOL_SOURCES = ('paper', 'official code', 'derived', 'assumption')


def load_protocols(path=PROTOCOLS_FILE):
    """The protocol table (``protocols.yml``): {option file name: row}; see the file's header for the fields."""
    return plain(read_yaml(path, 'protocol table'))


PROTOCOL_GROUPS = ('loss_weights', 'repeats', 'network')  # fields whose entries are {name: {value, source, ref}}


def protocol_values(row):
    """A protocol row's numbers without their sources: {field: value}, ``loss_weights`` / ``repeats`` / ``network``
    as dicts."""
    values = {}
    for key, entry in row.items():
        if key in PROTOCOL_GROUPS:
            values[key] = {name: leaf['value'] for name, leaf in entry.items()}
        elif isinstance(entry, dict):
            values[key] = entry['value']
    return values


def recipe_values(recipe, unit):
    """The same fields as ``protocol_values`` derived from a report; ``unit`` is 'epochs' or 'iterations'."""
    if unit == 'epochs':
        lengths = (recipe.total_epochs, recipe.warmup_epochs, recipe.cosine_end_epochs)
    else:
        lengths = (recipe.total_iter, recipe.warmup_iter, recipe.cosine_end_iter)
    return {
        'world_size': recipe.world_size,
        'effective_batch': recipe.effective_batch,
        'patch': recipe.patch,
        'total': lengths[0],
        'warmup': lengths[1],
        'cosine_end': lengths[2],
        'optimizer': recipe.optimizer['type'],
        'lr': recipe.optimizer['lr'],
        'weight_decay': recipe.optimizer.get('weight_decay'),
        'grad_clip': recipe.grad_clip,
        'ema_decay': recipe.ema_decay,
        'loss_weights': {key: loss['loss_weight'] for key, loss in recipe.losses.items()},
        'repeats': {task.name: task.repeat for task in recipe.tasks},
        'network': dict(recipe.network),
        'augment': list(recipe.augment),
    }


def _same(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def protocol_mismatches(recipe, row):
    """What an option file does differently from its protocol row: ['field: file X, protocol Y (source: ref)'].

    ``loss_weights`` and ``repeats`` must match as a whole (a loss or task the row lacks is a difference); a row's
    ``network`` pins only the arch options it lists (file value, else the arch's default)."""
    derived = recipe_values(recipe, row['unit'])
    mismatches = []
    for key, want in protocol_values(row).items():
        got = derived.get(key)
        if key == 'network':
            got = {name: got.get(name) for name in want}
        if _same(got, want):
            continue
        if key in PROTOCOL_GROUPS:
            names = sorted(set(got) | set(want))
            for name in names:
                if not _same(got.get(name), want.get(name)):
                    leaf = row[key].get(name) or {}
                    where = f" ({leaf['source']}: {leaf['ref']})" if leaf else ''
                    mismatches.append(f'{key}.{name}: file {got.get(name)}, protocol {want.get(name)}{where}')
        else:
            unit = f" {row['unit']}" if key in ('total', 'warmup', 'cosine_end') else ''
            got_text = f'{got:.6g}' if isinstance(got, float) else got
            mismatches.append(f"{key}: file {got_text}{unit}, protocol {want}{unit} ({row[key]['source']}: "
                              f"{row[key]['ref']})")
    return mismatches
