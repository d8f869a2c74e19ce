"""Where the toolkit keeps what it downloads or builds once, and how it checks files."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from confidence_neurons.errors import ToolkitError

CACHE_VARIABLE = "CONFIDENCE_NEURONS_CACHE"


def cache_dir() -> Path:
    """Where downloads and builds are kept.

    ``$CONFIDENCE_NEURONS_CACHE``, else ``$XDG_CACHE_HOME/confidence-neurons``, else ``~/.cache/confidence-neurons``.
    """
    if env := os.environ.get(CACHE_VARIABLE):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "confidence-neurons"


def check_cache_dir() -> Path:
    """The cache directory, made if missing and proven writable, before any work needs it (the
    embedded model's float copy, the C kernel): else one sentence naming the variable that set it.
    """
    path = cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        where = (
            f"{CACHE_VARIABLE}={os.environ[CACHE_VARIABLE]}"
            if os.environ.get(CACHE_VARIABLE)
            else f"the cache directory {path}"
        )
        raise ToolkitError(
            f"{where} is not a writable directory ({exc.strerror or type(exc).__name__}); "
            f"set {CACHE_VARIABLE} to a writable folder"
        ) from None
    return path


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
