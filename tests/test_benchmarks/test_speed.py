"""benchmarks/speed.py measures in subprocesses: positive medians, memory, skips, and errors reported per cell."""
import argparse
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCH))
import speed  # noqa: E402


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
    proc = subprocess.run([sys.executable, str(BENCH / 'speed.py'), '--methods', 'DaAIR', '--train-size', '32',
                           '--infer-size', '32', '--repeats', '1', '--threads', '1', '--skip', 'DaAIR:infer'],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = [line for line in proc.stdout.splitlines() if line.startswith('| DaAIR')][0]
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert float(cells[1]) > 0 and cells[3] == 'not run'
