"""Where the toolkit keeps what it downloads or builds once."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where downloads and builds are kept.

    ``$CONFIDENCE_NEURONS_CACHE``, else ``$XDG_CACHE_HOME/confidence-neurons``, else ``~/.cache/confidence-neurons``.
    """
    if env := os.environ.get("CONFIDENCE_NEURONS_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "confidence-neurons"
