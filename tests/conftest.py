"""Shared fixtures: the official reference files in ../shared (beside the clone, as CI has it)."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

import allinone_basicsr  # noqa: F401  (registers everything before any test imports basicsr)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'datasets_prep'))  # the data-preparation scripts are scripts, not a package
sys.path.insert(0, str(REPO / 'tests'))  # pipeline_util
SHARED = Path(os.environ.get('ALLINONE_SHARED', REPO.parent / 'shared'))


@pytest.fixture(scope='session')
def reference_dir():
    ref = SHARED / 'reference'
    if not ref.is_dir():
        if os.environ.get('CI'):
            pytest.fail(f'reference files not found at {ref} (set ALLINONE_SHARED to the shared folder)')
        pytest.skip(f'reference files not found at {ref} (set ALLINONE_SHARED to the shared folder)')
    return ref


@pytest.fixture(scope='session')
def check_reference(reference_dir):
    """The shared check_reference.py module (the same checks the developers run by hand)."""
    path = reference_dir.parent / 'tools' / 'check_reference.py'
    spec = importlib.util.spec_from_file_location('check_reference', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
