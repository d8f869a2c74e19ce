"""The toolkit's own error types: bad input, said in one sentence.

Every error a user can cause (a path that is not a model, a neuron outside the final layer, a
count file that is not counts) is a :class:`ToolkitError`; the command line prints its message
and exits with code 2. Anything else is a bug and keeps its traceback.

Library errors carry facts (the config field, the path, the count); the command line maps a
:class:`ConfigError`'s ``field`` to the flag the user typed.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Bad input or an unusable environment; the message says what to do."""


class ConfigError(ToolkitError, ValueError):
    """A setting is out of range or malformed; ``field`` names the config field (dotted for nested rules)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
