"""Optional dependencies (setup.py's ``extras_require``): imported on first use, a missing one named with its extra."""
import importlib

__all__ = ['MissingExtraError', 'require']


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra installs it."""


def require(module, package, extra, who):
    """The imported ``module``, or :class:`MissingExtraError` ``<who> needs <package>: pip install
    'allinone-basicsr[<extra>]'`` when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{who} needs {package}: pip install 'allinone-basicsr[{extra}]' (or pip install "
                                f'{package}); importing {module} failed: {err}', name=module) from err
