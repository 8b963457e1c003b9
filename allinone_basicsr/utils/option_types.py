"""Option values read as the types they mean, with errors that name the key: the converters every option check
uses (:mod:`.options` for option files, :mod:`.arch_options` for ``network_g``).

Rules for numbers (:func:`to_number`, :func:`to_int`):

- a bool is never a number (``lr: true`` is an error);
- a string that reads as a number (``'2e-3'``, ``'1e4'``, ``'20'``) is the number it means: converted in place, and
  the conversion is reported once per key (``logger.warning``, or ``warnings.warn`` without a logger);
- where an int is expected, a float with an integral value (BasicSR's ``!!float 2e4``) is that int;
- NaN (and infinity, unless the key allows it) is an error.
"""
import math
import numbers
import re
import warnings

__all__ = ['OptionConversionWarning', 'OptionNotes', 'conversion_message', 'expectation', 'fail', 'to_bool', 'to_int',
           'to_list', 'to_number', 'to_str']

_EXPONENT_WITHOUT_DOT = re.compile(r'^([+-]?\d+)([eE][+-]?\d+)$')


class OptionConversionWarning(UserWarning):
    """A string option was read as the number it spells (``lr: 2e-3`` without ``!!float``)."""


def conversion_message(key, raw, value):
    """What a string-to-number conversion reports, with the spelling that avoids it."""
    text = raw.strip()
    match = _EXPONENT_WITHOUT_DOT.match(text)
    if match:
        hint = (f'YAML reads {text} (no dot) as a string; write {match[1]}.0{match[2]} or !!float {text}')
    else:
        hint = f'write {value!r} without quotes'
    return f'{key}: the string {raw!r} is read as the number {value!r} ({hint})'


class OptionNotes:
    """Reports conversions, once per key: ``logger.warning`` if a logger is given, else ``warnings.warn``
    (:class:`OptionConversionWarning`). ``messages`` keeps them all, in order."""

    def __init__(self, logger=None):
        self.logger = logger
        self.messages = []
        self._seen = set()

    def __call__(self, key, raw, value):
        if key in self._seen:
            return
        self._seen.add(key)
        message = conversion_message(key, raw, value)
        self.messages.append(message)
        if self.logger is not None:
            self.logger.warning(message)
        else:
            warnings.warn(message, OptionConversionWarning, stacklevel=2)


def fail(key, value, expected, error=TypeError, suffix=''):
    raise error(f'{key}: {value!r} ({type(value).__name__}) is not {expected}{suffix}')


def _fmt(bound):
    return f'{bound:g}' if isinstance(bound, float) else str(bound)


def expectation(kind, minimum=None, maximum=None, above=None, below=None, null=False):
    bounds = []
    if minimum is not None:
        bounds.append(f'>= {_fmt(minimum)}')
    if above is not None:
        bounds.append(f'> {_fmt(above)}')
    if maximum is not None:
        bounds.append(f'<= {_fmt(maximum)}')
    if below is not None:
        bounds.append(f'< {_fmt(below)}')
    text = kind + (' ' + ' and '.join(bounds) if bounds else '')
    return text + ' or null' if null else text


def _parse_number(text):
    """``'20'`` -> 20, ``'2e-3'`` -> 0.002; None if the string is not a number."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def to_number(value, key, *, integer=False, minimum=None, maximum=None, above=None, below=None, null=False,
              allow_inf=False, note=None, expected=None, suffix=''):
    """``value`` as a number (an int if ``integer``), checked against the bounds.

    Args:
        value: The option's value.
        key (str): Its key path for messages, e.g. ``'train.optim_g.lr'``.
        integer (bool): An int is expected: integral floats (``2e4``) become ints, other floats are errors.
        minimum / maximum (number | None): Inclusive bounds. above / below (number | None): Exclusive bounds.
        null (bool): None is accepted (and returned).
        allow_inf (bool): Infinity is accepted (e.g. a gradient norm type). NaN never is.
        note (callable | None): ``note(key, raw, value)`` is called when a string was converted.
        expected (str | None): What the message says was expected. Default: built from the arguments.
        suffix (str): Appended to error messages.

    Returns:
        int | float | None: The number (a string's number; an int for integral floats if ``integer``).

    Raises:
        TypeError: Not a number (bools, non-numeric strings, other types), or not an int where one is expected.
        ValueError: Out of bounds, NaN or infinite.
    """
    if expected is None:
        expected = expectation('an int' if integer else 'a number', minimum, maximum, above, below, null)
    if value is None:
        if null:
            return None
        fail(key, value, expected, suffix=suffix)
    number = value
    if isinstance(value, str):
        number = _parse_number(value)
        if number is None:
            fail(key, value, expected, suffix=suffix)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(key, value, expected, suffix=suffix)
    if not isinstance(number, numbers.Integral):
        number = float(number)
        if math.isnan(number) or (math.isinf(number) and not (allow_inf and not integer)):
            fail(key, value, expected, ValueError, suffix)
        if integer:
            if number != int(number):
                fail(key, value, expected, suffix=suffix)
            number = int(number)
        elif not isinstance(value, str):
            number = value  # a float (or numpy float) stays as it was
    elif integer or isinstance(value, str):
        number = int(number)
    if ((minimum is not None and number < minimum) or (maximum is not None and number > maximum)
            or (above is not None and number <= above) or (below is not None and number >= below)):
        fail(key, value, expected, ValueError, suffix)
    if isinstance(value, str) and note is not None:
        note(key, value, number)
    return number


def to_int(value, key, **kwargs):
    """:func:`to_number` with ``integer=True``."""
    return to_number(value, key, integer=True, **kwargs)


def to_bool(value, key, *, null=False, expected=None, suffix=''):
    """A bool (YAML ``true`` / ``false``); strings and numbers are errors (``'false'`` would be truthy)."""
    if value is None and null:
        return None
    if isinstance(value, bool) or type(value).__name__ == 'bool_':  # numpy.bool_
        return bool(value)
    fail(key, value, expected or ('a bool (true or false)' + (' or null' if null else '')), suffix=suffix)


def to_str(value, key, *, null=False, choices=None, expected=None, suffix=''):
    """A string (one of ``choices`` if given)."""
    if expected is None:
        expected = f'one of {list(choices)}' if choices else 'a string'
        expected += ' or null' if null else ''
    if value is None and null:
        return None
    if not isinstance(value, str):
        fail(key, value, expected, suffix=suffix)
    if choices is not None and value not in choices:
        fail(key, value, expected, ValueError, suffix)
    return value


def to_list(value, key, item=None, *, length=None, null=False, expected=None, suffix=''):
    """A list (or tuple; returned as a list) whose items pass ``item(value, key)`` (key ``<key>[i]``)."""
    if expected is None:
        expected = f'a list of {length}' if length is not None else 'a list'
        expected += ' or null' if null else ''
    if value is None and null:
        return None
    if not isinstance(value, (list, tuple)):
        fail(key, value, expected, suffix=suffix)
    if length is not None and len(value) != length:
        fail(key, value, expected, ValueError, suffix)
    if item is None:
        return list(value)
    return [item(v, f'{key}[{i}]') for i, v in enumerate(value)]
