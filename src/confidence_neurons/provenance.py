"""What a run records about the software and machine that made it (config.json ``provenance``)."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from confidence_neurons._version import __version__

#: Libraries whose version can change the numbers a run produces.
NUMERIC_LIBRARIES = ("torch", "transformer-lens", "transformers", "accelerate", "gguf", "numpy", "pandas", "pyarrow")


def toolkit_version() -> str:
    """The installed distribution's version, or the source tree's when not installed."""
    try:
        return metadata.version("confidence-neurons")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return __version__


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree the package runs from, when it is a git checkout (``+dirty`` if changed)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    """Python and the versions of the libraries that can change the numbers."""
    out = {"python": platform.python_version()}
    for name in NUMERIC_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> dict:
    """The processor, core count, torch threads and GPUs a run used."""
    import torch

    info = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def provenance() -> dict:
    """Toolkit version and commit, library versions and hardware, for config.json."""
    return {
        "toolkit": toolkit_version(),
        "git_commit": git_commit(),
        "versions": library_versions(),
        "hardware": hardware(),
    }
