"""benchmarks/speed.py measures in subprocesses: positive medians, memory, skips, and errors reported per cell."""
import argparse
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCH))
import speed  # noqa: E402
from pipeline_util import run_python  # noqa: E402


def _args(**kw):
    base = dict(repeats=2, threads=1, channels_last=False, bf16=False, compile=False)
    base.update(kw)
    return argparse.Namespace(**base)


def test_measure_returns_median_time_and_peak_memory():
    train = speed.measure('DaAIR', 'train', 32, _args())
    infer = speed.measure('DaAIR', 'infer', 32, _args(channels_last=True))
    assert train['seconds'] > 0 and infer['seconds'] > 0 and train['peak_mb'] >= 0
    assert train['device'] in ('cpu', 'cuda')
    assert 'error' in speed.measure('NoSuchArch', 'infer', 32, _args())


def test_table_and_skips():
    proc = run_python([str(BENCH / 'speed.py'), '--methods', 'DaAIR', '--train-size', '32', '--infer-size', '32',
                       '--repeats', '1', '--threads', '1', '--skip', 'DaAIR:infer'], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith('| DaAIR')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert float(cells[1]) > 0 and cells[3] == 'not run'


def test_compare_official_rejects_a_folder_that_is_no_checkout(tmp_path):
    proc = run_python([str(BENCH / 'speed.py'), '--compare-official', str(tmp_path)], check=False, timeout=300)
    assert proc.returncode != 0
    assert f'--compare-official {tmp_path}: not an official checkout' in proc.stderr
    assert 'basicsr/models/archs/SymUNet_arch.py (SymUNet)' in proc.stderr and 'net/model.py (PromptIR)' in proc.stderr


def test_compare_official_times_both_side_by_side(tmp_path):
    """A stand-in checkout (the official code is not in this repository): its SymUNet_arch.py imports
    ``transformers`` at the top like the official file (replaced by an empty module when not installed) and
    defines SymUNet as ours, so the outputs must match exactly and both columns must be filled."""
    arch = tmp_path / 'basicsr' / 'models' / 'archs' / 'SymUNet_arch.py'
    arch.parent.mkdir(parents=True)
    arch.write_text('from transformers import CLIPModel, CLIPImageProcessor\n'
                    'from allinone_basicsr.archs.symunet_arch import SymUNet as _Ours\n\n\n'
                    'class SymUNet(_Ours):\n    pass\n')
    proc = run_python([str(BENCH / 'speed.py'), '--compare-official', str(tmp_path), '--rounds', '1', '--train-size',
                       '32', '--threads', '1'], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith('| SymUNet')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    official_ms, ours_ms, ratio = float(cells[1]), float(cells[2]), float(cells[3].rstrip('×'))
    assert official_ms > 0 and ours_ms > 0 and abs(ratio - ours_ms / official_ms) < 0.02 + 0.05 * ratio
    assert float(cells[9]) == 0.0  # max output diff: the same arch, the official weights loaded strictly
    assert 'best of 1 interleaved rounds' in proc.stdout


def test_compare_official_names_a_missing_dependency_of_the_official_code(tmp_path):
    (tmp_path / 'net').mkdir()
    (tmp_path / 'net' / 'model.py').write_text('import no_such_module_of_the_official_code\n')
    proc = run_python([str(BENCH / 'speed.py'), '--compare-official', str(tmp_path)], check=False, timeout=300)
    assert proc.returncode != 0
    assert 'the official PromptIR code imports no_such_module_of_the_official_code: pip install' in proc.stderr


def test_channels_last_runs_for_an_arch_with_5d_parameters():
    """PromptIR's ``prompt_param`` is 5-D: ``Module.to(memory_format=torch.channels_last)`` rejected it ("required
    rank 4 tensor"); only the 4-D parameters, buffers and the input are converted now."""
    proc = run_python([str(BENCH / 'speed.py'), '--methods', 'PromptIR', '--channels-last', '--train-size', '32',
                       '--infer-size', '32', '--repeats', '1', '--threads', '1'], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith('| PromptIR')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert float(cells[1]) > 0 and float(cells[3]) > 0, row
    assert "flags: ['channels_last']" in proc.stdout


def test_to_channels_last_converts_the_4d_tensors_only():
    import torch
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    net.prompt = torch.nn.Parameter(torch.rand(1, 2, 3, 4, 5))
    net.register_buffer('table', torch.rand(2, 3, 4, 5))
    speed.to_channels_last(torch, net)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last) and net[0].weight.shape == (4, 3, 3, 3)
    assert net.table.is_contiguous(memory_format=torch.channels_last)
    assert net.prompt.is_contiguous() and isinstance(net.prompt, torch.nn.Parameter)
    assert sorted(n for n, _ in net.named_parameters()) == ['0.bias', '0.weight', '1.bias', '1.weight', 'prompt']
