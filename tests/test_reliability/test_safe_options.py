"""Option files run no code: a ``!!python/object/apply`` tag is refused, naming the file and the line, by every entry
point that reads option files (train, test, stock BasicSR pipelines with the plugin imported, and the tools), and
the payload (creating a marker file) never runs."""
import pytest
from pipeline_util import run_python

PAYLOAD = 'name: !!python/object/apply:os.system ["touch MARKER"]\nmodel_type: AllInOneModel\n'


def _hostile(tmp_path):
    path = tmp_path / 'hostile.yml'
    path.write_text('# an option file from somewhere\n' + PAYLOAD)
    return path


@pytest.mark.parametrize('args', [
    ['-m', 'allinone_basicsr.train', '-opt', 'hostile.yml'],
    ['-m', 'allinone_basicsr.test', '-opt', 'hostile.yml'],
    ['-c', 'import sys, allinone_basicsr, basicsr.train; sys.argv = ["x", "-opt", "hostile.yml"]; '
     'basicsr.train.train_pipeline(".")'],
    ['-m', 'allinone_basicsr.tools.recipe', 'hostile.yml'],
    ['-m', 'allinone_basicsr.tools.restore', '-opt', 'hostile.yml', '--input', '.', '--output', 'out'],
    ['-m', 'allinone_basicsr.tools.convert', 'missing.pth', 'out.pth', '--opt', 'hostile.yml'],
], ids=['train', 'test', 'stock-train', 'recipe', 'restore', 'convert'])
def test_option_files_run_no_code(tmp_path, args):
    _hostile(tmp_path)
    (tmp_path / 'missing.pth').write_bytes(b'')  # convert reads IN first: an empty file is refused later, not here
    proc = run_python(args, cwd=tmp_path, check=False, timeout=180, threads=1)
    assert proc.returncode != 0
    assert not (tmp_path / 'MARKER').exists(), 'the payload ran'
    out = proc.stdout + proc.stderr
    assert 'line 2' in out and "'tag:yaml.org,2002:python/object/apply:os.system'" in out, out[-2000:]


def test_compare_reads_a_run_options_file_without_running_it(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'metrics.csv').write_text('test_set,psnr\nset1,30.0\nAverage,30.0\n')
    (run / 'options.yml').write_text(PAYLOAD)
    proc = run_python(['-m', 'allinone_basicsr.tools.compare', str(run), '--out', str(tmp_path / 'cmp')],
                      cwd=tmp_path, check=False, timeout=180, threads=1)
    assert proc.returncode == 2 and not (tmp_path / 'MARKER').exists()
    assert 'line 1' in proc.stderr and 'asks for a Python object' in proc.stderr


def test_table_specs_and_their_option_files_run_no_code(tmp_path):
    (tmp_path / 'tables').mkdir()
    spec = tmp_path / 'tables' / 'hostile.yml'
    spec.write_text('title: !!python/object/apply:os.system ["touch MARKER"]\n')
    proc = run_python(['-m', 'allinone_basicsr.tools.table', str(spec)], cwd=tmp_path, check=False, timeout=180,
                      threads=1)
    assert proc.returncode == 2 and not (tmp_path / 'MARKER').exists()
    assert 'line 1' in proc.stderr and 'asks for a Python object' in proc.stderr
