"""Text corpora and reproducible sampling of token sequences from them.

A dataset is ``None`` (the built-in offline corpus: the English prose of Python's own
documentation, ``pydoc_data.topics``), a local ``.txt``/``.jsonl`` file or folder of them,
or a Hugging Face hub dataset id loaded in streaming mode.

Sampling (``Sampling``): ``whole`` (the default) draws from the whole corpus, as the paper draws
from all of C4: the documents of every file are read in an order shuffled by the seed (local corpora
are indexed first, one byte offset per .jsonl line, so nothing but the chosen documents is
tokenized; a hub dataset streams through the ``datasets`` shuffle buffer of ``HUB_SHUFFLE_BUFFER``
documents, after its shards are shuffled, so it is never read whole), and each sequence is one
window of a different document. ``first`` is the earlier procedure: documents in sorted order,
windows of the first ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from confidence_neurons.errors import ToolkitError
from confidence_neurons.paths import file_sha256

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_NETWORK_ERRORS = {
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "OfflineModeIsEnabled",
    "LocalEntryNotFoundError",
    "HfHubHTTPError",
    "NetworkError",
    "ProxyError",
}


Sampling = Literal["whole", "first"]
#: Documents held by the streaming shuffle buffer of a hub dataset (``sampling="whole"``).
HUB_SHUFFLE_BUFFER = 10_000


class CorpusError(ToolkitError, ValueError):
    """A dataset cannot be read or holds too little text; the message says what to do."""


@dataclass(frozen=True)
class TokenSample:
    """Token sequences (int64, ``(n_seqs, seq_len)``) and a JSON-serialisable record of their origin."""

    tokens: torch.Tensor
    source: dict


def _topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:
        raise CorpusError(
            "this Python has no pydoc_data.topics (the built-in corpus was stripped by "
            "the distribution); pass --dataset with a local .txt/.jsonl file or folder"
        ) from exc
    return topics


def describe_default_corpus() -> str:
    """One line describing the built-in corpus used when no dataset is given."""
    try:
        topics = _topics()
    except CorpusError:
        return (
            f"built-in corpus unavailable: Python {platform.python_version()} lacks pydoc_data.topics; pass --dataset"
        )
    n_chars = sum(len(t) for t in topics.values())
    return (
        f"built-in: Python {platform.python_version()} documentation topics (pydoc_data.topics), "
        f"{len(topics)} documents, {n_chars:,} characters of English prose"
    )


#: Largest share of undecodable bytes a text file may have; more, and it is not text.
MAX_UNDECODABLE = 0.2


def _decode(raw: bytes, where: str, record: dict) -> str:
    """UTF-8 text; binary data (NUL bytes, many undecodable bytes) is refused, a few bad bytes are
    replaced by U+FFFD with a warning that says so.
    """
    if b"\x00" in raw:
        raise CorpusError(f"{where} holds NUL bytes: it is binary data, not text; pass .txt/.jsonl text files")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        if bad > MAX_UNDECODABLE * max(len(text), 1):
            raise CorpusError(
                f"{where} is not text: {bad} of its {len(text)} characters are not valid UTF-8; "
                "convert it to UTF-8 text or pass another --dataset"
            ) from None
        log.warning(
            "%s is not valid UTF-8: read as UTF-8 with %d undecodable bytes replaced by U+FFFD "
            "(convert it to UTF-8 to keep them)",
            where,
            bad,
        )
        record["invalid_utf8_replaced"] = True
        return text


def _unreadable(path: Path, exc: OSError) -> CorpusError:
    return CorpusError(
        f"corpus file {path} cannot be read ({exc.strerror or type(exc).__name__}); "
        f"check its permissions or pass another --dataset"
    )


def _sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as fh:
            yield from fh
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _file_docs(path: Path, text_field: str, record: dict) -> Iterator[str]:
    """Documents of one .txt (the whole file) or .jsonl (one per non-blank line) file."""
    if path.suffix == ".txt":
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise _unreadable(path, exc) from None
        yield _decode(data, str(path), record)
        return
    for n, raw in enumerate(_lines(path), 1):
        line = _decode(raw, f"{path}:{n}", record)
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{n} is not valid JSON ({exc.msg}); fix the line or remove it") from exc
        yield _row_text(row, text_field, f"{path}:{n}")


def _jsonl_offsets(path: Path) -> list[tuple[int, int]]:
    """(line number, byte offset) of every non-blank line of a .jsonl file, read once without parsing."""
    out, pos = [], 0
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if raw.strip():
                out.append((n, pos))
            pos += len(raw)
    return out


def _jsonl_line(path: Path, n: int, offset: int, text_field: str, record: dict) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        line = _decode(fh.readline(), f"{path}:{n}", record)
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{n} is not valid JSON ({exc.msg}); fix the line or remove it") from exc
    return _row_text(row, text_field, f"{path}:{n}")


def _shuffled_local_docs(files: list[Path], root: Path | None, text_field: str, info: dict, seed: int) -> Iterator[str]:
    """Every document of ``files`` (a .txt file is one, a .jsonl line one), in an order shuffled by ``seed``."""
    index: list[tuple[int, int, int]] = []  # (file, line, byte offset); line 0: a whole .txt file
    for k, f in enumerate(files):
        if f.suffix == ".txt":
            index.append((k, 0, 0))
        else:
            index.extend((k, n, off) for n, off in _jsonl_offsets(f))
    order = np.random.default_rng(seed).permutation(len(index))
    info["n_documents_in_corpus"] = len(index)
    records: dict[int, dict] = {}
    for i in order:
        k, n, off = index[i]
        f = files[k]
        if k not in records:
            if root is None:
                records[k] = info
            else:
                records[k] = {"path": f.relative_to(root).as_posix(), "sha256": file_sha256(f)}
                info["files"].append(records[k])
        if n == 0:
            yield _decode(f.read_bytes(), str(f), records[k])
        else:
            yield _jsonl_line(f, n, off, text_field, records[k])


def _row_text(row: Any, text_field: str, where: str) -> str:
    if not isinstance(row, dict) or text_field not in row:
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise CorpusError(
            f"{where} has no text field {text_field!r} (found keys: {keys}); "
            f"pass --text-field with the name of the field that holds the text"
        )
    text = row[text_field]
    if not isinstance(text, str):
        raise CorpusError(
            f"{where} field {text_field!r} holds {type(text).__name__}, not a string; "
            f"pass --text-field naming a text field"
        )
    return text


def _hub_error(dataset: str, exc: Exception) -> CorpusError:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, (ConnectionError, TimeoutError)) or names & _NETWORK_ERRORS or "reach" in str(exc):
        return CorpusError(
            f"could not reach the Hugging Face hub for dataset {dataset}; pass a local "
            f".txt/.jsonl file or folder, or omit --dataset for the built-in corpus"
        )
    return CorpusError(
        f"could not load Hugging Face hub dataset {dataset} ({type(exc).__name__}: {exc}); "
        f"check the id and --split, or pass a local .txt/.jsonl file or folder"
    )


def _hub_docs(dataset: str, text_field: str, split: str, seed: int | None = None) -> Iterator[str]:
    import datasets  # heavy; only needed for hub ids

    try:
        stream = datasets.load_dataset(dataset, split=split, streaming=True)
        if seed is not None:
            stream = stream.shuffle(seed=seed, buffer_size=HUB_SHUFFLE_BUFFER)
        rows = iter(stream)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear CorpusError
        raise _hub_error(dataset, exc) from exc

    def gen() -> Iterator[str]:
        n = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001
                raise _hub_error(dataset, exc) from exc
            yield _row_text(row, text_field, f"row {n} of {dataset}")
            n += 1

    return gen()


def _open(
    dataset: str | None, text_field: str, split: str, order_seed: int | None = None
) -> tuple[dict, Iterator[str]]:
    """Validate ``dataset`` eagerly; return its source record (filled in as files are read) and documents:
    in a fixed order, or with ``order_seed`` in an order shuffled by it over the whole corpus (module docstring).
    """
    if dataset is None:
        topics = _topics()
        info = {"kind": "builtin", "id": "pydoc_data.topics", "python_version": platform.python_version()}
        keys = sorted(topics)
        if order_seed is not None:
            keys = [keys[i] for i in np.random.default_rng(order_seed).permutation(len(keys))]
            info["n_documents_in_corpus"] = len(keys)
        return info, (topics[k] for k in keys)
    path = Path(dataset).expanduser()
    if path.is_file():
        if path.suffix not in (".txt", ".jsonl"):
            raise CorpusError(
                f"{dataset} is neither a .txt nor a .jsonl file; convert it or pass a folder of such files"
            )
        info = {"kind": path.suffix[1:], "path": str(path), "sha256": _sha256(path)}
        if path.suffix == ".jsonl":
            info["text_field"] = text_field
        if order_seed is not None:
            return info, _shuffled_local_docs([path], None, text_field, info, order_seed)
        return info, _file_docs(path, text_field, info)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file())
        if not files:
            raise CorpusError(f"folder {dataset} holds no .txt or .jsonl files; add some or pass another --dataset")
        info: dict = {"kind": "folder", "path": str(path), "text_field": text_field, "n_files": len(files), "files": []}
        if order_seed is not None:
            return info, _shuffled_local_docs(files, path, text_field, info, order_seed)

        def gen() -> Iterator[str]:
            for f in files:
                info["files"].append(record := {"path": f.relative_to(path).as_posix(), "sha256": _sha256(f)})
                yield from _file_docs(f, text_field, record)

        return info, gen()
    if _HUB_ID.match(dataset) and not dataset.endswith((".txt", ".jsonl", ".json")):
        from confidence_neurons.models.hub import hub_reachable

        if not hub_reachable():
            raise CorpusError(
                f"dataset {dataset} is not an existing file or folder, and the Hugging Face hub is unreachable; "
                "check the path, or omit --dataset for the built-in corpus"
            )
        info = {"kind": "hub", "id": dataset, "split": split, "text_field": text_field}
        if order_seed is not None:
            info["shuffle_buffer"] = HUB_SHUFFLE_BUFFER
        return info, _hub_docs(dataset, text_field, split, order_seed)
    raise CorpusError(
        f"dataset {dataset} is not an existing file or folder nor a Hugging Face hub id; "
        f"check the path, or omit --dataset for the built-in corpus"
    )


def iter_documents(
    dataset: str | None, *, text_field: str = "text", split: str = "train", order_seed: int | None = None
) -> Iterator[str]:
    """Yield the documents of ``dataset`` in a fixed order, or shuffled by ``order_seed`` as
    ``sampling="whole"`` reads them (a sample's ``starts`` index this order; see the module docstring).
    """
    return _open(dataset, text_field, split, order_seed)[1]


def _resolve_bos(tokenizer: Any, prepend_bos: bool | None, bos_id: int | None) -> int | None:
    bos = bos_id if bos_id is not None else getattr(tokenizer, "bos_token_id", None)
    if prepend_bos is False:
        return None
    if prepend_bos and bos is None:
        raise CorpusError("prepend_bos=True but neither bos_id nor tokenizer.bos_token_id is set; pass bos_id")
    return None if bos is None else int(bos)


def sample_token_sequences(
    tokenizer: Any,
    dataset: str | None,
    *,
    n_seqs: int,
    seq_len: int,
    seed: int = 0,
    prepend_bos: bool | None = None,
    bos_id: int | None = None,
    text_field: str = "text",
    split: str = "train",
    max_documents: int | None = None,
    sampling: Sampling = "whole",
) -> TokenSample:
    """Draw ``n_seqs`` non-overlapping windows of contiguous text, reproducibly, as a ``TokenSample``.

    ``whole``: documents in an order shuffled by ``seed`` over the whole corpus, one window (at a
    multiple of the window length, chosen by ``seed``) from each of the first ``n_seqs`` documents
    long enough for one; with too few such documents, more windows of those read. ``first``: the
    windows of the first documents in sorted order, ``n_seqs`` of the first 4 x ``n_seqs`` drawn.
    Either way a window comes from a single document when enough documents are long enough;
    otherwise documents are concatenated with the tokenizer's eos token between them.
    """
    if sampling not in ("whole", "first"):
        raise CorpusError(f"unknown sampling {sampling!r}; pass --sampling whole or first")
    if n_seqs < 1 or seq_len < 2:
        raise CorpusError(f"need n_seqs >= 1 and seq_len >= 2 (got {n_seqs} and {seq_len}); raise --n-seqs/--seq-len")
    if max_documents is not None and max_documents < 1:
        raise CorpusError(f"max_documents must be at least 1 (got {max_documents}); raise it or leave it unset")
    bos = _resolve_bos(tokenizer, prepend_bos, bos_id)
    body_len = seq_len - (1 if bos is not None else 0)
    info, docs = _open(dataset, text_field, split, order_seed=seed if sampling == "whole" else None)
    pick_rng = np.random.default_rng([seed, 1])  # one window per document (``whole``)
    picked: list[int] = []  # indices into ``windows``
    target = 4 * n_seqs
    token_cap = 8 * target * body_len  # plenty for a concatenated draw if documents are all short
    doc_tokens: list[np.ndarray] = []
    windows: list[tuple[int, int]] = []
    text_hash = hashlib.sha256()
    n_tokens, short_tokens, exhausted = 0, 0, True
    with tqdm(desc="tokenizing", unit="doc", disable=None) as bar:
        for text in docs:
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            text_hash.update(text.encode("utf-8") + b"\0")
            n_before = len(windows)
            windows.extend((len(doc_tokens), off) for off in range(0, len(ids) - body_len + 1, body_len))
            if len(windows) > n_before:
                picked.append(n_before + int(pick_rng.integers(len(windows) - n_before)))
            else:
                short_tokens += len(ids)
            doc_tokens.append(ids)
            n_tokens += len(ids)
            bar.update(1)
            bar.set_postfix(tokens=n_tokens, windows=len(windows), refresh=False)
            if sampling == "whole":  # long documents each give one window; short ones count to the cap
                enough = len(picked) >= n_seqs or short_tokens >= token_cap
            else:
                enough = len(windows) >= target or n_tokens >= token_cap
            if enough or len(doc_tokens) == max_documents:
                exhausted = False
                break
    packing, sep = "per_document", getattr(tokenizer, "eos_token_id", None)
    if len(windows) >= n_seqs:
        rows = [doc_tokens[d][o : o + body_len] for d, o in windows]
    else:
        parts, doc_starts, pos = [], [], 0  # stream pieces, and where each document starts in the stream
        for d, ids in enumerate(doc_tokens):
            if d and sep is not None:
                parts.append(np.array([sep], dtype=np.int64))
                pos += 1
            doc_starts.append(pos)
            parts.append(ids)
            pos += len(ids)
        stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        n_win = len(stream) // body_len
        if n_win < n_seqs:
            raise CorpusError(
                f"the corpus has only {n_tokens} tokens ({n_win} usable windows of {body_len} tokens); "
                f"need {n_seqs} x {seq_len} — lower --n-seqs/--seq-len or pass a larger --dataset"
            )
        log.info("documents are too short for %d per-document windows; concatenating them", n_seqs)
        packing = "concatenated"
        first = np.arange(n_win) * body_len
        win_doc = np.searchsorted(np.asarray(doc_starts), first, side="right") - 1
        # an offset equal to the document's length marks the eos separator that follows it
        windows = [(int(d), int(p - doc_starts[d])) for d, p in zip(win_doc, first)]
        rows = [stream[k * body_len : (k + 1) * body_len] for k in range(n_win)]
    if sampling == "first":
        chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=n_seqs, replace=False))
    elif packing == "per_document" and len(picked) >= n_seqs:
        chosen = np.asarray(picked[:n_seqs])
    else:  # too few documents hold a window: every document's pick, then other windows of those read
        rest = np.setdiff1d(np.arange(len(rows)), picked if packing == "per_document" else [])
        first = np.asarray(picked if packing == "per_document" else [], dtype=np.int64)
        more = pick_rng.choice(rest, size=n_seqs - len(first), replace=False)
        chosen = np.concatenate([first, more]).astype(np.int64)
    body = np.stack([rows[i] for i in chosen])
    if bos is not None:
        body = np.concatenate([np.full((n_seqs, 1), bos, dtype=np.int64), body], axis=1)
    info.update(
        {
            "tokenizer": str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__)),
            "n_documents": len(doc_tokens),
            "n_tokens_available": n_tokens,
            "corpus_exhausted": exhausted,
            "text_sha256": text_hash.hexdigest(),
            "seed": seed,
            "sampling": sampling,
            "seq_len": seq_len,
            "n_seqs": n_seqs,
            "prepend_bos": bos is not None,
            "bos_id": bos,
            "packing": packing,
            "n_windows": len(rows),
            "separator_id": None if packing == "per_document" else sep,
            "max_documents": max_documents,
            "starts": [[int(windows[i][0]), int(windows[i][1])] for i in chosen],
        }
    )
    log.info(
        "sampled %d x %d tokens from %s (%s, %d documents, %d tokens read)",
        n_seqs,
        seq_len,
        info.get("id", info.get("path")),
        packing,
        len(doc_tokens),
        n_tokens,
    )
    return TokenSample(tokens=torch.from_numpy(body.astype(np.int64)), source=info)


def check_dataset(dataset: str | None, text_field: str = "text") -> None:
    """Check a corpus before any model loads: the path exists (or the hub is reachable), and every
    local file is text; .jsonl files hold ``text_field``. Reads local files once, opens nothing remote.
    """
    info, docs = _open(dataset, text_field, "train")
    if info["kind"] in ("txt", "jsonl", "folder"):
        for _ in docs:
            pass
