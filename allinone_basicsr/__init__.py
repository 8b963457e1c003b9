"""allinone-basicsr: all-in-one image restoration methods registered into BasicSR's registries.

Importing the package applies the basicsr 1.4.2 compatibility fixes (``_compat``) and then imports every
arch, dataset, loss, metric and model module, so their names resolve through BasicSR's registries.
"""
__version__ = '0.1.0'

from . import _compat

_compat.apply()

from . import archs, data, losses, metrics, models  # noqa: E402,F401  (registration)
