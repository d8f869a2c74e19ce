"""Command-line flags built from a config dataclass's fields (``options.option``).

Every flag's default is SUPPRESSed in argparse, so the parsed namespace holds only what the user
typed; the config is then the dataclass's own defaults (or a ``--config FILE``) with those values
laid over it. Defaults and help therefore live in one place, the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

from confidence_neurons.errors import ConfigError
from confidence_neurons.settings import base_type, construct


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _dest(path: str) -> str:
    return "opt__" + path.replace(".", "__")


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        return ""
    else:
        return " (required)"
    if value is None:
        return ""
    if isinstance(value, tuple):
        value = ",".join(value) if value else "none"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        value = f"{value:_}"
    return f" (default: {value})"


def add_options(
    parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", path: str = "", flags: dict[str, str] | None = None
) -> dict[str, str]:
    """Add one flag per field of ``cls`` (recursing into nested dataclasses); return {field path: flag}."""
    flags = {} if flags is None else flags
    hints = get_type_hints(cls)
    for f in fields(cls):
        tp = base_type(hints[f.name])
        meta = f.metadata
        field_path = f"{path}{f.name}"
        if is_dataclass(tp):
            add_options(parser, tp, prefix=prefix + (meta.get("prefix") or ""), path=field_path + ".", flags=flags)
            continue
        flag = meta.get("flag") or f"--{prefix}{f.name.replace('_', '-')}"
        kwargs: dict[str, Any] = {
            "dest": _dest(field_path),
            "default": argparse.SUPPRESS,
            "help": (meta.get("help") or "") + _default_text(f),
        }
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
        elif get_origin(tp) is tuple:
            kwargs["type"] = _comma_list
            kwargs["metavar"] = "A,B,..."
        elif tp in (int, float, str):
            kwargs["type"] = tp
            kwargs["metavar"] = f.name.upper()
        else:  # pragma: no cover - a field type this helper does not know
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for {tp!r}")
        parser.add_argument(flag, **kwargs)
        flags[field_path] = flag
        flags.setdefault(f.name, flag)
    return flags


def options_from_args(cls: type, args: argparse.Namespace, base: Any = None, *, path: str = "") -> Any:
    """The config ``base`` (default: the dataclass's defaults) with the flags the user gave laid over it."""
    hints = get_type_hints(cls)
    changes: dict[str, Any] = {}
    for f in fields(cls):
        tp = base_type(hints[f.name])
        field_path = f"{path}{f.name}"
        if is_dataclass(tp):
            inner_base = getattr(base, f.name) if base is not None else None
            inner = options_from_args(tp, args, inner_base, path=field_path + ".")
            if inner is not None:
                changes[f.name] = inner
        elif hasattr(args, _dest(field_path)):
            changes[f.name] = getattr(args, _dest(field_path))
    if path and not changes and base is None:
        return None
    if base is not None:
        return construct(lambda **kw: dataclasses.replace(base, **kw), changes, path)
    missing = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in changes
    ]
    if missing:
        raise ConfigError(f"{missing[0]} is required", field=path + missing[0])
    return construct(cls, changes, path)


#: One number as Python's float() reads it, inf and nan included (they are then refused with a reason).
_NUMBER = r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|inf|infinity|nan"
#: A negative number or a comma list of numbers (``-1``, ``-0.5``, ``-1,0,1e-3``, ``-inf``): a flag's value, not a flag.
NEGATIVE_VALUES = re.compile(rf"^-({_NUMBER})(,\s*[-+]?({_NUMBER}))*,?$", re.IGNORECASE)


def allow_negative_values(parser: argparse.ArgumentParser) -> None:
    """Let a flag take a value that starts with a minus (``--alphas -1,0,1``, ``--shift -0.5``):
    argparse reads only plain negative numbers as values, and a comma list as an unknown flag.
    """
    parser._negative_number_matcher = NEGATIVE_VALUES
