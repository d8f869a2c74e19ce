"""Run directories: the one place that reads and writes a run's files.

A run directory holds ``config.json`` (kind, settings, fingerprint, status, provenance), the
token ids, tables (parquet, some also as csv), arrays (npy), figures (interactive HTML and PNG),
``report.html``, the sweep's checkpoints and the activation store. Every file is written through
:func:`~confidence_neurons.files.atomic_write` (a uniquely named temporary file in the same folder,
then a rename), so a run stopped at any point leaves whole files or none, and a disk too full for a
file is one sentence (``files.OutOfSpaceError``). Checkpoints and the activation store are recorded
with their sha256 and verified before a rerun reuses them (``stores``).

A directory is only created once the inputs have been validated, so bad input leaves nothing
behind. Opening a directory that holds an earlier attempt of the same run (same kind and
fingerprint) resumes it; one that holds a different run, or files that are not a run, is refused.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from confidence_neurons.errors import ToolkitError
from confidence_neurons.files import OutOfSpaceError, atomic_write, is_disk_full, overwrite_in_place
from confidence_neurons.stores import ActivationStore, CheckpointStore

log = logging.getLogger(__name__)

CONFIG = "config.json"
REPORT = "report.html"
FIGURES = "figures"
CHECKPOINTS = "checkpoints"
ACTIVATIONS = "activations"
LOCK = ".lock"


class RunDirError(ToolkitError, ValueError):
    """The output directory cannot take this run."""


def check_writable(path: Path, what: str = "--out") -> None:
    """Refuse a place where the run directory cannot be created or written, by trying it."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"cannot create {what} {path}: {existing} is a file; choose another {what}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RunDirError(
            f"cannot write {what} {path}: {existing} is not writable ({exc.strerror}); choose another {what}"
        ) from None


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as .npy bytes (no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


class RunDir:
    """One run's folder. ``RunDir.open`` creates or resumes it; ``RunDir(path)`` only reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.resumed = False
        self.earlier_status: str | None = None  # the status an earlier attempt left ("complete", "failed", ...)
        self._record: dict[str, Any] = {}
        self._checkpoints = CheckpointStore(self.path / CHECKPOINTS)
        self._activations = ActivationStore(self.path / ACTIVATIONS)

    @classmethod
    def preflight(cls, path: Path, *, kind: str, fingerprint: dict[str, Any]) -> bool:
        """Check, creating nothing, that ``path`` can take this run: return True when it holds an
        earlier attempt of it to resume. Refuses a file, a folder of other files, a different run,
        a folder in use by another process and a place this user cannot write.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunDirError(f"--out {path} is a file, not a directory; choose another --out")
        resumed = False
        if path.is_dir() and any(p.name != LOCK for p in path.iterdir()):
            if not (path / CONFIG).is_file():
                raise RunDirError(f"output directory {path} is not empty and holds no run; choose another --out")
            earlier = cls(path).read_config()
            if earlier.get("fingerprint") != fingerprint or earlier.get("kind", kind) != kind:
                raise RunDirError(
                    f"output directory {path} already holds a different run; "
                    "choose another --out or delete that directory"
                )
            resumed = True
        check_writable(path)
        if path.is_dir():
            cls(path)._lock().close()  # in use by another process: refused now, before any model loads
        return resumed

    @classmethod
    def open(cls, path: Path, *, kind: str, fingerprint: dict[str, Any]) -> RunDir:
        """Create ``path`` for a ``kind`` run with this fingerprint, or resume an earlier attempt of it,
        and hold its lock until ``close``.
        """
        rd = cls(path)
        rd.resumed = cls.preflight(rd.path, kind=kind, fingerprint=fingerprint)
        try:
            rd.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create --out {rd.path} ({exc.strerror}); choose another --out") from None
        rd._lock_file = rd._lock()
        if rd.resumed:
            rd.earlier_status = rd.read_config().get("status")
        rd._record = {"kind": kind, "fingerprint": fingerprint}
        return rd

    def _lock(self):
        """An exclusive lock on the run directory (``.lock``), or RunDirError if another process holds it."""
        import fcntl

        fh = open(self.path / LOCK, "a+")  # noqa: SIM115 - held for the run's life, closed by close()
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RunDirError(
                f"output directory {self.path} is in use by another confidence-neurons process; "
                "wait for it to finish or choose another --out"
            ) from None
        return fh

    def close(self) -> None:
        """Release the run directory's lock."""
        fh = getattr(self, "_lock_file", None)
        if fh is not None:
            fh.close()
            self._lock_file = None

    # ------------------------------------------------------------------ config.json and status

    def write_config(self, **record: Any) -> None:
        """Merge ``record`` into config.json (kind, fingerprint, config, status, settings, provenance, ...),
        with ``integrity``: what the stores found damaged and recomputed in this attempt, if anything.
        """
        self._record.update(record)
        if self.problems:
            self._record["integrity"] = self.problems
        atomic_write(self.path / CONFIG, _json_bytes(self._record))

    @property
    def problems(self) -> list[str]:
        """What this attempt found damaged in the stored pieces and recomputed, one sentence each."""
        return self._checkpoints.problems + self._activations.problems

    def set_status(self, status: str, **extra: Any) -> None:
        """Record ``status``; on a disk too full for a new copy of config.json, overwrite it in place, so
        that a run stopped by a full disk is recorded as such and not left "running".
        """
        try:
            self.write_config(status=status, **extra)
        except (OutOfSpaceError, OSError) as exc:
            if isinstance(exc, OSError) and not is_disk_full(exc):
                raise
            try:
                overwrite_in_place(self.path / CONFIG, _json_bytes(self._record))
            except OSError:
                log.error("could not record status %r in %s: the disk is full", status, self.path / CONFIG)

    def read_config(self) -> dict[str, Any]:
        path = self.path / CONFIG
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.path} holds no run (no {CONFIG})") from None
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None

    # ------------------------------------------------------------------ data files

    def table(self, name: str, df: pd.DataFrame, *, csv: bool = False) -> None:
        """``name.parquet`` (and ``name.csv`` with ``csv``)."""
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write(self.path / f"{name}.parquet", buf.getvalue())
        if csv:
            atomic_write(self.path / f"{name}.csv", df.to_csv(index=False).encode("utf-8"))

    def csv(self, name: str, df: pd.DataFrame) -> None:
        atomic_write(self.path / f"{name}.csv", df.to_csv(index=False).encode("utf-8"))

    def array(self, name: str, array: np.ndarray) -> None:
        atomic_write(self.path / f"{name}.npy", npy_bytes(array))

    def json(self, name: str, obj: Any) -> None:
        atomic_write(self.path / f"{name}.json", _json_bytes(obj))

    def read_table(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.path / f"{name}.parquet")

    def read_csv(self, name: str, **kwargs: Any) -> pd.DataFrame:
        return pd.read_csv(self.path / f"{name}.csv", **kwargs)

    def read_array(self, name: str) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", allow_pickle=False)

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / f"{name}.json").read_text())

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def tables(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.parquet"))

    # ------------------------------------------------------------------ the report

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoints(self) -> CheckpointStore:
        """The sweep's finished chunks, verified before reuse (one object per run, so its problems are recorded)."""
        return self._checkpoints

    @property
    def activations(self) -> ActivationStore:
        """The forward pass's cache (``analysis.forward.run_forward``), verified before reuse."""
        return self._activations
