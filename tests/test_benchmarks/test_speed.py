"""benchmarks/speed.py measures in subprocesses: positive medians, memory, skips, and errors reported per cell;
train-step variants (float32, bfloat16 autocast, compiled) side by side, with the reason in the cell when one
cannot run."""
import argparse
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

BENCH = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCH))
import speed  # noqa: E402
from pipeline_util import run_python, stand_in_official_symunet  # noqa: E402


def _args(**kw):
    base = dict(repeats=2, threads=1, channels_last=False, bf16=False, compile=False)
    base.update(kw)
    return argparse.Namespace(**base)


def _rows(stdout, header_start):
    """Cells of the rows of the markdown table whose header starts with ``header_start``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith('|'):
            break
        rows.append([c.strip() for c in line.strip('|').split('|')])
    return [c.strip() for c in lines[start].strip('|').split('|')], rows


def _ratio_cell(cell):
    """'0.41× (0.43×)' -> (0.41, 0.43): ratio of the best times and of the medians."""
    match = re.fullmatch(r'([0-9.]+)× \(([0-9.]+)×\)', cell)
    assert match, cell
    return float(match.group(1)), float(match.group(2))


TINY_SYMUNET = ['--config', 'width=8', 'middle_blk_num=1', 'enc_blk_nums=[1,1,1]', 'dec_blk_nums=[1,1,1]',
                'restormer_middle_heads=2']


def test_measure_returns_median_time_and_peak_memory():
    train = speed.measure('DaAIR', 'train', 32, _args())
    infer = speed.measure('DaAIR', 'infer', 32, _args(channels_last=True))
    assert train['seconds'] > 0 and infer['seconds'] > 0 and train['peak_mb'] >= 0
    assert train['device'] in ('cpu', 'cuda')
    assert 'error' in speed.measure('NoSuchArch', 'infer', 32, _args())


def test_table_and_skips():
    """Also the variants table: float32 and bfloat16 train steps of the same method interleaved in one process,
    the ratio of the best times and of the medians."""
    proc = run_python([str(BENCH / 'speed.py'), '--methods', 'DaAIR', '--train-size', '32', '--infer-size', '32',
                       '--repeats', '1', '--threads', '1', '--skip', 'DaAIR:infer', '--variants', 'bf16',
                       '--rounds', '2'], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith('| DaAIR')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert float(cells[1]) > 0 and cells[3] == 'not run'
    head, rows = _rows(proc.stdout, '| method | ours fp32 (ms)')
    assert head == ['method', 'ours fp32 (ms)', 'ours bf16 (ms)', 'bf16 ÷ ours fp32']
    (method, fp32_ms, bf16_ms, ratio), = rows
    best, median = _ratio_cell(ratio)
    assert method == 'DaAIR' and float(fp32_ms) > 0 and float(bf16_ms) > 0 and median > 0
    assert abs(best - float(bf16_ms) / float(fp32_ms)) < 0.02 + 0.05 * best
    assert 'best of 2 rounds' in proc.stdout


def test_compare_official_rejects_a_folder_that_is_no_checkout(tmp_path):
    proc = run_python([str(BENCH / 'speed.py'), '--compare-official', str(tmp_path)], check=False, timeout=300)
    assert proc.returncode != 0
    assert f'--compare-official {tmp_path}: not an official checkout' in proc.stderr
    assert 'basicsr/models/archs/SymUNet_arch.py (SymUNet)' in proc.stderr and 'net/model.py (PromptIR)' in proc.stderr


def test_compare_official_times_both_side_by_side(tmp_path):
    """The stand-in defines SymUNet as ours, so the outputs must match exactly and every column must be filled;
    the variants table puts our bfloat16 train step beside our float32 and the official float32 steps, all from
    the same interleaved rounds."""
    checkout = stand_in_official_symunet(tmp_path)
    proc = run_python([str(BENCH / 'speed.py'), '--compare-official', str(checkout), '--rounds', '1', '--train-size',
                       '32', '--threads', '1', '--variants', 'bf16'], check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith('| SymUNet')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    official_ms, ours_ms, ratio = float(cells[1]), float(cells[2]), float(cells[3].rstrip('×'))
    assert official_ms > 0 and ours_ms > 0 and abs(ratio - ours_ms / official_ms) < 0.02 + 0.05 * ratio
    assert float(cells[9]) == 0.0  # max output diff: the same arch, the official weights loaded strictly
    assert 'best of 1 interleaved rounds' in proc.stdout
    head, rows = _rows(proc.stdout, '| method | official fp32 (ms)')
    assert head == ['method', 'official fp32 (ms)', 'ours fp32 (ms)', 'ours fp32 ÷ official fp32', 'ours bf16 (ms)',
                    'bf16 ÷ ours fp32', 'bf16 ÷ official fp32']
    (method, off, fp32, fp32_ratio, bf16, bf16_ratio, bf16_official), = rows
    assert method == 'SymUNet' and float(off) > 0 and float(bf16) > 0
    assert float(fp32) == ours_ms  # the same measurement as the first table's
    for cell, num, den in ((fp32_ratio, fp32, off), (bf16_ratio, bf16, fp32), (bf16_official, bf16, off)):
        best, median = _ratio_cell(cell)
        assert abs(best - float(num) / float(den)) < 0.02 + 0.05 * best and median > 0


def test_compiled_variant_says_why_it_cannot_run(tmp_path, monkeypatch):
    """torch.compile's CPU backend needs a C++ compiler: without one (CXX pointing nowhere) the compiled cell
    gives the reason, found before any tracing, and the other variants are still measured. ``--config`` makes the
    networks tiny."""
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-g++'))
    checkout = stand_in_official_symunet(tmp_path / 'checkout')
    proc = run_python([str(BENCH / 'speed.py'), '--compare-official', str(checkout), '--rounds', '1', '--train-size',
                       '32', '--threads', '1', '--variants', 'bf16', 'compiled', *TINY_SYMUNET],
                      check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head, rows = _rows(proc.stdout, '| method | official fp32 (ms)')
    cells = dict(zip(head, rows[0]))
    assert cells['ours compiled (ms)'] == (f'torch.compile needs a C++ compiler on CPU; tried {tmp_path}/no-such-g++ '
                                           '(InvalidCxxCompiler)')
    assert cells['compiled ÷ ours fp32'] == cells['compiled ÷ official fp32'] == '–'
    assert float(cells['ours bf16 (ms)']) > 0
    first = [line for line in proc.stdout.splitlines() if line.startswith('| SymUNet')][0]
    assert float(first.strip('|').split('|')[9]) == 0.0  # the overrides reach both networks


def test_variant_list_and_table_cells():
    assert speed._variant_list(['compiled', 'bf16', 'bf16']) == ['fp32', 'compiled', 'bf16']
    assert speed._variant_list(['none']) == []
    with pytest.raises(SystemExit, match='unknown'):
        speed._variant_list(['fp16'])
    assert speed._config_item('enc_blk_nums=[1,2]') == ('enc_blk_nums', [1, 2])
    assert speed._config_item('LayerNorm_type=BiasFree') == ('LayerNorm_type', 'BiasFree')
    best = {'official': 2.0, 'fp32': 1.0, 'bf16': 0.5}
    median = {'official': 2.0, 'fp32': 1.2, 'bf16': 0.6}
    lines = speed.variants_table([('SymUNet', best, median, {'compiled': 'compile failed: X'})],
                                 ['fp32', 'bf16', 'compiled'], official=True)
    assert lines[2] == ('| SymUNet | 2000 | 1000 | 0.50× (0.60×) | 500 | 0.50× (0.50×) | 0.25× (0.30×) | '
                        'compile failed: X | – | – |')


def test_compile_unavailable_names_the_missing_compiler(monkeypatch):
    import torch
    from torch._inductor import config
    assert speed.compile_unavailable(torch, torch.device('cuda')) is None  # checked on CPU only
    monkeypatch.setattr(config.cpp, 'cxx', (None, '/nonexistent/g++'))
    reason = speed.compile_unavailable(torch, torch.device('cpu'))
    assert reason == 'torch.compile needs a C++ compiler on CPU; tried /nonexistent/g++ (InvalidCxxCompiler)'


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
                       '--infer-size', '32', '--repeats', '1', '--threads', '1', '--variants', 'none'],
                      check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith('| PromptIR')]
    cells = [c.strip() for c in rows[0].strip('|').split('|')]
    assert float(cells[1]) > 0 and float(cells[3]) > 0, rows[0]
    assert "flags: ['channels_last']" in proc.stdout
    assert len(rows) == 1 and 'ours fp32 (ms)' not in proc.stdout  # --variants none: no variants table


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


def test_steps_call_a_wrapper_without_truth_value():
    """torch.compile's wrapper raises on len(), so a step that tested ``run or net`` failed for every compiled
    model; both steps run through the wrapper, and the bf16 train step updates the float32 master weights."""
    import torch

    class NoTruth(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

        def __len__(self):
            raise TypeError('no len()')

    net = torch.nn.Conv2d(3, 3, 1)
    x = torch.rand(1, 3, 4, 4)
    for bf16 in (False, True):
        opt = torch.optim.AdamW(net.parameters(), 1e-2)
        train, infer = speed._step_fns(torch, net, x, torch.zeros_like(x), opt, torch.device('cpu'), bf16,
                                       NoTruth(net))
        before = net.weight.detach().clone()
        train()
        infer()
        assert net.weight.dtype == torch.float32 and not torch.equal(before, net.weight)
