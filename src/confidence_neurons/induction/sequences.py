"""Input sequences for the induction case study (Sec. 6, App. H.1, App. I.3).

Synthetic induction (Sec. 6.1): T tokens of corpus text followed by the same T tokens again,
after a BOS token. Natural induction (App. H.1, App. D): corpus windows that contain a 6-gram
occurring exactly twice, with no token repeated inside it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from confidence_neurons.data.corpus import CorpusError, _open, sample_token_sequences

log = logging.getLogger(__name__)


def synthetic_induction(
    tokenizer: Any,
    dataset: str | None,
    *,
    n_seqs: int,
    half_len: int = 100,
    bos_id: int | None,
    seed: int = 0,
    text_field: str = "text",
    split: str = "train",
    max_documents: int | None = None,
) -> tuple[Int[Tensor, "n_seqs seq_len"], dict]:
    """Sec. 6.1: ``n_seqs`` rows of [BOS] + t_1..t_T + t_1..t_T with T = ``half_len``.

    The T corpus tokens are drawn by ``sample_token_sequences`` (reproducible in ``seed``);
    seq_len is 1 + 2T with a BOS id and 2T without. The record holds the corpus draw's own
    record under ``"corpus"``.
    """
    if half_len < 2:
        raise ValueError(f"half_len must be at least 2 (got {half_len}); the paper uses 100")
    sample = sample_token_sequences(
        tokenizer,
        dataset,
        n_seqs=n_seqs,
        seq_len=half_len,
        seed=seed,
        prepend_bos=False,
        text_field=text_field,
        split=split,
        max_documents=max_documents,
    )
    body = sample.tokens  # (n_seqs, T)
    parts = [body, body]
    if bos_id is not None:
        parts.insert(0, torch.full((n_seqs, 1), int(bos_id), dtype=torch.long))
    tokens = torch.cat(parts, dim=1)  # (n_seqs, [1 +] 2T)
    record = {
        "construction": "synthetic_induction",
        "n_seqs": n_seqs,
        "half_len": half_len,
        "bos_id": bos_id,
        "seq_len": tokens.shape[1],
        "seed": seed,
        "corpus": sample.source,
    }
    return tokens, record


def copy_offset(seq_len: int, half_len: int) -> int:
    """Where the first copy starts: 1 after a BOS token (seq_len = 1 + 2T), 0 without (seq_len = 2T)."""
    offset = seq_len - 2 * half_len
    if offset not in (0, 1):
        raise ValueError(
            f"a sequence of {seq_len} tokens is not two copies of {half_len} tokens "
            f"(with or without a BOS token); pass the half_len it was built with"
        )
    return offset


def corrupt_first_copy(
    tokens: Int[Tensor, "n_seqs seq_len"], replacement: Int[Tensor, "n_seqs half_len"]
) -> Int[Tensor, "n_seqs seq_len"]:
    """App. I.3: replace the first copy with other text of the same length (a non-induction control).

    ``replacement`` is typically another draw of ``sample_token_sequences`` with a different seed.
    The BOS token (if any) and the second copy are kept.
    """
    if tokens.ndim != 2 or replacement.ndim != 2 or replacement.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"tokens {tuple(tokens.shape)} and replacement {tuple(replacement.shape)} must be "
            f"(n_seqs, seq_len) and (n_seqs, half_len) with the same n_seqs"
        )
    half_len = replacement.shape[1]
    offset = copy_offset(tokens.shape[1], half_len)
    out = tokens.clone()
    out[:, offset : offset + half_len] = replacement.to(tokens.dtype)
    return out


def find_repeated_ngrams(tokens: Sequence[int] | Tensor, n: int = 6) -> list[tuple[int, int]]:
    """App. H.1 / App. D filter: every n-gram that qualifies as a natural induction example.

    An n-gram (n consecutive tokens) qualifies when it occurs exactly twice in the sequence, its n
    tokens are all different, and its two occurrences do not overlap (implied by distinct tokens:
    an n-gram that overlaps its own repeat shares a token with itself; kept explicit). Returns
    (first_start, second_start) for each, sorted by second_start. A longer repeated span yields one
    entry per n-gram inside it; the first of them marks where induction starts.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 (got {n})")
    seq = tokens.tolist() if isinstance(tokens, Tensor) else [int(t) for t in tokens]
    if seq and isinstance(seq[0], list):
        raise ValueError("find_repeated_ngrams takes one sequence (1-D); loop over the rows of a batch")
    starts: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in range(len(seq) - n + 1):
        starts[tuple(seq[i : i + n])].append(i)
    found = [(s[0], s[1]) for gram, s in starts.items() if len(s) == 2 and len(set(gram)) == n and s[1] - s[0] >= n]
    return sorted(found, key=lambda r: r[1])


def _qualifying(row: np.ndarray, n: int) -> tuple[int, int] | None:
    """The first repeat whose second occurrence is followed by a token that is itself predicted
    (position X = second_start + n has a next token), or None.
    """
    for first, second in find_repeated_ngrams(row.tolist(), n):
        if second + n <= len(row) - 2:
            return first, second
    return None


def natural_induction(
    tokenizer: Any,
    dataset: str | None,
    *,
    n_seqs: int,
    seq_len: int,
    n: int = 6,
    bos_id: int | None,
    seed: int = 0,
    max_documents: int | None = None,
    max_windows: int | None = None,
    text_field: str = "text",
    split: str = "train",
) -> tuple[Int[Tensor, "k seq_len"], list[tuple[int, int]], dict]:
    """App. H.1: corpus windows of ``seq_len`` tokens (BOS first) that hold a repeated n-gram.

    Documents are read in order and cut into non-overlapping windows; a window is a candidate
    when ``find_repeated_ngrams`` finds a repeat whose second occurrence is followed by a
    predicted token (so the position X after it exists). Reading stops at 4 x ``n_seqs``
    candidates, ``max_documents`` documents or ``max_windows`` windows; ``n_seqs`` candidates
    are then drawn with ``seed``. Returns tokens (k, seq_len), the (first_start, second_start)
    of each window's first qualifying repeat (positions in the row, BOS included), and a record.
    Fewer than ``n_seqs`` found: all are returned, with a warning; none: ``CorpusError``.
    """
    if n_seqs < 1 or n < 1 or seq_len < 2 * n + 2:
        raise ValueError(f"need n_seqs >= 1, n >= 1 and seq_len >= 2n + 2 (got {n_seqs}, {n}, {seq_len})")
    info, docs = _open(dataset, text_field, split)
    body_len = seq_len - (1 if bos_id is not None else 0)
    prefix = np.array([] if bos_id is None else [int(bos_id)], dtype=np.int64)
    rows, repeats, origins = [], [], []
    n_docs = n_windows = 0
    exhausted = True
    with tqdm(desc="scanning for repeated n-grams", unit="doc", disable=None) as bar:
        for d, text in enumerate(docs):
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
            n_docs += 1
            for off in range(0, len(ids) - body_len + 1, body_len):
                row = np.concatenate([prefix, ids[off : off + body_len]])
                n_windows += 1
                if (rep := _qualifying(row, n)) is not None:
                    rows.append(row)
                    repeats.append(rep)
                    origins.append((d, off))
                if max_windows is not None and n_windows >= max_windows:
                    break
            bar.update(1)
            bar.set_postfix(windows=n_windows, found=len(rows), refresh=False)
            if (
                len(rows) >= 4 * n_seqs
                or n_docs == max_documents
                or (max_windows is not None and n_windows >= max_windows)
            ):
                exhausted = False
                break
    if not rows:
        raise CorpusError(
            f"none of the {n_windows} windows of {seq_len} tokens (from {n_docs} documents) holds a "
            f"{n}-gram that occurs exactly twice with no repeated token; pass a larger --dataset, "
            f"raise the document/window limits, or lower --seq-len or n"
        )
    k = min(n_seqs, len(rows))
    if k < n_seqs:
        log.warning(
            "found only %d natural induction windows of the %d requested (%d windows scanned)", k, n_seqs, n_windows
        )
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=k, replace=False))
    tokens = torch.from_numpy(np.stack([rows[i] for i in chosen]))
    chosen_repeats = [repeats[i] for i in chosen]
    info.update(
        {
            "construction": "natural_induction",
            "n": n,
            "seq_len": seq_len,
            "bos_id": bos_id,
            "seed": seed,
            "tokenizer": str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__)),
            "n_requested": n_seqs,
            "n_found": k,
            "n_candidates": len(rows),
            "n_documents": n_docs,
            "n_windows_scanned": n_windows,
            "corpus_exhausted": exhausted,
            "max_documents": max_documents,
            "max_windows": max_windows,
            "starts": [list(origins[i]) for i in chosen],
            "repeats": [list(r) for r in chosen_repeats],
        }
    )
    return tokens, chosen_repeats, info
