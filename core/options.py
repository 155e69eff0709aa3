"""Component options: attrs classes with a validator and a help text per field.

Every component declares ``Options``, a frozen attrs class built with :func:`option`. The engine
turns the dict stored in a spec into an instance (unknown or invalid options fail at build time
with one line) and back into a JSON-ready dict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from genvae.core.errors import GenvaeError, OptionsError, did_you_mean, error_text, name_list, shorten

_NOTHING = attrs.NOTHING


def option(default: Any = _NOTHING, help: str = "", validator=None, converter=None, factory=None):
    """One documented option field: ``width: int = option(64, "channels of the first layer", positive)``."""
    kwargs: dict[str, Any] = {"metadata": {"help": help}}
    if factory is not None:
        kwargs["factory"] = factory
    elif default is not _NOTHING:
        kwargs["default"] = default
    if validator is not None:
        kwargs["validator"] = validator
    if converter is not None:
        kwargs["converter"] = converter
    return attrs.field(**kwargs)


@attrs.frozen
class NoOptions:
    """A component without options."""


# --- validators and converters shared by components -------------------------------------------
#
# Each carries ``expects``: the short text an error message gives as what the option accepts
# ("train option 'lr': expected a finite number > 0, got nan"). Mark your own with ``@expects(...)``.


def expects(description: str):
    """Decorator: ``description`` (e.g. ``"a positive integer"``) is what the validator or converter accepts."""

    def mark(fn):
        fn.expects = description
        return fn

    return mark


_BUILTIN_EXPECTS: dict[Any, str] = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def describe_expected(check: Any) -> str | None:
    """What a validator or converter accepts, in words, or None when it does not say."""
    if check is None:
        return None
    text = getattr(check, "expects", None)
    if isinstance(text, str) and text:
        return text
    try:
        if check in _BUILTIN_EXPECTS:
            return _BUILTIN_EXPECTS[check]
    except TypeError:  # unhashable
        pass
    choices = getattr(check, "options", None)  # attrs.validators.in_
    if isinstance(choices, tuple | list | set | frozenset | dict):
        return f"one of {name_list(choices, max_chars=120)}"
    parts = getattr(check, "_validators", None)  # attrs.validators.and_ (a list of validators)
    if isinstance(parts, tuple | list):
        words = [w for w in (describe_expected(p) for p in parts) if w]
        return " and ".join(words) if words else None
    inner = getattr(check, "validator", None)  # attrs.validators.optional
    if inner is not None:
        word = describe_expected(inner)
        return f"{word} or none" if word else None
    kind = getattr(check, "type", None)  # attrs.validators.instance_of
    if isinstance(kind, type):
        return _BUILTIN_EXPECTS.get(kind, f"a {kind.__name__}")
    wrapped = getattr(check, "converter", None)  # attrs.Converter
    if wrapped is not None and wrapped is not check:
        return describe_expected(wrapped)
    return None


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value) -> bool:
    return isinstance(value, int) or math.isfinite(value)


@expects("a finite number")
def finite(instance, attribute, value) -> None:
    if not _is_number(value) or not _is_finite(value):
        raise ValueError(f"{attribute.name} must be a finite number, got {shorten(value)}")


@expects("a finite number > 0")
def positive(instance, attribute, value) -> None:
    if not _is_number(value) or not _is_finite(value) or value <= 0:
        raise ValueError(f"{attribute.name} must be a finite number > 0, got {shorten(value)}")


@expects("a finite number >= 0")
def non_negative(instance, attribute, value) -> None:
    if not _is_number(value) or not _is_finite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {shorten(value)}")


@expects("a number in [0, 1]")
def unit_interval(instance, attribute, value) -> None:
    if not (_is_number(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{attribute.name} must lie in [0, 1], got {shorten(value)}")


@expects("a positive integer")
def positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive integer, got {shorten(value)}")


@expects("a non-empty list of positive integers")
def positive_ints(instance, attribute, value) -> None:
    if not value or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
        raise ValueError(f"{attribute.name} must list positive integers, got {shorten(list(value))}")


#: the largest seed: torch's generators take 64 bits, and a larger seed would silently equal a smaller one
MAX_SEED = 2**64 - 1


@expects("an integer in 0..2**64-1")
def seed_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{attribute.name} must be an integer in 0..2**64-1 (a 64-bit seed), got {shorten(value)}")


@expects("an integer >= 0")
def non_negative_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {shorten(value)}")


class _OneOf:
    """Like ``attrs.validators.in_`` (``options`` holds the choices), with a one-line message."""

    def __init__(self, choices: tuple):
        self.options = choices

    @property
    def expects(self) -> str:
        return f"one of {name_list(self.options, max_chars=120)}"

    def __call__(self, instance, attribute, value) -> None:
        if value not in self.options:
            raise ValueError(f"{attribute.name} must be {self.expects}, got {shorten(value)}")

    def __repr__(self) -> str:
        return f"<one_of validator with options {self.options!r}>"


def one_of(*choices: Any):
    return _OneOf(tuple(choices))


def split_list(value) -> list:
    """A list from a comma string (``"1,0.5"`` or ``"[1, 0.5]"``, as ``--set`` gives text), a scalar or a sequence."""
    if isinstance(value, str):
        return [p for p in value.replace("[", "").replace("]", "").split(",") if p.strip()]
    if isinstance(value, int | float):
        return [value]
    return list(value)


@expects("a finite number or a list of them, e.g. 1,0.5")
def float_tuple(value) -> tuple[float, ...]:
    """Accept a number, a list, or a comma string: options given on the command line arrive as text."""
    if value is None:
        return ()
    numbers = tuple(float(x) for x in split_list(value))
    if not all(math.isfinite(x) for x in numbers):
        raise ValueError(f"expected finite numbers, got {shorten(value)}")
    return numbers


@expects("an integer or a list of them, e.g. 64,32")
def int_tuple(value) -> tuple[int, ...]:
    return tuple(to_int(x) for x in split_list(value))


@expects("a number or none")
def optional_float(value):
    return None if value is None or value == "none" else float(value)


@expects("an integer or none")
def optional_int(value):
    return None if value is None or value == "none" else to_int(value)


@expects("a path or none")
def optional_str(value):
    return None if value is None or value in ("", "none") else str(value)


@expects("a number")
def to_float(value):
    return float(value)


@expects("an integer")
def to_int(value):
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {shorten(value)}")
    return int(value)


@expects("true or false")
def to_bool(value):
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {shorten(value)}")
    return bool(value)


# --- conversion between dicts and options instances -----------------------------------------

# what a converter, validator or __attrs_post_init__ may raise for a bad value
_VALUE_ERRORS = (TypeError, ValueError, KeyError, IndexError, ArithmeticError)


def option_names(cls: type) -> list[str]:
    return [a.name for a in attrs.fields(cls)]


def _convert(converter, value, field):
    if isinstance(converter, attrs.Converter):
        wrapped: Any = converter  # attrs' stub does not declare the converter, takes_self, takes_field attributes
        args = [value]
        if wrapped.takes_self:
            args.append(None)
        if wrapped.takes_field:
            args.append(field)
        return wrapped.converter(*args)
    return converter(value)


def value_problem(field: attrs.Attribute, value: Any) -> str | None:
    """Why ``field``'s converter or validator refuses ``value`` ("expected ..., got ..."), or None.

    Validators run without an instance; one that needs it (a cross-field check) is skipped.
    """
    expected = describe_expected(field.validator) or describe_expected(field.converter)
    converted = value
    try:
        if field.converter is not None:
            converted = _convert(field.converter, value, field)
        if field.validator is not None:
            field.validator(None, field, converted)
    except GenvaeError:
        raise
    except _VALUE_ERRORS as exc:
        if expected:
            return f"expected {expected}, got {shorten(value)}"
        return error_text(exc)
    except Exception:  # not a verdict on the value
        return None
    return None


def find_invalid(cls: type, values: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(name, problem)`` for the first field of attrs class ``cls`` that refuses its value in ``values``,
    or for a required field that ``values`` lacks; None when each value passes on its own."""
    for field in attrs.fields(cls):
        if field.name in values:
            problem = value_problem(field, values[field.name])
            if problem:
                return field.name, problem
        elif field.init and field.default is _NOTHING:
            return field.name, "required, but not given"
    return None


def options_from_dict(cls: type, values: Mapping[str, Any] | None, where: str):
    """Instantiate ``cls`` from ``values``; ``where`` names the component in the one-line error."""
    values = dict(values or {})
    known = [a.name for a in attrs.fields(cls) if a.init]
    unknown = sorted((k for k in values if k not in known), key=str)
    if unknown:
        name = str(unknown[0])
        raise OptionsError(
            f"unknown option {shorten(name)} for {where}; {did_you_mean(name, known)}"
            f"known options: {name_list(known, max_chars=160)}"
        )
    try:
        return cls(**values)
    except _VALUE_ERRORS as exc:
        found = find_invalid(cls, values)
        if found:
            message = f"{where} option '{found[0]}': {found[1]}"
        else:  # e.g. a cross-field check in __attrs_post_init__
            message = f"invalid options for {where}: {error_text(exc)}"
        raise OptionsError(message) from exc


def options_to_dict(instance) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists) that ``options_from_dict`` turns back into ``instance``."""

    def plain(value):
        if isinstance(value, tuple | list):
            return [plain(x) for x in value]
        if isinstance(value, dict):
            return {k: plain(x) for k, x in value.items()}
        return value

    return {k: plain(x) for k, x in attrs.asdict(instance, recurse=False).items()}


def describe_options(cls: type) -> list[tuple[str, str, str]]:
    """(name, default, help) per option, for ``genvae list-plugins`` and the docs."""
    rows = []
    for a in attrs.fields(cls):
        if a.default is _NOTHING:
            default = "required"
        elif isinstance(a.default, attrs.Factory):  # type: ignore[arg-type]
            default = repr(a.default.factory())
        else:
            default = json.dumps(a.default) if not isinstance(a.default, tuple) else json.dumps(list(a.default))
        rows.append((a.name, default, a.metadata.get("help", "")))
    return rows


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON when it parses (numbers, lists, true/false/null), else the string."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or too many digits / too deeply nested to read
        return text


ConverterT = Callable[[Any], Any]
