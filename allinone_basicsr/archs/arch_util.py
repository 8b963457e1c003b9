"""Helpers shared by the arch files (not an arch module: the registry scan skips it)."""
import functools
import inspect


def check_arch_options(cls):
    """Class decorator: an unknown constructor keyword raises a TypeError that lists the valid ones.

    BasicSR builds archs as ``cls(**network_g)``; Python's own error names the bad key but not the keys the
    arch accepts, which is what a user editing a YAML file needs. An ``__init__`` with ``**kwargs`` passes them
    to its base class: its valid options are its own plus the base class's.
    """
    init = cls.__init__
    params = inspect.signature(init).parameters
    valid = [name for name, p in params.items()
             if name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        valid += [name for name in getattr(cls.__mro__[1], 'arch_options', ()) if name not in valid]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f'{cls.__name__} got unknown option(s) {unknown}; valid options: {valid}')
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    cls.arch_options = tuple(valid)
    return cls
