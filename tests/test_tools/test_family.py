"""The tools are one family: a console script each (setup.py), ``--help`` (exit 0, the console script's name in the
usage line) and the same exit status for a bad argument (2, one error line), run as users run them."""
import re
from pathlib import Path

import pytest
from pipeline_util import run_python

pytestmark = pytest.mark.slow  # end to end: subprocesses, training runs (make test-fast leaves it out)

REPO = Path(__file__).resolve().parents[2]
TOOLS = ('restore', 'compare', 'convert', 'recipe', 'table', 'gpu_check')


def test_every_tool_has_a_console_script():
    setup = (REPO / 'setup.py').read_text()
    scripts = dict(re.findall(r"'(allinone-[\w-]+)=([\w.]+:\w+)'", setup))
    for tool in TOOLS:
        assert scripts.get(f'allinone-{tool.replace("_", "-")}') == f'allinone_basicsr.tools.{tool}:cli', tool
    tools = sorted(p.stem for p in (REPO / 'allinone_basicsr' / 'tools').iterdir()
                   if (p.suffix == '.py' or (p / '__main__.py').is_file()) and p.stem not in ('__init__', 'common')
                   and (p.is_dir() or 'def cli(' in p.read_text()))
    assert sorted(TOOLS) == sorted(set(tools) & set(TOOLS)) and set(tools) <= set(TOOLS) | {'export'}, tools


@pytest.mark.parametrize('tool', TOOLS)
def test_help_and_a_bad_argument(tmp_path, tool):
    proc = run_python(['-m', f'allinone_basicsr.tools.{tool}', '--help'], cwd=tmp_path, timeout=120, threads=1)
    assert proc.stdout.startswith(f'usage: allinone-{tool.replace("_", "-")} ')
    proc = run_python(['-m', f'allinone_basicsr.tools.{tool}', '--no-such-flag'], cwd=tmp_path, check=False,
                      timeout=120, threads=1)
    assert proc.returncode == 2, proc.stderr
    assert 'error' in proc.stderr.splitlines()[-1] and 'Traceback' not in proc.stderr


@pytest.mark.parametrize('entry', ('train', 'test'))
def test_the_entry_points_usage_shows_their_console_script(tmp_path, entry):
    setup = (REPO / 'setup.py').read_text()
    assert f"'allinone-{entry}=allinone_basicsr.{entry}:main'" in setup
    proc = run_python(['-m', f'allinone_basicsr.{entry}', '--help'], cwd=tmp_path, timeout=120, threads=1)
    assert proc.stdout.startswith(f'usage: allinone-{entry} '), proc.stdout[:200]


def test_usage_errors_are_one_line_with_status_2(tmp_path):
    """An input that cannot be used (not an argparse error): the tool's own one-line message, exit status 2."""
    for tool, args in (('restore', ['-opt', 'missing.yml', '--input', '.', '--output', 'out']),
                       ('compare', [str(tmp_path / 'no_run')]),
                       ('convert', ['missing.pth', 'out.pth']),
                       ('table', ['missing_spec.yml'])):
        proc = run_python(['-m', f'allinone_basicsr.tools.{tool}', *args], cwd=tmp_path, check=False, timeout=120,
                          threads=1)
        assert proc.returncode == 2, (tool, proc.stderr)
        assert proc.stderr.strip().startswith(f'{tool}: error: ') and len(proc.stderr.strip().splitlines()) == 1, \
            (tool, proc.stderr)
