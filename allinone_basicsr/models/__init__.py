"""Imports every `*_model.py` module of this folder, so its classes register in BasicSR's registry."""
from allinone_basicsr.utils.scan import import_modules

_modules = import_modules(__name__, __file__, 'model')
