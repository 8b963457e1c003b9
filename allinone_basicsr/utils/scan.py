"""Auto-import of registry modules, BasicSR's convention: a subpackage imports its `*_<suffix>.py` files."""
import importlib
from os import path as osp

from basicsr.utils import scandir


def import_modules(package, init_file, suffix):
    """Import every ``*_<suffix>.py`` next to ``init_file`` as ``<package>.<name>`` (so it registers)."""
    folder = osp.dirname(osp.abspath(init_file))
    names = sorted(osp.splitext(v)[0] for v in scandir(folder) if v.endswith(f'_{suffix}.py'))
    return [importlib.import_module(f'{package}.{name}') for name in names]
