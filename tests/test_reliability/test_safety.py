"""No code runs from a file: a checkpoint whose unpickling would call ``os.system`` (it would create a marker file)
is refused through train, test, restore and resume, and a file that is no PyTorch file is refused before anything
unpickles it."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from pipeline_util import run_python as run

from allinone_basicsr.utils import checkpoint as checkpoint_util

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[2]
TINY_NET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1,
            'dec_blk_nums': [1, 1, 1], 'restormer_heads': [1, 2, 4], 'restormer_middle_heads': 8}


class _RunsCode:
    """Unpickling this calls os.system (what a hostile checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    from make_demo_data import build_demo_data
    root = tmp_path_factory.mktemp('safety')
    build_demo_data(str(root / 'datasets' / 'demo'), seed=0)
    return root


def hostile(path, marker, **content):
    torch.save(dict(content, payload=_RunsCode(marker)), path)
    return path


def options(kind, name, pretrain=None):
    with open(REPO / 'options' / 'demo' / f'{kind}_symunet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt.update(name=name, network_g=dict(TINY_NET))
    opt['path']['pretrain_network_g'] = pretrain
    keep = ('train', 'val_rain') if kind == 'train' else ('test_4_rain', )
    opt['datasets'] = {k: v for k, v in opt['datasets'].items() if k in keep}
    if kind == 'train':
        opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0,
                                        persistent_workers=False)
        opt['train'].update(total_iter=4)
        opt['train']['scheduler']['periods'] = [6]
        opt['val']['val_freq'] = 100
        opt['logger'].update(print_freq=2, save_checkpoint_freq=2, use_tb_logger=False)
    return opt


def write(workdir, filename, opt):
    with open(workdir / filename, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return filename


def test_hostile_checkpoint_never_runs_through_train_test_restore(workdir):
    marker = workdir / 'MARKER'
    evil = hostile(workdir / 'evil.pth', marker, params={'w': torch.zeros(1)})
    (workdir / 'photos').mkdir()
    cv2.imwrite(str(workdir / 'photos' / 'a.png'), np.full((16, 16, 3), 128, np.uint8))
    failures = []
    for args in (['-m', 'allinone_basicsr.train', '-opt', write(workdir, 't.yml', options('train', 'evil', str(evil)))],
                 ['-m', 'allinone_basicsr.test', '-opt', write(workdir, 'e.yml', options('test', 'evil_t', str(evil)))],
                 ['-m', 'allinone_basicsr.tools.restore', '-opt', 'e.yml', '--input', 'photos', '--output', 'out']):
        proc = run(args, workdir, check=False, timeout=300)
        failures.append(proc.returncode)
        assert 'posix.system' in proc.stderr and '--trust-pickle' in proc.stderr, proc.stderr[-2000:]
        assert not marker.exists(), args
    assert all(code != 0 for code in failures)


def test_hostile_training_state_is_skipped_on_resume(workdir):
    marker = workdir / 'MARKER_RESUME'
    run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'r.yml', options('train', 'resume_evil'))], workdir)
    state = workdir / 'experiments' / 'resume_evil' / 'training_states' / '4.state'
    hostile(state, marker, iter=4, epoch=0, optimizers=[], schedulers=[])
    proc = run(['-m', 'allinone_basicsr.train', '-opt', 'r.yml', '--auto_resume'], workdir)
    assert 'skipping unreadable training state' in proc.stderr and '4.state' in proc.stderr
    assert not marker.exists()
    # the advice is ours (resume from another state), never torch's (unpickle it with weights_only=False)
    advice = 'holds Python objects that only a full unpickle can rebuild (posix.system)'
    assert f'training state {state} {advice}' in proc.stderr and 'Resume from another state' in proc.stderr
    assert 'weights_only' not in proc.stderr
    hostile(state, marker, iter=4, epoch=0, optimizers=[], schedulers=[])  # the resumed run wrote a new 4.state
    opt = options('train', 'resume_evil')
    opt['path']['resume_state'] = str(state)
    proc = run(['-m', 'allinone_basicsr.train', '-opt', write(workdir, 'r2.yml', opt)], workdir, check=False)
    assert proc.returncode != 0 and not marker.exists()
    assert f'path.resume_state: training state {state} {advice}' in proc.stderr, proc.stderr[-2000:]
    assert 'weights_only' not in proc.stderr


def test_non_torch_files_are_refused_before_unpickling(tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError('torch.load reached')

    monkeypatch.setattr(torch, 'load', no_unpickling)
    for name, content in (('weights.json', b'{"params": {}}'), ('photo.png', b'\x89PNG\r\n\x1a\n')):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf'path.pretrain_network_g: .*{name} is not a PyTorch checkpoint'):
            checkpoint_util.load_checkpoint(str(tmp_path / name))
