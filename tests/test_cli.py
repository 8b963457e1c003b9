"""``--help`` of the entry points describes them, the plugin's methods and every flag BasicSR's parser takes."""
import sys

import pytest

from allinone_basicsr import test as test_entry
from allinone_basicsr import train as train_entry


@pytest.mark.parametrize('entry, flags', [
    (train_entry, ['-opt', '--auto_resume', '--debug', '--force_yml', '--launcher']),
    (test_entry, ['-opt', '--debug', '--force_yml', '--launcher']),
])
def test_help_describes_entry_methods_and_flags(entry, flags, monkeypatch, capsys):
    monkeypatch.setattr(sys, 'argv', ['prog', '--help'])
    with pytest.raises(SystemExit) as exit_info:
        entry.main()
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in flags)
    assert all(name in text for name in ('SymUNet', 'SESymUNet', 'DaAIR', 'PromptDSANet', 'PromptIR', 'AllInOneModel'))
    assert 'BasicSR' in text and 'slurm' in text
