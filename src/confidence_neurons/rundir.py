"""Run directories: the one place that reads and writes a run's files.

A run directory holds ``config.json`` (kind, settings, fingerprint, status, provenance), the
token ids, tables (parquet, some also as csv), arrays (npy), figures (interactive HTML and PNG),
``report.html`` and the sweep's checkpoints. Every file is written through :func:`atomic_write`
(a uniquely named temporary file in the same folder, then a rename), so a run stopped at any
point leaves whole files or none.

A directory is only created once the inputs have been validated, so bad input leaves nothing
behind. Opening a directory that holds an earlier attempt of the same run (same kind and
fingerprint) resumes it; one that holds a different run, or files that are not a run, is refused.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from confidence_neurons.errors import ToolkitError

CONFIG = "config.json"
REPORT = "report.html"
FIGURES = "figures"
CHECKPOINTS = "checkpoints"
ACTIVATIONS = "activations"
LOCK = ".lock"


class RunDirError(ToolkitError, ValueError):
    """The output directory cannot take this run."""


def atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a uniquely named temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


@dataclass(frozen=True)
class CheckpointStore:
    """Finished pieces of a long computation, each stamped with the settings and data it was made from.

    ``load`` returns a piece only when its stamp equals the one asked for, so a piece made by other
    settings, data or an older format is recomputed rather than misread.
    """

    folder: Path

    def load(self, name: str, stamp: dict) -> dict[str, np.ndarray] | None:
        path = self.folder / f"{name}.npz"
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as saved:
            if "stamp" not in saved or json.loads(str(saved["stamp"])) != stamp:
                return None
            return {k: saved[k] for k in saved.files if k != "stamp"}

    def save(self, name: str, stamp: dict, arrays: dict[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        np.savez(buf, stamp=np.asarray(json.dumps(stamp, sort_keys=True)), **arrays)
        atomic_write(self.folder / f"{name}.npz", buf.getvalue())


@dataclass(frozen=True)
class ActivationStore:
    """The forward pass's cache as memory-mapped ``.npy`` files in ``folder``, filled batch by batch.

    ``store.json`` records the stamp (tokens, model, dtype: what the activations were made from),
    the shapes and how many batches are written. Array files are written in place through the
    memory map and flushed before ``store.json`` moves on, so a forward pass stopped half-way
    resumes at its first unwritten batch, and a finished store is read back without the model.
    """

    folder: Path

    @property
    def _meta_path(self) -> Path:
        return self.folder / "store.json"

    def _meta(self) -> dict | None:
        try:
            return json.loads(self._meta_path.read_text())
        except (OSError, ValueError):
            return None

    def load(self, stamp: dict) -> tuple[dict[str, np.ndarray], dict] | None:
        """(arrays, extra) of a finished store made from ``stamp``; arrays are copy-on-write maps."""
        meta = self._meta()
        if meta is None or meta.get("stamp") != stamp or not meta.get("complete"):
            return None
        return {name: np.load(self.folder / f"{name}.npy", mmap_mode="c") for name in meta["shapes"]}, meta["extra"]

    def begin(
        self, stamp: dict, shapes: dict[str, tuple[tuple[int, ...], str]], n_batches: int
    ) -> tuple[dict[str, np.ndarray], int, dict]:
        """Writable maps for a store made from ``stamp``: (arrays, batches already written, extra).
        An earlier store of other data is replaced.
        """
        meta = self._meta()
        if meta is not None and meta.get("stamp") == stamp and meta.get("n_batches") == n_batches:
            arrays = {name: np.load(self.folder / f"{name}.npy", mmap_mode="r+") for name in meta["shapes"]}
            return arrays, int(meta["done"]), meta.get("extra", {})
        self.folder.mkdir(parents=True, exist_ok=True)
        self._meta_path.unlink(missing_ok=True)
        arrays = {
            name: np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            for name, (shape, dtype) in shapes.items()
        }
        meta = {
            "stamp": stamp,
            "shapes": {k: [list(v[0]), v[1]] for k, v in shapes.items()},
            "n_batches": n_batches,
            "done": 0,
            "complete": False,
            "extra": {},
        }
        atomic_write(self._meta_path, _json_bytes(meta))
        return arrays, 0, {}

    def mark(self, arrays: dict[str, np.ndarray], done: int, extra: dict, *, complete: bool = False) -> None:
        """Flush the maps, then record that ``done`` batches are written (and, finally, ``complete``)."""
        for a in arrays.values():
            if isinstance(a, np.memmap):
                a.flush()
        meta = self._meta() or {}
        meta.update(done=done, extra=extra, complete=complete)
        atomic_write(self._meta_path, _json_bytes(meta))

    def subset(self, arrays: dict[str, np.ndarray], rows: np.ndarray, *, chunk: int = 4096) -> dict[str, np.ndarray]:
        """The given ``rows`` of ``arrays`` copied, ``chunk`` rows at a time, into ``analysed_*.npy`` maps
        here, so that the selection costs disk, not memory.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, a in arrays.items():
            path = self.folder / f"analysed_{name}.npy"
            m = np.lib.format.open_memmap(path, mode="w+", dtype=a.dtype, shape=(len(rows), *a.shape[1:]))
            for c0 in range(0, len(rows), chunk):
                m[c0 : c0 + chunk] = a[rows[c0 : c0 + chunk]]
            m.flush()
            del m
            out[name] = np.load(path, mmap_mode="c")
        return out

    def size_bytes(self) -> int:
        """Bytes of the stored forward pass (without the analysed-token copy)."""
        if not self.folder.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.folder.glob("*.npy") if not f.name.startswith("analysed_"))


class RunDir:
    """One run's folder. ``RunDir.open`` creates or resumes it; ``RunDir(path)`` only reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.resumed = False
        self._record: dict[str, Any] = {}

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
        """Merge ``record`` into config.json (kind, fingerprint, config, status, settings, provenance, ...)."""
        self._record.update(record)
        atomic_write(self.path / CONFIG, _json_bytes(self._record))

    def set_status(self, status: str, **extra: Any) -> None:
        self.write_config(status=status, **extra)

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
        return CheckpointStore(self.path / CHECKPOINTS)

    @property
    def activations(self) -> ActivationStore:
        """The forward pass's cache, memory-mapped (``analysis.forward.run_forward``)."""
        return ActivationStore(self.path / ACTIVATIONS)
