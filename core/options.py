"""Component options: attrs classes with a validator and a help text per field.

Every component declares ``Options``, a frozen attrs class built with :func:`option`. The engine
turns the dict stored in a spec into an instance (unknown or invalid options fail at build time
with one line) and back into a JSON-ready dict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from attrs import validators as v

from genvae.core.errors import OptionsError

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


def positive(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def non_negative(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def positive_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive integer, got {value!r}")


def non_negative_int(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def one_of(*choices: str):
    return v.in_(choices)


def float_tuple(value) -> tuple[float, ...]:
    """Accept a number, a list, or a comma string: options given on the command line arrive as text."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [p for p in value.replace("[", "").replace("]", "").split(",") if p.strip()]
    if isinstance(value, int | float):
        value = [value]
    return tuple(float(x) for x in value)


def int_tuple(value) -> tuple[int, ...]:
    if isinstance(value, str):
        value = [p for p in value.replace("[", "").replace("]", "").split(",") if p.strip()]
    if isinstance(value, int):
        value = [value]
    return tuple(int(x) for x in value)


def optional_float(value):
    return None if value is None or value == "none" else float(value)


def to_float(value):
    return float(value)


def to_int(value):
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"expected an integer, got {value}")
    return int(value)


def to_bool(value):
    if isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)


# --- conversion between dicts and options instances -----------------------------------------


def option_names(cls: type) -> list[str]:
    return [a.name for a in attrs.fields(cls)]


def options_from_dict(cls: type, values: Mapping[str, Any] | None, where: str):
    """Instantiate ``cls`` from ``values``; ``where`` names the component in the one-line error."""
    values = dict(values or {})
    known = option_names(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        listing = ", ".join(known) if known else "none"
        raise OptionsError(f"unknown option '{unknown[0]}' for {where}; known options: {listing}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OptionsError(f"invalid options for {where}: {msg}") from exc


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
    except json.JSONDecodeError:
        return text


ConverterT = Callable[[Any], Any]
