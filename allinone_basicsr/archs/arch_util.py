"""Helpers shared by the arch files (not an arch module: the registry scan skips it)."""
import functools
import inspect


def check_arch_options(cls):
    """Class decorator: an unknown constructor keyword raises a TypeError that lists the valid ones.

    BasicSR builds archs as ``cls(**network_g)``; Python's own error names the bad key but not the keys the
    arch accepts, which is what a user editing a YAML file needs.
    """
    init = cls.__init__
    params = inspect.signature(init).parameters
    valid = [name for name in params if name != 'self']

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f'{cls.__name__} got unknown option(s) {unknown}; valid options: {valid}')
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls
