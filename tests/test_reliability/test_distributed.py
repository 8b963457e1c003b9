"""Two CPU processes (torchrun, gloo chosen automatically without CUDA) train a few iterations; the pipeline checks
at the end that both ranks hold identical weights (an all-gathered checksum per tensor)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which('torchrun') is None and not (Path(sys.executable).parent / 'torchrun').exists(),
                    reason='torchrun not installed')
def test_two_cpu_ranks_train_and_agree(tmp_path):
    from make_demo_data import build_demo_data
    build_demo_data(str(tmp_path / 'datasets' / 'demo'), seed=0)
    with open(REPO / 'options' / 'demo' / 'train_symunet_demo.yml') as f:
        opt = yaml.safe_load(f)
    opt['name'] = 'ddp_test'
    opt['network_g'] = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1,
                        'dec_blk_nums': [1, 1, 1], 'restormer_heads': [1, 2, 4], 'restormer_middle_heads': 8}
    opt['datasets'] = {'train': opt['datasets']['train']}
    opt['datasets']['train'].update(gt_size=32, batch_size_per_gpu=2, num_worker_per_gpu=0, persistent_workers=False,
                                    dataset_enlarge_ratio=1)
    opt.pop('val')
    opt['train'].update(total_iter=4)
    opt['train']['scheduler']['periods'] = [4]
    opt['logger'].update(print_freq=2, save_checkpoint_freq=2)
    opt['dist_params'] = {'backend': 'nccl', 'port': 29561}  # nccl is replaced by gloo without CUDA
    with open(tmp_path / 'train.yml', 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    torchrun = shutil.which('torchrun') or str(Path(sys.executable).parent / 'torchrun')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([torchrun, '--nproc_per_node=2', '--master_port=29561', '-m', 'allinone_basicsr.train',
                           '-opt', 'train.yml', '--launcher', 'pytorch'], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Grad strides do not match' not in proc.stderr  # weight gradients have the weights' strides
    exp = tmp_path / 'experiments' / 'ddp_test'
    log = ''.join(p.read_text() for p in exp.glob('train_*.log'))
    assert 'world_size: 2' in log and 'Weights identical on all 2 ranks.' in log
    state = torch.load(exp / 'training_states' / '4.state', weights_only=True)
    assert {int(s['step']) for s in state['optimizers'][0]['state'].values()} == {4}
