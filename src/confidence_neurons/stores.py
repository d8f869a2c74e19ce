"""The stored pieces of a long computation, each verified before it is reused.

``CheckpointStore``: finished chunks of the sweep (``checkpoints/sweep_000128.npz``). Every save
appends one line to ``checkpoints/manifest.jsonl``: the file's name, size and sha256, and the stamp
(the settings and the sha256 of the data it was made from). A chunk is reused only when the
manifest records it under the stamp asked for and the file's bytes still hash to the recorded
sha256; anything else (missing, edited, truncated, unrecorded) is named in one sentence and
recomputed.

``ActivationStore``: the forward pass (``activations/*.npy`` and ``store.json``). The arrays are
pre-allocated and written batch by batch with ordinary writes (a full disk is an error, not a
SIGBUS); each batch's rows are hashed from memory as they are written, and ``store.json`` records
the stamp, the row range of every batch and, per array and batch, the sha256 of its rows. A rerun
re-reads and re-hashes the rows before it trusts them: batches that verify are kept, the others are
named and recomputed; a missing or wrongly sized array file rebuilds the store.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from confidence_neurons.files import (
    atomic_write,
    disk_full_error,
    is_disk_full,
    preallocate,
    require_space,
    sha256_of,
    sha256_range,
    write_at,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
STORE_META = "store.json"
#: Bumped when store.json's layout changes; an older store is recomputed, not misread.
STORE_LAYOUT = 2


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


def _rel(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


class CheckpointStore:
    """Finished pieces of a long computation, each recorded with its sha256 and the stamp it was made under.

    ``problems`` collects the one-sentence reports of pieces that were found damaged and recomputed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.problems: list[str] = []
        self._records: dict[str, dict] | None = None
        self._appended = False
        self._unrecorded_said = False  # the missing manifest was reported once for all its files

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.folder)!r})"

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST

    def _problem(self, message: str) -> None:
        log.warning(message)
        self.problems.append(message)

    def _manifest(self) -> dict[str, dict]:
        """Each name's latest record; a line torn by a crash is skipped (its file then goes unrecorded)."""
        if self._records is None:
            self._records = {}
            try:
                lines = self.manifest.read_text().splitlines()
            except FileNotFoundError:
                lines = []
                n = len(list(self.folder.glob("*.npz"))) if self.folder.is_dir() else 0
                if n:
                    self._unrecorded_said = True
                    self._problem(
                        f"{_rel(self.manifest)} is missing, so the {n} checkpoint files beside it cannot be "
                        "verified; recomputing them"
                    )
            for line in lines:
                try:
                    rec = json.loads(line)
                    self._records[rec["name"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue
        return self._records

    def load(self, name: str, stamp: dict) -> dict[str, np.ndarray] | None:
        """The arrays of piece ``name`` when it was saved under ``stamp`` and is intact, else None."""
        path = self.folder / f"{name}.npz"
        records = self._manifest()
        rec = records.get(name)
        if not path.is_file():
            if rec is not None:
                self._problem(f"{_rel(path)} is recorded in {MANIFEST} but missing; recomputing it")
            return None
        if rec is None:
            if not self._unrecorded_said:
                self._problem(
                    f"{_rel(path)} is not recorded in {MANIFEST} (an older version or a crash wrote it), so it "
                    "cannot be verified; recomputing it"
                )
            return None
        if rec.get("stamp") != stamp:
            log.info("%s was made under other settings or data; recomputing it", _rel(path))
            return None
        data = path.read_bytes()
        if len(data) != rec.get("bytes") or sha256_of(data) != rec.get("sha256"):
            self._problem(
                f"{_rel(path)} differs from the sha256 recorded when it was written (edited, truncated or "
                "damaged); recomputing it"
            )
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as saved:
                if "stamp" not in saved or json.loads(str(saved["stamp"])) != stamp:
                    self._problem(f"{_rel(path)} holds another stamp than its record; recomputing it")
                    return None
                return {k: saved[k] for k in saved.files if k != "stamp"}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            self._problem(f"{_rel(path)} cannot be read ({exc}); recomputing it")
            return None

    def save(self, name: str, stamp: dict, arrays: dict[str, np.ndarray]) -> None:
        """Write piece ``name`` (atomically), then record its sha256 and stamp in the manifest."""
        buf = io.BytesIO()
        np.savez(buf, stamp=np.asarray(json.dumps(stamp, sort_keys=True)), **arrays)
        data = buf.getvalue()
        atomic_write(self.folder / f"{name}.npz", data)
        rec = {"name": name, "bytes": len(data), "sha256": sha256_of(data), "stamp": stamp}
        self._append(json.dumps(rec, sort_keys=True) + "\n")
        self._manifest()[name] = rec

    def _append(self, line: str) -> None:
        """One line at the end of the manifest, on disk before this returns."""
        data = line.encode("utf-8")
        require_space(self.folder, len(data) + 1, MANIFEST)
        fd = os.open(self.manifest, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.fchmod(fd, 0o644)
            if not self._appended:  # a line torn by a crash must not swallow this one
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                self._appended = True
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.folder, len(data), MANIFEST) from exc
            raise
        finally:
            os.close(fd)


def _header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy header of a C-order array of ``shape`` and ``dtype`` (what ``np.save`` writes)."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _create_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """A new .npy file of ``shape`` with its space reserved; returns its open descriptor."""
    head = _header(shape, dtype)
    size = len(head) + int(np.prod(shape)) * np.dtype(dtype).itemsize
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        preallocate(fd, size, path, _rel(path))
        write_at(fd, 0, head, path, _rel(path))
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def write_npy(path: Path, rows: int, source, *, chunk: int = 4096) -> None:
    """``source`` (an array, or rows gathered by ``source(r0, r1)``) into a new .npy file at ``path``,
    ``chunk`` rows at a time with ordinary writes after reserving the space.
    """
    first = source(0, min(rows, 1))
    shape, dtype = (rows, *first.shape[1:]), first.dtype
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    fd = _create_npy(path, shape, dtype)
    try:
        head = len(_header(shape, dtype))
        for r0 in range(0, rows, chunk):
            block = np.ascontiguousarray(source(r0, min(rows, r0 + chunk)), dtype=dtype)
            write_at(fd, head + r0 * row_bytes, block, path, _rel(path))
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


class StoreWriter:
    """An activation store open for the batches still to write: ``todo``, ``write(b, arrays)``, ``finish``."""

    def __init__(self, store: ActivationStore, meta: dict, todo: list[int]) -> None:
        self.store, self.meta, self.todo = store, meta, todo
        self._fds: dict[str, int] = {}

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete")) and not self.todo

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            self._fds[name] = os.open(self.store.folder / f"{name}.npy", os.O_RDWR)
        return self._fds[name]

    def write(self, b: int, arrays: dict[str, np.ndarray]) -> None:
        """Batch ``b``'s rows of every array: written, hashed from memory, on disk, then recorded."""
        r0, _ = self.meta["batches"][b]
        for name, rows in arrays.items():
            (shape, dtype) = self.meta["shapes"][name]
            block = np.ascontiguousarray(rows, dtype=dtype)
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
            path = self.store.folder / f"{name}.npy"
            write_at(self._fd(name), self.meta["headers"][name] + r0 * row_bytes, block, path, _rel(path))
            self.meta["digests"][name][b] = sha256_of(block)
        for fd in self._fds.values():
            os.fdatasync(fd)  # the rows are on disk before store.json says so
        written = set(self.meta["written"]) | {b}
        self.meta.update(written=sorted(written), done=len(written))
        self.store._write_meta(self.meta)

    def finish(self, extra: dict) -> None:
        """Record ``extra`` and that every batch is written."""
        self.close()
        self.meta.update(extra=extra, complete=len(self.meta["written"]) == self.meta["n_batches"])
        self.store._write_meta(self.meta)

    def set_extra(self, extra: dict) -> None:
        self.meta["extra"] = extra

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def arrays(self) -> dict[str, np.ndarray]:
        """The stored arrays as copy-on-write maps (reading only: nothing is written through them)."""
        return {name: np.load(self.store.folder / f"{name}.npy", mmap_mode="c") for name in self.meta["shapes"]}

    @property
    def digest(self) -> str:
        """The sha256 of the stored content: every array's per-batch sha256s, with the shapes."""
        return sha256_of(json.dumps([self.meta["shapes"], self.meta["digests"]], sort_keys=True))


class ActivationStore:
    """The forward pass's cache as ``.npy`` files in ``folder``, written batch by batch and verified on reuse.

    ``problems`` collects the one-sentence reports of what was found damaged and recomputed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.problems: list[str] = []

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.folder)!r})"

    @property
    def _meta_path(self) -> Path:
        return self.folder / STORE_META

    def _problem(self, message: str) -> None:
        log.warning(message)
        self.problems.append(message)

    def _meta(self) -> dict | None:
        try:
            meta = json.loads(self._meta_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            self._problem(f"{_rel(self._meta_path)} cannot be read; recomputing the forward pass")
            return None
        return meta if isinstance(meta, dict) else None

    def _write_meta(self, meta: dict) -> None:
        atomic_write(self._meta_path, _json_bytes(meta))

    def open(
        self, stamp: dict, shapes: dict[str, tuple[tuple[int, ...], str]], batches: list[tuple[int, int]]
    ) -> StoreWriter:
        """The store of ``stamp`` with these arrays (name -> (shape, dtype)) and batch row ranges: what an
        earlier attempt left is verified and kept where it verifies; the writer's ``todo`` is the rest.
        """
        want = {k: [list(v[0]), str(v[1])] for k, v in shapes.items()}
        batches = [[int(r0), int(r1)] for r0, r1 in batches]
        meta = self._meta()
        same = (
            meta is not None
            and meta.get("layout") == STORE_LAYOUT
            and meta.get("stamp") == stamp
            and meta.get("shapes") == want
        )
        # a finished store serves any batch size; an unfinished one resumes only in the batches it began with
        if same and (meta.get("batches") == batches or meta.get("complete")):
            good = self._verify(meta)
            todo = None if good is None else [b for b in range(len(meta["batches"])) if b not in good]
            if todo is not None and (not todo or meta["batches"] == batches):
                meta.update(written=sorted(good), done=len(good), complete=meta.get("complete", False) and not todo)
                return StoreWriter(self, meta, todo)
        elif meta is None and self.folder.is_dir() and any(self.folder.glob("*.npy")):
            if not self.problems:
                self._problem(
                    f"{self.folder.name}/ holds arrays but no {STORE_META} to verify them by; recomputing the "
                    "forward pass"
                )
        return self._fresh(stamp, want, batches)

    def _verify(self, meta: dict) -> set[int] | None:
        """The recorded batches whose rows still hash to their sha256 in every array; None when an array
        file is missing or of the wrong size or header (the store is then rebuilt).
        """
        written = [b for b in meta.get("written", []) if isinstance(b, int) and 0 <= b < len(meta["batches"])]
        good = set(written)
        for name, (shape, dtype) in meta["shapes"].items():
            path = self.folder / f"{name}.npy"
            head = _header(tuple(shape), np.dtype(dtype))
            size = len(head) + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            try:
                actual = path.stat().st_size
            except FileNotFoundError:
                self._problem(f"{_rel(path)} is missing; recomputing the forward pass")
                return None
            if actual != size:
                self._problem(
                    f"{_rel(path)} has {actual:,} bytes where {size:,} were written (truncated or replaced); "
                    "recomputing the forward pass"
                )
                return None
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
            bad = []
            with open(path, "rb") as fh:
                if fh.read(len(head)) != head:
                    self._problem(f"{_rel(path)} has another header than was written; recomputing the forward pass")
                    return None
                for b in written:
                    r0, r1 = meta["batches"][b]
                    if sha256_range(fh, len(head) + r0 * row_bytes, (r1 - r0) * row_bytes) != meta["digests"][name][b]:
                        bad.append(b)
            if bad:
                self._problem(
                    f"{_rel(path)} differs in {len(bad)} of {len(meta['batches'])} batches from the sha256 recorded "
                    "when they were written (edited or damaged); recomputing those batches"
                )
                good -= set(bad)
        return good

    def _fresh(self, stamp: dict, want: dict, batches: list[list[int]]) -> StoreWriter:
        """An empty store: the space of every array reserved up front, so a full disk is found now."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._meta_path.unlink(missing_ok=True)
        for name in want:
            (self.folder / f"{name}.npy").unlink(missing_ok=True)
        headers = {name: len(_header(tuple(s), np.dtype(d))) for name, (s, d) in want.items()}
        need = sum(headers[n] + int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize for n, (s, d) in want.items())
        require_space(self.folder, need, "the activation store (the forward pass)")
        created = []
        try:
            for name, (shape, dtype) in want.items():
                os.close(_create_npy(self.folder / f"{name}.npy", tuple(shape), np.dtype(dtype)))
                created.append(name)
        except BaseException:
            for name in created:  # give the space back, so the failure can be recorded
                (self.folder / f"{name}.npy").unlink(missing_ok=True)
            raise
        meta = {
            "layout": STORE_LAYOUT,
            "stamp": stamp,
            "shapes": want,
            "headers": headers,
            "batches": batches,
            "n_batches": len(batches),
            "digests": {name: [None] * len(batches) for name in want},
            "written": [],
            "done": 0,
            "complete": False,
            "extra": {},
        }
        self._write_meta(meta)
        return StoreWriter(self, meta, list(range(len(batches))))

    def subset(self, arrays: dict[str, np.ndarray], rows: np.ndarray, *, chunk: int = 4096) -> dict[str, np.ndarray]:
        """The given ``rows`` of ``arrays`` copied, ``chunk`` rows at a time, into ``analysed_*.npy`` files
        here (so that the selection costs disk, not memory), read back as copy-on-write maps.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in arrays:
            (self.folder / f"analysed_{name}.npy").unlink(missing_ok=True)
        need = sum(len(rows) * a[:1].nbytes + 128 for a in arrays.values())
        require_space(self.folder, need, "the analysed tokens' copy of the forward pass")
        out = {}
        for name, a in arrays.items():
            path = self.folder / f"analysed_{name}.npy"
            write_npy(path, len(rows), lambda r0, r1, a=a: a[rows[r0:r1]], chunk=chunk)
            out[name] = np.load(path, mmap_mode="c")
        return out

    def size_bytes(self) -> int:
        """Bytes of the stored forward pass (without the analysed-token copy)."""
        if not self.folder.is_dir():
            return 0
        return sum(f.stat().st_size for f in self.folder.glob("*.npy") if not f.name.startswith("analysed_"))
