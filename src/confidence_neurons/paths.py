"""Where the toolkit keeps what it downloads or builds once, and how it checks files."""

from __future__ import annotations

import hashlib
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


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
