"""The GPU check (``python -m allinone_basicsr.tools.gpu_check``) on CPU with tiny networks, as the suite can run it:
every section passes and the report has one row per method × precision; the official section with a stand-in
checkout; usage errors; the wheelhouse lists cover every import; the probes it reads."""
import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from pipeline_util import run_python, stand_in_official_symunet

from allinone_basicsr.tools import gpu_check
from allinone_basicsr.utils.probes import RecordHostReads, SdpaBackends

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def tiny_report(tmp_path_factory):
    """The whole check, ``--device cpu --tiny``, once for the module. The compile section traces and
    differentiates through ``aot_eager``: inductor's C++ code generation takes 1 to 3 minutes per method on 2 cores
    (measured: docs/gpu.md), which this suite cannot afford; a GPU run uses inductor."""
    out = tmp_path_factory.mktemp('gpu_check')
    proc = run_python(['-m', 'allinone_basicsr.tools.gpu_check', '--device', 'cpu', '--tiny', '--out', str(out / 'out'),
                       '--work-dir', str(out / 'work'), '--compile-backend', 'aot_eager'], cwd=out, check=False,
                      timeout=1200, threads=2)
    report = json.loads((out / 'out' / 'gpu_check.json').read_text())
    return proc, report, out


@pytest.mark.slow
def test_tiny_cpu_check_passes_every_section(tiny_report):
    proc, report, out = tiny_report
    failed = [r for r in report['rows'] if r['status'] == 'FAIL']
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-3000:])
    sections = {s['section']: s['status'] for s in report['sections']}
    assert sections == {'methods': 'PASS', 'syncs': 'PASS', 'resume': 'PASS', 'restore': 'PASS', 'official': 'SKIP',
                        'compile': 'PASS'}
    for section in sections:
        assert re.search(rf'^(PASS|SKIP)  {section}: \d+ rows in [0-9.]+ s$', proc.stdout, re.M), section
    assert 'GPU check: PASS' in proc.stdout
    markdown = (out / 'out' / 'gpu_check.md').read_text()
    assert '**CPU run**' in markdown and '## methods' in markdown and '## resume' in markdown


@pytest.mark.slow
def test_report_has_one_row_per_method_and_precision(tiny_report):
    _, report, _ = tiny_report
    rows = [r for r in report['rows'] if r['section'] in ('methods', 'compile')]
    cells = sorted((r['method'], r['variant']) for r in rows)
    assert cells == sorted((m, v) for m in gpu_check.METHODS for v in gpu_check.DEFAULT_VARIANTS)
    for row in rows:
        if row['status'] == 'SKIP':
            continue
        assert row['ms/step'] > 0 and row['fall'] <= gpu_check.LOSS_FALL, row
        if row['variant'] in ('bf16', 'fp16', 'bf16+cl'):
            assert row['max |out - fp32|'] <= gpu_check.TOLERANCE[row['variant'][:4]], row
    sdpa = {r['method']: r['sdpa'] for r in rows if r['variant'] == 'fp32'}
    assert sdpa['SymUNet'] == sdpa['DaAIR'] == sdpa['PromptIR'] == 'no SDPA'
    assert 'flash (CPU)' in sdpa['PromptDSANet'] and 'flash (CPU)' in sdpa['SESymUNet']


@pytest.mark.slow
def test_syncs_resume_and_restore_rows(tiny_report):
    _, report, _ = tiny_report
    syncs = [r for r in report['rows'] if r['section'] == 'syncs']
    assert {(r['method'], r['precision'], r['syncs per step']) for r in syncs} == {
        (m, p, 2 if p == 'fp16' else 1) for m in ('SymUNet', 'DaAIR') for p in ('fp32', 'bf16', 'fp16')}
    resume = [r for r in report['rows'] if r['section'] == 'resume']
    assert [r.get('method', r.get('check')) for r in resume] == ['SymUNet', 'torchrun', 'DaAIR']
    assert all(r['tensors equal'] is True for r in resume if 'method' in r)
    assert 'params_ema' in resume[0]['keys'] and resume[1]['backend'] == 'gloo'
    restore = [r for r in report['rows'] if r['section'] == 'restore']
    assert len(restore) == 3 and restore[-1]['pixel-wise net: max |tiled - whole|'] <= 1e-5


def test_official_section_times_both_and_compares_outputs(tmp_path):
    checkout = stand_in_official_symunet(tmp_path / 'official')
    proc = run_python(['-m', 'allinone_basicsr.tools.gpu_check', '--device', 'cpu', '--tiny', '--sections', 'official',
                       '--official-symunet', str(checkout), '--out', str(tmp_path / 'out')], cwd=tmp_path,
                      check=False, timeout=600, threads=1)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (row, ) = json.loads((tmp_path / 'out' / 'gpu_check.json').read_text())['rows']
    assert row['method'] == 'SymUNet' and row['status'] == 'PASS' and row['max |ours - official|'] == 0
    for precision in ('fp32', 'bf16'):
        ratio = row[f'ours {precision} ms'] / row[f'official {precision} ms']
        assert row[f'official {precision} ms'] > 0 and abs(row[f'{precision} ratio'] - ratio) < 1e-9


def test_official_section_refuses_the_other_method(tmp_path):
    checkout = stand_in_official_symunet(tmp_path / 'official')
    proc = run_python(['-m', 'allinone_basicsr.tools.gpu_check', '--device', 'cpu', '--tiny', '--sections', 'official',
                       '--official-promptir', str(checkout), '--out', str(tmp_path / 'out')], cwd=tmp_path,
                      check=False, timeout=300, threads=1)
    assert proc.returncode == 1
    assert 'that is the official SymUNet code' in proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--device', 'cuda:0'] if not torch.cuda.is_available() else ['--device', 'tpu'], '--device'),
    (['--device', 'cpu', '--variants', 'fp8'], "--variants: 'fp8' is not fp32 | bf16 | fp16"),
    (['--device', 'cpu', '--steps', '3'], '--steps must be at least 6'),
    (['--device', 'cpu', '--official-symunet', '/no/such/folder'], '--official-symunet /no/such/folder: not a folder'),
])
def test_usage_errors_exit_with_2(tmp_path, args, message):
    proc = run_python(['-m', 'allinone_basicsr.tools.gpu_check', '--out', str(tmp_path / 'out'), *args], cwd=tmp_path,
                      check=False, timeout=120, threads=1)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_variants_parse():
    assert gpu_check.parse_variant('bf16+cl+compile') == gpu_check.Variant('bf16+cl+compile', 'bf16', True, True)
    assert gpu_check.parse_variant('fp32') == gpu_check.Variant('fp32')
    assert gpu_check.parse_variant('fp16+compile').twin == 'fp16'


# ------------------------------------------------------------------------------------------------- the wheelhouse
def _script_list(name):
    text = (REPO / 'scripts' / 'gpu_wheels.sh').read_text()
    return re.search(rf'^{name}=\((.*)\)$', text, re.M).group(1).split()


def _norm(name):
    return re.sub(r'[-_.]+', '-', name).lower()


def _third_party_imports():
    names = set()
    for path in (REPO / 'allinone_basicsr').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split('.')[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != 'allinone_basicsr'}


# requirements a wheel declares under another name than the image's distribution, and ones its code never imports
SAME_AS = {'tb-nightly': 'tensorboard'}  # basicsr's tensorboard (imported only for use_tb_logger)
NEVER_IMPORTED = {'future': ('future', 'past', 'libfuturize', 'libpasteurize')}  # basicsr's: Python 2 leftovers


def _imports_of(distribution):
    names = set()
    for file in importlib.metadata.files(distribution) or []:
        if file.suffix == '.py':
            tree = ast.parse(Path(file.locate()).read_text(errors='replace'))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names |= {a.name.split('.')[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split('.')[0])
    return names


def test_wheelhouse_covers_every_import_and_its_requirements():
    """Every third-party module the package imports comes from a distribution the GPU image has (PRESENT) or the
    wheelhouse brings (WHEELS); so does every requirement of those wheels (extras and markers for other Pythons
    aside; a requirement the wheel's code never imports is checked to be so)."""
    wheels, present = {_norm(n) for n in _script_list('WHEELS')}, {_norm(n) for n in _script_list('PRESENT')}
    known = wheels | present
    owners = importlib.metadata.packages_distributions()
    missing = {module: owners.get(module) for module in _third_party_imports()
               if not any(_norm(d) in known for d in owners.get(module, []))}
    assert not missing, f'imports from distributions in neither list: {missing}'
    for wheel in wheels:
        for requirement in importlib.metadata.requires(wheel) or []:
            if 'extra ==' in requirement or 'python_version < "3.1' in requirement.replace("'", '"'):
                continue
            name = _norm(re.match(r'[A-Za-z0-9_.-]+', requirement).group(0))
            name = SAME_AS.get(name, name)
            if name in NEVER_IMPORTED:
                assert not _imports_of(wheel) & set(NEVER_IMPORTED[name]), f'{wheel} imports {name} after all'
                continue
            assert name in known, f'{wheel} requires {requirement}, in neither list'


# ---------------------------------------------------------------------------------------------------- the probes
def test_sdpa_probe_names_the_kernel():
    q = torch.rand(1, 2, 16, 8)
    with SdpaBackends() as sdpa:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert sdpa.calls == 1 and sdpa.summary() == 'flash (CPU) ×1'
    mask = torch.ones(16, 16, dtype=torch.bool)
    with SdpaBackends() as sdpa:  # a boolean mask with dropout: the CPU's fused kernel does not take it
        torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask, dropout_p=0.5)
    assert sdpa.counts() == {'math': 1}
    with SdpaBackends() as sdpa:
        torch.rand(3) + 1
    assert sdpa.summary() == 'no SDPA'


def test_host_read_probe_records_the_caller():
    x = torch.rand(3)
    with RecordHostReads() as record:
        x.sum().item()
        x.tolist()
        x + 1
    assert [c.split(' (')[0] for c in record.calls] == ['item', 'tolist']
    assert all('test_gpu_check.py' in c for c in record.calls)


def test_both_official_checkouts_load_in_one_process(tmp_path):
    """The GPU check loads SymUNet's official file (which imports ``transformers``, stood in for when missing) and then
    PromptIR's in the same process: the second load must not trip over the stand-in."""
    symunet = stand_in_official_symunet(tmp_path / 'symunet')
    promptir = tmp_path / 'promptir' / 'net' / 'model.py'
    promptir.parent.mkdir(parents=True)
    promptir.write_text('from allinone_basicsr.archs.promptir_arch import PromptIR as _Ours\n\n\n'
                        'class PromptIR(_Ours):\n    pass\n')
    code = ('import sys\nfrom allinone_basicsr.utils.official import load_official\n'
            'print([load_official(sys.argv[1])[0], load_official(sys.argv[2])[0], load_official(sys.argv[1])[0]])')
    proc = run_python(['-c', code, str(symunet), str(promptir.parent.parent)], timeout=120)
    assert proc.stdout.strip().splitlines()[-1] == "['SymUNet', 'PromptIR', 'SymUNet']"
