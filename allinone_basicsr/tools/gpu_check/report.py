"""The GPU check's report: rows per section, written as markdown and JSON after every row."""
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import subprocess
import time
import traceback
from os import path as osp

import torch

import allinone_basicsr
from allinone_basicsr.tools.gpu_check.common import REPO, SECTIONS


class Report:
    """Rows of every section, written as markdown and JSON after each row (``<out>/gpu_check.{md,json}``)."""

    def __init__(self, out, env):
        self.out, self.env = out, env
        self.sections, self.rows = [], []
        os.makedirs(out, exist_ok=True)

    def add(self, section, status, **fields):
        row = dict(section=section, status=status, **fields)
        self.rows.append(row)
        detail = ', '.join(f'{k} {_show(v)}' for k, v in fields.items() if v not in (None, '', []))
        print(f'{status:4s}  {section:8s}  {detail}', flush=True)
        self.write()
        return row

    @contextlib.contextmanager
    def section(self, name):
        """Times a section; its status: FAIL when it raised or a row failed, PASS when a row passed, else SKIP."""
        start, first = time.time(), len(self.rows)
        entry = {'section': name, 'status': 'RUNNING', 'seconds': None, 'note': ''}
        self.sections.append(entry)
        print(f'== {name}', flush=True)
        try:
            yield
        except Exception as err:  # noqa: BLE001 (one broken section must not hide the others)
            logging.getLogger('basicsr').error(f'section {name} failed:\n{traceback.format_exc()}')
            self.add(name, 'FAIL', error=_reason(err))
        statuses = [r['status'] for r in self.rows[first:]]
        entry['status'] = 'FAIL' if 'FAIL' in statuses else 'PASS' if 'PASS' in statuses else 'SKIP'
        entry['seconds'] = round(time.time() - start, 1)
        entry['note'] = f'{len(statuses)} rows'
        print(f'{entry["status"]}  {name}: {len(statuses)} rows in {entry["seconds"]} s', flush=True)
        self.write()

    @property
    def failed(self):
        return any(s['status'] == 'FAIL' for s in self.sections)

    def write(self):
        with open(osp.join(self.out, 'gpu_check.json'), 'w') as f:
            json.dump({'env': self.env, 'sections': self.sections, 'rows': self.rows}, f, indent=1, default=str)
        with open(osp.join(self.out, 'gpu_check.md'), 'w') as f:
            f.write(self.markdown())

    def markdown(self):
        env = self.env
        lines = ['# GPU check', '', f'{env["device_name"]} · torch {env["torch"]} · CUDA {env["cuda"]} · cuDNN '
                 f'{env["cudnn"]} · Python {env["python"]} · commit {env["commit"]} · {env["date"]}', '',
                 f'`{env["command"]}`', '']
        if env['device'] == 'cpu':
            lines += [f'**CPU run** ({env["threads"]} threads): every time and memory figure below is a CPU figure, '
                      'not a GPU one (memory: the growth of the process\'s peak resident size).', '']
        lines += ['| section | result | seconds | rows |', '|---|---|---|---|']
        lines += [f'| {s["section"]} | {s["status"]} | {s["seconds"]} | {s["note"]} |' for s in self.sections]
        for name in SECTIONS:
            rows = [r for r in self.rows if r['section'] == name]
            if not rows:
                continue
            keys = [k for k in rows[0] if k != 'section']
            for row in rows[1:]:
                keys += [k for k in row if k not in keys and k != 'section']
            lines += ['', f'## {name}', '', '| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
            lines += ['| ' + ' | '.join(_show(r.get(k, '')).replace('|', '/') for k in keys) + ' |' for r in rows]
        return '\n'.join(lines) + '\n'


def _show(value):
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f'{value:.3g}' if abs(value) < 0.01 else f'{value:.4g}' if abs(value) < 100 else f'{value:.0f}'
    if isinstance(value, (list, tuple)):
        return ', '.join(map(str, value))
    return '' if value is None else str(value)


def _reason(err, limit=300):
    text = f'{type(err).__name__}: {(str(err).strip().splitlines() or [""])[0]}'
    return text if len(text) <= limit else text[:limit - 1] + '…'


def environment(device, argv, tiny):
    commit = 'unknown'
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip() or commit
    except (OSError, subprocess.SubprocessError):
        pass
    cuda = device.type == 'cuda'
    name = torch.cuda.get_device_name(device) if cuda else f'CPU ({platform.processor() or platform.machine()})'
    if cuda:
        major, minor = torch.cuda.get_device_capability(device)
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        name += f' (capability {major}.{minor}, {memory:.0f} GiB)'
    return {'device': device.type, 'device_name': name, 'torch': torch.__version__, 'cuda': torch.version.cuda,
            'cudnn': torch.backends.cudnn.version() if cuda else None, 'python': platform.python_version(),
            'allinone_basicsr': allinone_basicsr.__version__, 'commit': commit, 'tiny': tiny,
            'threads': torch.get_num_threads(), 'date': datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
            'command': 'python -m allinone_basicsr.tools.gpu_check ' + ' '.join(argv)}
