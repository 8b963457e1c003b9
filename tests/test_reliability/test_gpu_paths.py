"""CUDA-only paths exercised on the CPU by emulation (mocked torch.cuda, gloo ranks, a recording torch function
mode): resume states load onto the CPU, every rank's RNG states travel in the training state, the process-group
backend follows the tensors' device, the training step has one host sync, validation turns cuDNN autotuning off,
and the CUDA prefetcher starts at reset()."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from allinone_basicsr import _compat
from allinone_basicsr.data.prefetch import LazyCPUPrefetcher, LazyCUDAPrefetcher
from allinone_basicsr.utils.probes import RecordHostReads
from allinone_basicsr.utils.processes import free_port
from allinone_basicsr.utils.resume import gather_rng_states, get_rng_states, load_resume_state, restore_rng_states

from basicsr.data.prefetch_dataloader import CUDAPrefetcher
from basicsr.models import build_model


# ------------------------------------------------------------------ resume states load onto the CPU
def test_resume_state_loads_onto_the_cpu_when_cuda_is_there(tmp_path, monkeypatch):
    """BasicSR maps the state onto ``cuda:<current device>``; the RNG setters then fail on CUDA tensors
    ('RNG state must be a torch.ByteTensor'). Here CUDA is mocked present: everything must arrive on the CPU."""
    exp = tmp_path / 'experiments' / 'run'
    (exp / 'training_states').mkdir(parents=True)
    (exp / 'models').mkdir()
    torch.save({'iter': 4, 'epoch': 0, 'rng': [get_rng_states()], 'optimizers': [], 'schedulers': []},
               exp / 'training_states' / '4.state')
    torch.save({'params': {}}, exp / 'models' / 'net_g_4.pth')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    opt = {'auto_resume': True, 'name': 'run', 'root_path': str(tmp_path), 'num_gpu': 1, 'path': {},
           'is_train': True}
    state = load_resume_state(opt)
    tensors = [state['rng'][0]['torch'], state['rng'][0]['numpy']['keys']]
    assert all(t.device.type == 'cpu' for t in tensors)
    restored = []
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', lambda states: restored.append(states))
    state['rng'][0]['cuda'] = [torch.zeros(16, dtype=torch.uint8)]
    restore_rng_states(state['rng'], {'rank': 0, 'world_size': 1})
    assert restored and all(s.device.type == 'cpu' for s in restored[0])


def _rng_worker(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    torch.manual_seed(100 + rank)  # as BasicSR seeds: manual_seed + rank
    opt = {'dist': True, 'rank': rank, 'world_size': 2}
    saved = gather_rng_states(opt)
    expected = torch.rand(4)
    torch.rand(1000)  # the run goes on
    restore_rng_states(saved, opt)
    torch.save((len(saved), torch.equal(torch.rand(4), expected), expected), f'{out}/rank{rank}.pt')
    dist.destroy_process_group()


def test_every_rank_restores_its_own_rng_states(tmp_path):
    mp.start_processes(_rng_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method='spawn')
    results = [torch.load(tmp_path / f'rank{rank}.pt') for rank in range(2)]
    assert all(n == 2 and same for n, same, _ in results)  # two entries; each rank continues its own
    assert not torch.equal(results[0][2], results[1][2])  # the ranks' generators differ


def test_older_or_other_world_size_states():
    """Another number of ranks: a notice in the run's log (BasicSR's logger), not a Python warning."""
    import logging
    torch.manual_seed(1)
    state = get_rng_states()
    expected = torch.rand(3)
    restore_rng_states(state, {'rank': 0, 'world_size': 1})  # older states: rank 0's dict
    assert torch.equal(torch.rand(3), expected)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger('basicsr').addHandler(handler)
    try:
        restore_rng_states([state, state], {'rank': 0, 'world_size': 4})
    finally:
        logging.getLogger('basicsr').removeHandler(handler)
    assert any('holds the RNG states of 2 rank(s), this run has 4' in r.getMessage() and r.levelname == 'WARNING'
               for r in records)


# ------------------------------------------------------------------ backend
@pytest.fixture
def init_calls(monkeypatch):
    calls = {'set_device': [], 'init': []}
    monkeypatch.setattr(torch.cuda, 'set_device', lambda d: calls['set_device'].append(d))
    monkeypatch.setattr(dist, 'init_process_group', lambda backend, **kw: calls['init'].append(backend))
    return calls


@pytest.mark.parametrize('cuda_devices', [0, 2])
def test_pytorch_launcher_backend_follows_the_device(monkeypatch, init_calls, cuda_devices):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda_devices > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: cuda_devices)
    monkeypatch.setenv('RANK', '3')
    monkeypatch.setenv('LOCAL_RANK', '1')
    _compat._init_dist_pytorch('nccl')
    if cuda_devices:  # a CPU model (num_gpu: 0) on a CUDA machine sends CPU tensors: gloo takes those
        assert init_calls == {'set_device': [1], 'init': ['cpu:gloo,cuda:nccl']}
    else:
        assert init_calls == {'set_device': [], 'init': ['gloo']}


def test_slurm_launcher_without_cuda(monkeypatch, init_calls):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 0)
    monkeypatch.setattr('subprocess.getoutput', lambda cmd: 'node7')
    for key, value in dict(SLURM_PROCID='1', SLURM_NTASKS='2', SLURM_NODELIST='node[7-8]', SLURM_LOCALID='1').items():
        monkeypatch.setenv(key, value)
    for key in ('MASTER_ADDR', 'MASTER_PORT', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
        monkeypatch.delenv(key, raising=False)
    _compat._init_dist_slurm('nccl', port=29512)  # BasicSR's divides by the GPU count here
    assert init_calls == {'set_device': [], 'init': ['gloo']}
    assert (os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'], os.environ['RANK']) == ('node7', '29512', '1')


# ------------------------------------------------------------------ host syncs in the training step
TINY_DAAIR = {'type': 'DaAIR', 'dim': 8, 'num_blocks': [1, 1, 1, 1], 'num_dec_blocks': [1, 1, 1],
              'num_refinement_blocks': 1, 'heads': [1, 1, 2, 2], 'rank_ratio': 4, 'expert_kernel_size': 3}
TINY_SYMUNET = {'type': 'SymUNet', 'width': 8, 'enc_blk_nums': [1, 1, 1], 'middle_blk_num': 1,
                'dec_blk_nums': [1, 1, 1], 'restormer_heads': [1, 2, 4], 'restormer_middle_heads': 8}


def _train_opt(tmp_path, network, **train):
    train_opt = {'optim_g': {'type': 'AdamW', 'lr': 1e-3},
                 'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [10], 'restart_weights': [1]},
                 'total_iter': 10, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
                 'fft_opt': {'type': 'FFTLoss', 'loss_weight': 0.1}, 'grad_clip': 0.01, **train}
    return {'name': 'unit', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
            'world_size': 1, 'network_g': network, 'train': train_opt, 'datasets': {},
            'path': {'models': str(tmp_path), 'training_states': str(tmp_path), 'experiments_root': str(tmp_path)}}


@pytest.mark.parametrize('network, train', [
    (TINY_DAAIR, {'cls_opt': {'type': 'TaskClassificationLoss', 'loss_weight': 0.1}, 'ema_decay': 0.9}),
    (TINY_DAAIR, {'cls_opt': {'type': 'TaskClassificationLoss', 'loss_weight': 0.1}, 'teacher_forcing_iter': 5}),
    (TINY_SYMUNET, {}),
])
def test_one_host_sync_per_training_step(tmp_path, network, train):
    """DaAIR's routing, the classification loss, route_acc and the loss logging read nothing back from the device;
    the step's one sync is the loss guard's read (the non-finite flag and the loss for the spike rule, one tensor),
    after the backward is queued."""
    torch.manual_seed(0)
    model = build_model(_train_opt(tmp_path, network, **train))
    model.feed_data({'lq': torch.rand(4, 3, 16, 16), 'gt': torch.rand(4, 3, 16, 16),
                     'degradation': torch.tensor([0, 0, 2, 0])})  # class 1 absent: an expert with no sample
    with RecordHostReads() as record:
        model.optimize_parameters(1)
    assert len(record.calls) == 1 and record.calls[0].split(' (')[1].startswith('loss_guard.py'), record.calls
    log = model.get_current_log()  # the numbers, when the logger asks
    assert set(log) >= {'l_pix', 'l_fft'} and all(isinstance(v, float) for v in log.values())


def test_labels_outside_the_arch_classes_name_both(tmp_path):
    model = build_model(_train_opt(tmp_path, TINY_DAAIR, cls_opt={'type': 'TaskClassificationLoss'}))
    model.feed_data({'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 16, 16),
                     'degradation': torch.tensor([0, 3])})
    with pytest.raises(ValueError, match=r'degradation label 3 out of range for the 3 classes of DaAIR'):
        model.optimize_parameters(1)


# ------------------------------------------------------------------ cuDNN autotuning off during validation
class _Set(torch.utils.data.Dataset):
    opt = {'name': 'set', 'degradation': 'noise'}

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {'lq': torch.rand(3, 8 + 4 * i, 8), 'gt': torch.rand(3, 8 + 4 * i, 8), 'lq_path': f'{i}.png'}


def test_validation_turns_cudnn_autotuning_off_and_back_on(tmp_path, monkeypatch):
    opt = dict(_train_opt(tmp_path, TINY_SYMUNET), is_train=False, datasets={'test_1': {}},
               val={'pbar': False, 'metrics': {'psnr': {'type': 'calculate_psnr_aio'}}},
               path={'results_root': str(tmp_path), 'visualization': str(tmp_path)})
    model = build_model(opt)
    seen = []
    test = model.test
    monkeypatch.setattr(model, 'test', lambda: (seen.append(torch.backends.cudnn.benchmark), test())[1])
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    model.validation(torch.utils.data.DataLoader(_Set(), batch_size=1), 1, None)
    assert seen == [False, False] and torch.backends.cudnn.benchmark is True


# ------------------------------------------------------------------ prefetchers start at reset()
class _Counted(torch.utils.data.Dataset):
    def __init__(self):
        self.reads = 0

    def __len__(self):
        return 4

    def __getitem__(self, i):
        self.reads += 1
        return {'lq': torch.full((1,), float(i))}


@pytest.mark.parametrize('cuda', [True, False])
def test_prefetcher_reads_nothing_before_reset(monkeypatch, cuda):
    class Stream:
        def wait_stream(self, other):
            pass

    monkeypatch.setattr(torch.cuda, 'Stream', Stream)
    monkeypatch.setattr(torch.cuda, 'stream', lambda s: torch.autograd.profiler.record_function('emulated stream'))
    monkeypatch.setattr(torch.cuda, 'current_stream', Stream)
    dataset = _Counted()
    loader = torch.utils.data.DataLoader(dataset, batch_size=2)
    if cuda:
        CUDAPrefetcher(loader, {'num_gpu': 0})
        assert dataset.reads == 2  # BasicSR's: a batch read (and copied) before the loop sets the sampler's epoch
        dataset.reads = 0
    prefetcher = LazyCUDAPrefetcher(loader, {'num_gpu': 0}) if cuda else LazyCPUPrefetcher(loader)
    assert dataset.reads == 0 and prefetcher.next() is None
    prefetcher.reset()
    batches = [prefetcher.next(), prefetcher.next(), prefetcher.next()]
    assert [b['lq'].flatten().tolist() for b in batches[:2]] == [[0.0, 1.0], [2.0, 3.0]] and batches[2] is None
    assert dataset.reads == 4


# ------------------------------------------------------------------ deterministic: true
def test_deterministic_option_sets_cudnn_and_torch_modes(monkeypatch):
    """``deterministic: true``: no cuDNN autotuning, cuDNN and torch's deterministic algorithms (warn-only), cuBLAS's
    fixed workspace; without it cuDNN autotunes (BasicSR's setting)."""
    from allinone_basicsr.train import configure_determinism
    from allinone_basicsr.utils.options import check_options
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        configure_determinism({'deterministic': True})
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (False, True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
        configure_determinism({})
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
    opt = {'name': 'x', 'model_type': 'AllInOneModel', 'num_gpu': 0, 'deterministic': 'yes', 'datasets': {},
           'network_g': {'type': 'SymUNet'}, 'path': {}}
    with pytest.raises(TypeError, match=r"deterministic: 'yes' \(str\) is not a bool"):
        check_options(opt, is_train=False)
