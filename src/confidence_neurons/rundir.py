"""Run directories: one folder per run holding config.json, tables, figures and the report.

A run directory is only created once the inputs have been validated, so bad input leaves
nothing behind. Re-running the same command on the same directory resumes it (finished sweep
chunks are kept in ``checkpoints/``); a directory that holds a different run is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class RunDirError(ValueError):
    pass


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_parquet(path: Path, table) -> None:
    """A pandas DataFrame as parquet, written to a temporary file first so a stopped run leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def prepare_run_dir(path: Path, fingerprint: dict[str, Any]) -> bool:
    """Create ``path`` for a run with this fingerprint; return True when resuming an earlier attempt."""
    config = path / "config.json"
    if path.exists() and any(path.iterdir()):
        if not config.exists():
            raise RunDirError(f"output directory {path} is not empty and holds no run; choose another --out")
        earlier = json.loads(config.read_text()).get("fingerprint")
        if earlier != fingerprint:
            raise RunDirError(
                f"output directory {path} already holds a different run; choose another --out or delete that directory"
            )
        return True
    path.mkdir(parents=True, exist_ok=True)
    return False


def write_config(path: Path, config: dict[str, Any]) -> None:
    atomic_write_text(path / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
