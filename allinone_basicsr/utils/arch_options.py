"""The option checking of the archs' constructors: ``@check_arch_options`` makes an arch check its keyword options
against its defaults before it is built (unknown keys listed, types named), and the option check of a whole file
(:func:`.options.check_options`) runs the same :func:`check_arch_kwargs` on ``network_g``."""
import functools
import inspect
import numbers

from .option_types import OptionNotes, to_bool, to_int, to_list, to_number, to_str

_NOTES = OptionNotes()  # conversions of archs built outside check_options: warned once per key

_PLURALS = {'int': 'ints', 'number': 'numbers', 'bool': 'bools', 'str': 'strings'}


def _kind(default):
    """The option type a default stands for: 'bool', 'int', 'number', 'str', 'list', 'dict', or None (any)."""
    if isinstance(default, bool):
        return 'bool'
    if isinstance(default, numbers.Integral):
        return 'int'
    if isinstance(default, numbers.Real):
        return 'number'
    if isinstance(default, str):
        return 'str'
    if isinstance(default, (list, tuple)):
        return 'list'
    if isinstance(default, dict):
        return 'dict'
    return None


def _item_kind(default):
    """The element type of a non-empty homogeneous list/tuple default (ints and floats mixed: 'number'), or None."""
    kinds = {_kind(item) for item in default}
    if kinds == {'int', 'number'}:
        return 'number'
    if len(kinds) == 1 and next(iter(kinds)) in ('bool', 'int', 'number', 'str'):
        return next(iter(kinds))
    return None


def _format_default(default):
    return repr(list(default)) if isinstance(default, tuple) else repr(default)


def _check_value(value, kind, key, note, suffix):
    if kind == 'int':
        return to_int(value, key, note=note, expected='an int', suffix=suffix)
    if kind == 'number':
        return to_number(value, key, note=note, expected='a number', suffix=suffix)
    if kind == 'bool':
        return to_bool(value, key, expected='a bool', suffix=suffix)
    if kind == 'str':
        return to_str(value, key, suffix=suffix)
    return value


def check_arch_kwargs(cls, kwargs, prefix='network_g', note=None):
    """Check the keyword options of an arch decorated with :func:`check_arch_options` against its defaults.

    An unknown option is a TypeError listing the valid ones. A given option whose default is an int / float / bool
    / str / list / tuple / dict must have a compatible type: an int for int defaults (integral floats and numeric
    strings are converted), a number for float defaults (ints and numeric strings accepted), a bool for bool
    defaults, a string for str defaults, a list or tuple for sequence defaults (with its elements checked against
    the default's element type when the default is non-empty and homogeneous), a mapping for dict defaults. None is
    accepted where the default is None, and where the arch documents the option as ``(... | None)``; a None
    default accepts anything. An option whose default is None in a subclass is checked against the base class's
    default (e.g. PromptDSANet's ``prompt_dims``), None accepted.

    Args:
        cls (type): The arch class.
        kwargs (dict): Its options (``network_g`` without ``type``); not modified.
        prefix (str): Key path of the options in messages. Default: ``network_g``.
        note (callable | None): Called as ``note(key, raw, value)`` for numeric strings converted. Default: a
            warning, once per key.

    Returns:
        dict: The options with converted values (a new dict).

    Raises:
        TypeError: Unknown option or wrong type, e.g. ``network_g.width: 'sixteen' (str) is not an int
            (SymUNet's default: 48)``. ValueError: NaN or infinite numbers (also as list items).
    """
    spec = cls.__dict__.get('arch_option_spec')
    if spec is None:
        raise TypeError(f'{cls.__name__} is not decorated with check_arch_options')
    valid = list(cls.__dict__['arch_options'])
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f'{cls.__name__} got unknown option(s) {unknown}; valid options: {valid}')
    note = _NOTES if note is None else note
    checked = dict(kwargs)
    for name, value in kwargs.items():
        default, nullable, shown = spec.get(name, (None, True, 'None'))
        kind = _kind(default)
        if kind is None or (value is None and nullable):
            continue
        key = f'{prefix}.{name}' if prefix else name
        suffix = f" ({cls.__name__}'s default: {shown})"
        if kind == 'list':
            item_kind = _item_kind(default) if default else None
            expected = 'a list' + (f' of {_PLURALS[item_kind]}' if item_kind else '')
            items = to_list(value, key, lambda v, k: _check_value(v, item_kind, k, note, suffix),
                            expected=expected, suffix=suffix)
            if any(a is not b for a, b in zip(items, value)):
                checked[name] = type(value)(items)
        elif kind == 'dict':
            if not isinstance(value, dict):
                raise TypeError(f'{key}: {value!r} ({type(value).__name__}) is not a mapping{suffix}')
        else:
            checked[name] = _check_value(value, kind, key, note, suffix)
    return checked


def check_arch_options(cls):
    """Class decorator: constructor options are checked before the arch is built.

    BasicSR builds archs as ``cls(**network_g)``; Python's own errors name neither the keys the arch accepts (for a
    typo) nor the option (for a wrong type, which fails deep inside torch). With this decorator an unknown keyword
    raises a TypeError that lists the valid ones, and a value of the wrong type one that names the option, the
    value, its type, the expected type and the default (see :func:`check_arch_kwargs`). An ``__init__`` with
    ``**kwargs`` passes them to its base class: its valid options are its own plus the base class's.

    Options a class lists in its own ``ignored_options`` (a tuple of names) are valid, accept any value and are
    dropped before its ``__init__`` runs (e.g. SymUNet accepts SE-SymUNet's keys, as the official code does).
    Options it lists in ``nullable_options`` accept null (``~``) besides values of their default's type (e.g.
    PromptDSANet's ``prompt_net: ~``, no prompt net).

    Sets ``cls.arch_options`` (the valid option names) and ``cls.arch_option_spec`` ({name: (default checked
    against, accepts None, the default as messages show it)}).
    """
    init = cls.__init__
    params = inspect.signature(init).parameters
    own = {name: p for name, p in params.items()  # keyword-only parameters are for subclasses, not options
           if name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY)}
    valid = list(own)
    base_spec = {}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        base = cls.__mro__[1]
        valid += [name for name in getattr(base, 'arch_options', ()) if name not in valid]
        base_spec = getattr(base, 'arch_option_spec', None) or {}
    nullable = set(cls.__dict__.get('nullable_options', ()))
    parent, parents = None, {}  # the nearest decorated base class, for defaults a subclass replaces by None
    for base in cls.__mro__[1:]:
        if 'arch_option_spec' in base.__dict__:
            parent, parents = base, base.__dict__['arch_option_spec']
            break
    spec = {}
    for name, p in own.items():
        default = None if p.default is p.empty else p.default
        inherited = parents.get(name, (None, True, 'None'))[0]
        if default is None and inherited is not None:
            shown = getattr(parent, 'arch_display_name', parent.__name__)
            spec[name] = (inherited, True, f"None; {shown}'s: {_format_default(inherited)}")
        else:
            spec[name] = (default, default is None or name in nullable, _format_default(default))
    ignored = tuple(cls.__dict__.get('ignored_options', ()))
    valid += [name for name in ignored if name not in valid]
    for name in valid:
        if name not in spec:
            spec[name] = base_spec.get(name, (None, True, 'None'))

    internal = {name for name, p in params.items() if p.kind == p.KEYWORD_ONLY}

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        checked = check_arch_kwargs(cls, {k: v for k, v in kwargs.items() if k not in internal})
        init(self, *args, **{k: v for k, v in checked.items() if k not in ignored},
             **{k: v for k, v in kwargs.items() if k in internal})

    cls.__init__ = __init__
    cls.arch_options = tuple(valid)
    cls.arch_option_spec = spec
    return cls
