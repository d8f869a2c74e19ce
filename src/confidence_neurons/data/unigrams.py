"""Unigram (token frequency) counts, the distribution ``p_freq`` and the direction ``v_freq`` (paper Sec. 4).

Counts are one int64 per token id. They come either from counting a corpus with a tokenizer
(:func:`count_unigrams`, saved by :func:`save_counts` as ``<name>.npy`` plus ``<name>.json``
metadata) or from the count files published with the paper's code (a bare ``.npy``), both read
by :func:`load_counts`.

Smoothing is the paper's code's: ``p = (count + 1) / sum(count + 1)``. Models often pad W_U past
the tokenizer's vocabulary (Pythia: 50,277 ids in a W_U of 50,304; Phi-2: 50,295 in 51,200); the
padded ids are never produced by any text. Two treatments (:data:`Padding`):

* ``"exclude"`` (default): smooth over the count file's entries only; padded ids get ``p = 0``
  and ``v_freq = 0``, and ``v_freq`` is centred over the real vocabulary. ``v_freq`` then depends
  on the tokenizer's counts alone, not on how wide the model happens to pad W_U.
* ``"authors"``: as the authors' code (``get_pile_unigram_distribution``): pad the counts with
  zeros to the width of W_U, then smooth; padded ids get the probability of an unseen token, a
  very negative log-frequency that enters the mean, so ``v_freq`` pushes the padded logits down
  like the rarest tokens. On the published counts the two ``v_freq`` have cosine 0.979 (Pythia,
  27 padded ids) and 0.889 (Phi-2, 905 padded ids).

Counts too sparse to estimate a log-frequency are detected by :func:`count_sparsity`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from confidence_neurons.data.corpus import describe_default_corpus, iter_documents
from confidence_neurons.errors import ToolkitError
from confidence_neurons.paper import PaperModel, published_counts
from confidence_neurons.paths import file_sha256
from confidence_neurons.rundir import atomic_write, npy_bytes

log = logging.getLogger(__name__)

#: Smallest fraction of the model's vocabulary a count file may cover; shorter files were made for another tokenizer.
MIN_COVERAGE = 0.9

#: How ids past the count file's length (padded rows of W_U) enter P_freq and v_freq (module docstring).
Padding = Literal["exclude", "authors"]

#: Counts are too sparse for a log-frequency when more than this share of the entries is zero ...
MAX_ZERO_SHARE = 0.5
#: ... or when fewer than this many tokens per entry were counted.
MIN_TOKENS_PER_ENTRY = 10


class UnigramError(ToolkitError, ValueError):
    """Unigram counts cannot be made, read or used; the message says what was found and what to do."""


@dataclass(frozen=True)
class UnigramCounts:
    """Token counts (int64, ``(n_entries,)``, one per token id) and a JSON-serialisable record of their origin.

    ``meta`` holds at least ``source`` (``"counted"`` or ``"published:<filename>"``), ``tokenizer``,
    ``corpus``, ``n_tokens`` (the sum of the counts), ``n_documents`` (None when unknown) and ``n_entries``.
    """

    counts: np.ndarray
    meta: dict = field(default_factory=dict)


def _tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", None)
    return str(name) if name else type(tokenizer).__name__


def _corpus_record(dataset: str | None, text_field: str, split: str) -> dict:
    if dataset is None:
        return {"dataset": None, "description": describe_default_corpus()}
    path = Path(dataset).expanduser()
    if path.exists():
        rec = {"dataset": str(path), "description": f"local {'folder' if path.is_dir() else 'file'} {path}"}
        if path.is_dir() or path.suffix == ".jsonl":
            rec["text_field"] = text_field
        return rec
    return {
        "dataset": dataset,
        "description": f"Hugging Face hub dataset {dataset} (split {split})",
        "split": split,
        "text_field": text_field,
    }


def count_unigrams(
    tokenizer: Any,
    dataset: str | None,
    *,
    vocab_size: int | None = None,
    text_field: str = "text",
    split: str = "train",
    max_tokens: int | None = None,
    batch_docs: int = 64,
    progress: bool = True,
) -> UnigramCounts:
    """Count how often each token id occurs in ``dataset`` (see :func:`~confidence_neurons.data.corpus.iter_documents`).

    Documents are streamed and tokenized ``batch_docs`` at a time without special tokens; the counts
    are accumulated into one int64 array of length ``vocab_size`` (default ``len(tokenizer)``), so
    memory does not grow with the corpus. With ``max_tokens`` counting stops after exactly that many
    tokens (the last document read is counted only in part). A token id ``>= vocab_size`` raises
    :class:`UnigramError`; corpus problems raise :class:`~confidence_neurons.data.corpus.CorpusError`.
    """
    if vocab_size is None:
        vocab_size = len(tokenizer)
    if vocab_size < 1:
        raise UnigramError(f"vocab_size must be at least 1 (got {vocab_size}); pass the tokenizer's vocabulary size")
    if batch_docs < 1:
        raise UnigramError(f"batch_docs must be at least 1 (got {batch_docs}); pass a positive batch size")
    if max_tokens is not None and max_tokens < 1:
        raise UnigramError(f"max_tokens must be at least 1 (got {max_tokens}); raise it or leave it unset")
    docs = iter_documents(dataset, text_field=text_field, split=split)  # validates the dataset eagerly
    counts = np.zeros(vocab_size, dtype=np.int64)
    n_tokens = n_docs = 0
    truncated = False
    start = time.perf_counter()

    def add(batch: list[str]) -> bool:
        """Count one batch; return True when max_tokens is reached."""
        nonlocal n_tokens, n_docs
        ids_per_doc = tokenizer(batch, add_special_tokens=False)["input_ids"]
        parts, stop = [], False
        for ids in ids_per_doc:
            n_docs += 1
            arr = np.asarray(ids, dtype=np.int64)
            if max_tokens is not None and n_tokens + len(arr) >= max_tokens:
                arr, stop = arr[: max_tokens - n_tokens], True
            parts.append(arr)
            n_tokens += len(arr)
            if stop:
                break
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if len(flat):
            hi, lo = int(flat.max()), int(flat.min())
            if hi >= vocab_size or lo < 0:
                bad = hi if hi >= vocab_size else lo
                raise UnigramError(
                    f"the tokenizer produced token id {bad}, outside the count vector of "
                    f"{vocab_size} entries; pass a larger vocab_size (e.g. len(tokenizer))"
                )
            np.add(counts, np.bincount(flat, minlength=vocab_size), out=counts)
            bar.update(len(flat))
        return stop

    with tqdm(
        desc="counting unigrams", unit="tok", unit_scale=True, total=max_tokens, disable=None if progress else True
    ) as bar:
        batch: list[str] = []
        for text in docs:
            batch.append(text)
            if len(batch) == batch_docs:
                if add(batch):
                    truncated = True
                    break
                batch = []
        else:
            if batch:
                truncated = add(batch)
    seconds = time.perf_counter() - start
    # "truncated" means max_tokens was hit, whether or not the corpus had more text.
    meta = {
        "source": "counted",
        "tokenizer": _tokenizer_name(tokenizer),
        "corpus": _corpus_record(dataset, text_field, split),
        "n_tokens": int(n_tokens),
        "n_documents": int(n_docs),
        "n_entries": int(vocab_size),
        "max_tokens": max_tokens,
        "reached_max_tokens": bool(truncated),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(n_tokens / seconds, 1) if seconds > 0 else None,
    }
    if n_tokens == 0:
        raise UnigramError("the corpus produced no tokens, so there is nothing to count; pass a --dataset with text")
    log.info("counted %d tokens in %d documents (%.0f tok/s)", n_tokens, n_docs, n_tokens / max(seconds, 1e-9))
    return UnigramCounts(counts=counts, meta=meta)


def save_counts(counts: UnigramCounts, path: Path) -> None:
    """Write ``counts`` to ``path`` (``.npy``, int64) and its metadata to ``path.with_suffix('.json')``, atomically."""
    path = Path(path)
    if path.suffix != ".npy":
        raise UnigramError(
            f"count files are saved as .npy, but {path} has suffix {path.suffix!r}; pass a path ending in .npy"
        )
    arr = np.ascontiguousarray(counts.counts, dtype=np.int64)
    meta = dict(counts.meta)
    meta.setdefault("n_entries", int(arr.shape[0]))
    try:
        text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as exc:
        raise UnigramError(
            f"the counts' metadata is not JSON-serialisable ({exc}); keep meta to plain str/int/float/list/dict values"
        ) from exc
    atomic_write(path, npy_bytes(arr))
    atomic_write(path.with_suffix(".json"), text.encode("utf-8"))


def count_total(counts: np.ndarray) -> int:
    """The exact sum of int64 counts as a Python int (an int64 sum wraps around past 2**63)."""
    return int(np.asarray(counts, dtype=np.int64).astype(object).sum()) if np.size(counts) else 0


def _as_counts(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate a loaded array as counts; integral floats are accepted and cast to int64."""
    if arr.ndim != 1:
        raise UnigramError(
            f"{name} holds a {arr.ndim}-D array of shape {arr.shape}, not one count per token id; "
            f"pass a 1-D count vector"
        )
    if arr.shape[0] == 0:
        raise UnigramError(f"{name} holds an empty array; recount the corpus")
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise UnigramError(f"{name} has counts too large for int64; recount with int64 counts")
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise UnigramError(
                f"{name} holds non-finite values (NaN or inf), so it is not a count file; pass integer token counts"
            )
        if not np.all(arr == np.round(arr)):
            raise UnigramError(
                f"{name} holds fractional values (dtype {arr.dtype}), so it is not a count file "
                f"(perhaps probabilities); pass integer token counts"
            )
        if np.any(np.abs(arr) > 2.0**53):
            raise UnigramError(f"{name} holds float counts above 2**53 that cannot be exact; save the counts as int64")
        out = arr.astype(np.int64)
    else:
        raise UnigramError(f"{name} has dtype {arr.dtype}, not an integer type; pass integer token counts")
    if np.any(out < 0):
        raise UnigramError(
            f"{name} has {int(np.sum(out < 0))} negative entries (smallest {int(out.min())}), "
            f"which counts cannot be; recount the corpus"
        )
    if count_total(out) == 0:
        raise UnigramError(f"{name} sums to zero: no token was counted, so it defines no P_freq; recount the corpus")
    return out


def _check_width(n_entries: int, d_vocab: int, name: str) -> None:
    if d_vocab < 1:
        raise UnigramError(f"d_vocab must be at least 1 (got {d_vocab}); pass the width of the model's W_U")
    if n_entries > d_vocab:
        raise UnigramError(
            f"the count file {name} has {n_entries} entries but the model's vocabulary has only "
            f"{d_vocab}; it was made for another tokenizer, so count with this model's tokenizer"
        )
    if n_entries < MIN_COVERAGE * d_vocab:
        raise UnigramError(
            f"the count file {name} has {n_entries} entries, far fewer than the model's vocabulary "
            f"of {d_vocab}; it was made for another tokenizer, so count with this model's tokenizer"
        )


def load_counts(path: Path, d_vocab: int) -> UnigramCounts:
    """Load a ``.npy`` count file for a model whose unembedding has ``d_vocab`` columns.

    Both our files (with a ``.json`` sidecar holding their metadata) and the paper authors'
    published files (no sidecar; ``meta["source"]`` is ``"published:<filename>"``) are read.
    Counts must be a 1-D array of non-negative integers; a float array is accepted (and cast to
    int64) only when every value is a finite whole number, so probability files are refused. The
    file may be shorter than ``d_vocab`` (the rest are padded rows, see :func:`p_freq`) but not
    longer, nor shorter than ``MIN_COVERAGE * d_vocab``. The counts are returned unpadded.
    """
    counts = read_count_file(path)
    _check_width(counts.counts.shape[0], d_vocab, Path(path).name)
    return counts


def read_count_file(path: Path) -> UnigramCounts:
    """Read and check a count file on its own (no model needed): a 1-D array of non-negative whole
    numbers that sums to more than zero, and its metadata (see :func:`load_counts`).
    """
    path = Path(path)
    name = path.name
    if path.suffix != ".npy":
        raise UnigramError(f"{path} is not a .npy file; pass a count file saved with numpy.save")
    if not path.is_file():
        raise UnigramError(f"count file {path} does not exist; check the path or count a corpus first")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one clear error
        raise UnigramError(
            f"{path} is not a numeric .npy array ({type(exc).__name__}: {str(exc)[:120]}); "
            f"pass a count file saved with numpy.save"
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise UnigramError(f"{path} holds an archive, not a single array; pass a .npy count vector")
    counts = _as_counts(arr, name)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnigramError(
                f"metadata file {sidecar} is not readable JSON ({exc}); fix it or delete it "
                f"to load {name} without metadata"
            ) from exc
        if not isinstance(meta, dict):
            raise UnigramError(
                f"metadata file {sidecar} holds a {type(meta).__name__}, not an object; fix it or delete it"
            )
        if "n_tokens" in meta and meta["n_tokens"] != count_total(counts):
            raise UnigramError(
                f"metadata file {sidecar} says {meta['n_tokens']} tokens but {name} sums to "
                f"{count_total(counts)}; the two files do not belong together, so recount or delete "
                f"the .json"
            )
    else:
        known = published_counts(name)
        meta = {
            "source": f"published:{name}",
            "tokenizer": known.tokenizer if known else None,
            "corpus": known.corpus if known else None,
            "n_tokens": count_total(counts),
            "n_documents": None,
            "n_entries": int(counts.shape[0]),
        }
    meta["path"] = str(path)
    return UnigramCounts(counts=counts, meta=meta)


def p_freq(counts: UnigramCounts, d_vocab: int, padding: Padding = "exclude") -> torch.Tensor:
    """Add-one-smoothed unigram distribution, float64 ``(d_vocab,)``.

    ``padding="exclude"``: ``p = (count + 1) / sum(count + 1)`` over the count file's entries, then
    zero-padded to ``d_vocab``. ``padding="authors"``: the counts are zero-padded to ``d_vocab``
    first and then smoothed, as the paper's code does, so every id has ``p > 0``.
    """
    if padding not in ("exclude", "authors"):
        raise UnigramError(f"padding must be 'exclude' or 'authors', not {padding!r}; pass one of the two")
    c = _as_counts(np.asarray(counts.counts), "the counts")
    _check_width(c.shape[0], d_vocab, str(counts.meta.get("path", "in memory")))
    n = c.shape[0] if padding == "exclude" else d_vocab
    smoothed = torch.zeros(n, dtype=torch.float64)
    smoothed[: c.shape[0]] = torch.from_numpy(c).to(torch.float64)
    smoothed += 1.0
    out = torch.zeros(d_vocab, dtype=torch.float64)
    out[:n] = smoothed / smoothed.sum()
    return out


@dataclass(frozen=True)
class CountSparsity:
    """How well counts estimate a log-frequency: tokens counted, entries, and the share of entries at zero.

    Add-one smoothing gives every zero-count id the same log-frequency, so when most ids are at zero
    ``v_freq`` is flat over them and only separates seen from unseen ids; with few tokens per entry the
    counts of the seen ids are mostly 1 or 2 and their logs are noise. The counts are ``reliable`` when
    at most ``MAX_ZERO_SHARE`` of the entries are zero and at least ``MIN_TOKENS_PER_ENTRY`` tokens per
    entry were counted (the published counts have 0.3-0.7% zeros and 3,000+ tokens per entry).
    """

    n_tokens: int
    n_entries: int
    zero_share: float
    n_zero: int | None = None  # entries never seen (None: only the share is known)

    @property
    def reliable(self) -> bool:
        return self.zero_share <= MAX_ZERO_SHARE and self.n_tokens >= MIN_TOKENS_PER_ENTRY * self.n_entries

    def problem(self) -> str | None:
        """One sentence on why the counts are too sparse, or None when they are not."""
        if self.reliable:
            return None
        n_zero = self.n_zero if self.n_zero is not None else round(self.zero_share * self.n_entries)
        return (
            f"the unigram counts are too sparse to estimate log-frequencies: {self.n_tokens:,} tokens were "
            f"counted for {self.n_entries:,} token ids, so {n_zero:,} ids were never seen (wanted: at least "
            f"{MIN_TOKENS_PER_ENTRY * self.n_entries:,} tokens, {MIN_TOKENS_PER_ENTRY} per id, and at most "
            f"{MAX_ZERO_SHARE:.0%} of the ids unseen), so P_freq and v_freq are mostly flat"
        )

    def warning(self, flag_hint: bool) -> str | None:
        """The one warning of a run on sparse counts; ``flag_hint``: the command has --flag-token-frequency."""
        problem = self.problem()
        if problem is None:
            return None
        consequence = (
            "; the Sec. 4 results are marked unreliable and no token frequency neuron is flagged unless "
            "--flag-token-frequency is given"
            if flag_hint
            else "; read this run's numbers on P_freq (KL(P_freq || P_model)) with that in mind"
        )
        return (
            problem[0].upper()
            + problem[1:]
            + consequence
            + ". Pass --unigrams with a published count file or count a larger corpus (`confidence-neurons unigrams`)."
        )

    def to_dict(self) -> dict:
        return {
            "tokens_counted": self.n_tokens,
            "entries": self.n_entries,
            "zero_count_share": round(self.zero_share, 6),
            "reliable": self.reliable,
        }


def count_sparsity(counts: UnigramCounts) -> CountSparsity:
    """The sparsity facts of ``counts`` over its own entries (the tokenizer's vocabulary, not W_U's padding)."""
    c = np.asarray(counts.counts)
    return CountSparsity(
        n_tokens=count_total(c),
        n_entries=int(c.shape[0]),
        zero_share=float(np.mean(c == 0)),
        n_zero=int(np.sum(c == 0)),
    )


def v_freq(p: torch.Tensor) -> torch.Tensor:
    """Token frequency direction (Sec. 4): ``log p - mean(log p)``, float64, same length as ``p``.

    The paper centres over the whole vocabulary, where every ``p`` is positive (``padding="authors"``
    in :func:`p_freq`). With ``padding="exclude"`` the padded rows have ``p = 0`` and ``log p = -inf``,
    so the mean is taken over the support (entries with ``p > 0``) and ``v_freq`` is set to 0 on the
    padded entries: padded rows get no frequency component. Without padded rows both are the paper's
    definition.
    """
    p = torch.as_tensor(p).detach().to(torch.float64).cpu()
    if p.ndim != 1:
        raise UnigramError(
            f"p must be a 1-D distribution over the vocabulary, got shape {tuple(p.shape)}; pass the output of p_freq"
        )
    if not torch.all(torch.isfinite(p)) or torch.any(p < 0):
        raise UnigramError(
            "p has negative or non-finite entries, so it is not a distribution; pass the output of p_freq"
        )
    support = p > 0
    if not torch.any(support):
        raise UnigramError("p is zero everywhere, so it has no support to centre on; pass the output of p_freq")
    out = torch.zeros_like(p)
    logp = p[support].log()
    out[support] = logp - logp.mean()
    return out


def padding_cosine(counts: UnigramCounts, d_vocab: int) -> float:
    """Cosine between ``v_freq`` under ``padding="exclude"`` and ``padding="authors"`` for a W_U of ``d_vocab``
    columns (1 when nothing is padded). Published counts: 0.979 for Pythia (d_vocab 50,304), 0.889 for
    Phi-2 (51,200).
    """
    a = v_freq(p_freq(counts, d_vocab, "exclude"))
    b = v_freq(p_freq(counts, d_vocab, "authors"))
    return float(a @ b / (a.norm() * b.norm()))


def load_published_counts(paper: PaperModel, d_vocab: int) -> UnigramCounts | None:
    """The paper's published counts for ``paper`` (None where it published none), checked against
    their sha256, with their origin in ``meta``.
    """
    published = paper.unigrams
    if published is None:
        return None
    path = published.path
    if not path.is_file():
        raise UnigramError(
            f"the published count file {published.file} for {paper.key} is missing from {published.folder}; "
            "reinstall confidence-neurons or pass the file with --unigrams"
        )
    found = file_sha256(path)
    if found != published.sha256:
        raise UnigramError(
            f"{path} has sha256 {found[:12]}..., not the published {published.sha256[:12]}...; "
            "it is damaged or another file, so reinstall confidence-neurons or pass counts with --unigrams"
        )
    counts = load_counts(path, d_vocab)
    meta = {
        **counts.meta,
        "tokenizer": published.tokenizer,
        "corpus": published.corpus,
        "file": published.file,
        "sha256": found,
        "paper_model": paper.key,
    }
    return UnigramCounts(counts=counts.counts, meta=meta)
