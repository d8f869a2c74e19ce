"""Typed, bounded settings: the one place a settings dataclass's values are checked.

A settings dataclass (a command's config in ``commands/options.py``, a selection rule in
``analysis/selection.py``) declares on each field its type and, in the field's metadata, its
bounds (``minimum``, ``maximum``). :func:`check_data` checks a JSON object (a ``--config`` file, a
run's config.json) against the types before anything is built; :func:`check_fields` checks a built
object: every value of its declared type, every float finite (NaN and inf are never settings), and
every number (and every number of a comma list) within its bounds. Both raise :class:`ConfigError`
with the field's dotted path, which the command line turns into the flag the user typed.

This module imports nothing of the toolkit but its errors, so the rules below ``commands/`` can use
it too.
"""

from __future__ import annotations

import json
import math
import numbers
import types
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from confidence_neurons.errors import ConfigError


def is_optional(tp: Any) -> bool:
    """``X | None``."""
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def base_type(tp: Any) -> Any:
    """``int | None`` -> int; other types unchanged."""
    if is_optional(tp):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return inner
    return tp


def _kind(tp: Any) -> str:
    """The expected type in words, for error messages."""
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(tp))
    if get_origin(tp) is tuple:
        return "a list of values (a comma list on the command line)"
    if is_dataclass(tp):
        return f"an object of {tp.__name__} settings"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(tp, repr(tp))


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _type_error(name: str, value: Any, tp: Any) -> ConfigError:
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return ConfigError(f"{name} = {shown} must be {_kind(tp)}", field=name)


def _check_type(name: str, value: Any, tp: Any) -> None:
    """``value`` is of the declared type ``tp`` (``None`` allowed for optional fields)."""
    if value is None and is_optional(tp):
        return
    tp = base_type(tp)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:  # numpy integers too, not bools
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif tp is float:
        ok = _number(value)
    elif tp is str:
        ok = isinstance(value, str)
    elif get_origin(tp) is Literal:
        ok = isinstance(value, (str, int, float, bool)) and value in get_args(tp)
    elif get_origin(tp) is tuple:
        # the elements of our lists are strings or numbers (a grid of floats is read from strings)
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, str) or _number(v) for v in value)
    elif is_dataclass(tp):
        ok = is_dataclass(value) and isinstance(value, tp)
    else:  # pragma: no cover - a field type this module does not know
        raise TypeError(f"{name}: no check for the type {tp!r}")
    if not ok:
        raise _type_error(name, value, tp)


def check_value(name: str, value: Any, tp: Any, meta: Any, *, bounds: bool = True) -> None:
    """One field's value: its type, finiteness (floats), and its declared bounds (numbers and numeric lists)."""
    _check_type(name, value, tp)
    if value is None:
        return
    tp = base_type(tp)
    field, name = name, name.rsplit(".", 1)[-1]  # errors say the setting's own name and carry its dotted path
    low, high = meta.get("minimum"), meta.get("maximum")
    if get_origin(tp) is tuple:
        if low is None and high is None:
            return
        for v in value:  # a numeric grid: every entry finite and within the bounds
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{v!r} in {name} is not a number", field=field) from None
            if not math.isfinite(x) or (bounds and ((low is not None and x < low) or (high is not None and x > high))):
                lo = "-inf" if low is None else f"{low:g}"
                hi = "inf" if high is None else f"{high:g}"
                raise ConfigError(f"{v!r} in {name} must be a finite number in [{lo}, {hi}]", field=field)
        return
    if not _number(value):
        return
    if not math.isfinite(value):
        raise ConfigError(f"{name} = {value} must be a finite number", field=field)
    if not bounds:
        return
    if low is not None and high is not None and not low <= value <= high:
        raise ConfigError(f"{name} = {value} must lie in [{low:g}, {high:g}]", field=field)
    if low is not None and value < low:
        raise ConfigError(f"{name} = {value} must be at least {low:g}", field=field)
    if high is not None and value > high:
        raise ConfigError(f"{name} = {value} must be at most {high:g}", field=field)


def check_fields(obj: Any, *, bounds: bool = True, path: str = "") -> None:
    """Every field of the dataclass ``obj`` (nested ones with a dotted ``path``): type, finiteness, bounds."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        tp = base_type(hints[f.name])
        if is_dataclass(tp) and value is not None:
            _check_type(path + f.name, value, hints[f.name])
            check_fields(value, bounds=bounds, path=f"{path}{f.name}.")
        else:
            check_value(path + f.name, value, hints[f.name], f.metadata, bounds=bounds)


def check_data(cls: type, data: Any, where: str, path: str = "") -> dict[str, Any]:
    """A JSON object of settings for ``cls``, checked by key and type, with lists made tuples and
    nested objects built; raises one sentence naming ``where`` and the key.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}{' key ' + path.rstrip('.') if path else ''} must be a JSON object of settings, "
            f"not {type(data).__name__}",
            field="config",
        )
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{where} has settings that {cls.__name__} does not know: {', '.join(unknown)}", field="config"
        )
    values = {}
    for name, value in data.items():
        tp = base_type(hints[name])
        key = path + name
        if is_dataclass(tp) and not (value is None and is_optional(hints[name])):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{where}: key {key!r} is {type(value).__name__} {value!r}, but it must be {_kind(tp)}",
                    field="config",
                )
            value = build(tp, value, where, f"{key}.")
        else:
            try:
                _check_type(key, value, hints[name])
            except ConfigError:
                shown = repr(value) if not isinstance(value, (dict, list)) else json.dumps(value)[:60]
                raise ConfigError(
                    f"{where}: key {key!r} is {shown}, but it must be {_kind(tp)}", field="config"
                ) from None
            if get_origin(tp) is tuple:
                value = tuple(value)
        values[name] = value
    return values


def build(cls: type, data: Any, where: str, path: str = "") -> Any:
    """``cls`` built from a checked JSON object (see :func:`check_data`); its own checks name ``path``."""
    values = check_data(cls, data, where, path)
    missing = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if missing:
        raise ConfigError(f"{where} lacks the required setting {missing[0]}", field="config")
    return construct(cls, values, path, where)


def construct(cls: type, values: dict[str, Any], path: str = "", where: str | None = None) -> Any:
    """``cls(**values)``; its errors are re-addressed to the dotted field ``path`` when it is nested,
    or, when the values came from a file ``where``, name that file instead of a flag.
    """
    try:
        return cls(**values)
    except ConfigError as exc:
        if where is not None:
            raise ConfigError(f"{where}: {exc}", field="config") from None
        if path and exc.field and not exc.field.startswith(path):
            raise ConfigError(str(exc), field=path + exc.field) from None
        raise
