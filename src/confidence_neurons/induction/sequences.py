"""Input sequences for the induction case study (Sec. 6, App. H.1, App. I.3).

Synthetic induction (Sec. 6.1): T tokens of corpus text followed by the same T tokens again,
after a BOS token. Natural induction (App. H.1, App. D): corpus windows that contain a 6-gram
occurring exactly twice, with no token repeated inside it; as the authors filter it, at least one
token lies between the two occurrences and the n-gram holds no BOS (or other special) token, no
newline and no token that is a partial UTF-8 character on its own (``ExcludedTokens``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Container, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from confidence_neurons.data.corpus import CorpusError, Sampling, _open, sample_token_sequences

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
    sampling: Sampling = "whole",
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
        sampling=sampling,
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


class ExcludedTokens:
    """The token ids a natural-induction n-gram may not hold (App. H.1, as the authors filter it).

    A token is excluded when it is BOS or another special token of the tokenizer (``"special"``),
    when its text decoded alone holds a newline (``"newline"``: line feed or carriage return), or when decoded alone
    it is not whole UTF-8 (``"partial utf-8"``: the decoder's replacement character U+FFFD, as a
    byte-level BPE gives for one byte of a multi-byte character). Each id is decoded once, when
    first asked about; ``id in excluded`` answers, ``reason(id)`` says why (None: allowed).
    """

    def __init__(self, tokenizer: Any, bos_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        special = set(getattr(tokenizer, "all_special_ids", None) or ())
        if bos_id is not None:
            special.add(int(bos_id))
        self.special = frozenset(int(i) for i in special)
        self._reasons: dict[int, str | None] = {}

    def reason(self, token_id: int) -> str | None:
        """Why ``token_id`` may not be in the n-gram, or None."""
        token_id = int(token_id)
        if token_id not in self._reasons:
            if token_id in self.special:
                why = "special"
            else:
                text = self.tokenizer.decode([token_id])
                why = "newline" if ("\n" in text or "\r" in text) else "partial utf-8" if "\ufffd" in text else None
            self._reasons[token_id] = why
        return self._reasons[token_id]

    def __contains__(self, token_id: object) -> bool:
        return self.reason(int(token_id)) is not None

    def counts(self) -> dict[str, int]:
        """How many of the ids seen so far were excluded, by reason."""
        out: dict[str, int] = defaultdict(int)
        for why in self._reasons.values():
            if why is not None:
                out[why] += 1
        return dict(out)


def find_repeated_ngrams(
    tokens: Sequence[int] | Tensor, n: int = 6, *, excluded: Container[int] = (), min_gap: int = 1
) -> list[tuple[int, int]]:
    """App. H.1 / App. D filter: every n-gram that qualifies as a natural induction example.

    An n-gram (n consecutive tokens) qualifies when it occurs exactly twice in the sequence, its n
    tokens are all different, at least ``min_gap`` tokens lie between its two occurrences
    (second_start >= first_start + n + min_gap; the authors: 1) and none of its tokens is in
    ``excluded`` (e.g. ``ExcludedTokens``). Distinct tokens already forbid an n-gram overlapping its
    own repeat. Returns (first_start, second_start) for each, sorted by second_start. A longer
    repeated span yields one entry per n-gram inside it; the first of them marks where induction starts.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1 (got {n})")
    if min_gap < 0:
        raise ValueError(f"min_gap must be at least 0 (got {min_gap})")
    seq = tokens.tolist() if isinstance(tokens, Tensor) else [int(t) for t in tokens]
    if seq and isinstance(seq[0], list):
        raise ValueError("find_repeated_ngrams takes one sequence (1-D); loop over the rows of a batch")
    starts: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i in range(len(seq) - n + 1):
        starts[tuple(seq[i : i + n])].append(i)
    found = [
        (s[0], s[1])
        for gram, s in starts.items()
        if len(s) == 2 and s[1] - s[0] >= n + min_gap and len(set(gram)) == n and not any(t in excluded for t in gram)
    ]
    return sorted(found, key=lambda r: r[1])


def _qualifying(row: np.ndarray, n: int, excluded: Container[int]) -> tuple[int, int] | None:
    """The first repeat whose second occurrence is followed by a token that is itself predicted
    (position X = second_start + n has a next token), or None.
    """
    for first, second in find_repeated_ngrams(row.tolist(), n, excluded=excluded):
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
    sampling: Sampling = "whole",
) -> tuple[Int[Tensor, "k seq_len"], list[tuple[int, int]], dict]:
    """App. H.1: corpus windows of ``seq_len`` tokens (BOS first) that hold a repeated n-gram.

    Documents are read in an order shuffled by ``seed`` over the whole corpus (``sampling="whole"``;
    ``first``: in sorted order) and cut into non-overlapping windows; a window is a candidate
    when ``find_repeated_ngrams`` (with ``ExcludedTokens(tokenizer, bos_id)`` and a gap of at least
    one token) finds a repeat whose second occurrence is followed by a predicted token (so the
    position X after it exists). Reading stops at 4 x ``n_seqs``
    candidates, ``max_documents`` documents or ``max_windows`` windows; ``n_seqs`` candidates
    are then drawn with ``seed``. Returns tokens (k, seq_len), the (first_start, second_start)
    of each window's first qualifying repeat (positions in the row, BOS included), and a record.
    Fewer than ``n_seqs`` found: all are returned, with a warning; none: ``CorpusError``.
    """
    if n_seqs < 1 or n < 1 or seq_len < 2 * n + 2:
        raise ValueError(f"need n_seqs >= 1, n >= 1 and seq_len >= 2n + 2 (got {n_seqs}, {n}, {seq_len})")
    info, docs = _open(dataset, text_field, split, order_seed=seed if sampling == "whole" else None)
    body_len = seq_len - (1 if bos_id is not None else 0)
    prefix = np.array([] if bos_id is None else [int(bos_id)], dtype=np.int64)
    excluded = ExcludedTokens(tokenizer, bos_id)
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
                if (rep := _qualifying(row, n, excluded)) is not None:
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
            f"{n}-gram that occurs exactly twice with no repeated token, a gap between its occurrences "
            "and no newline, partial UTF-8 or special token; pass a larger --dataset, "
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
            "sampling": sampling,
            "tokenizer": str(getattr(tokenizer, "name_or_path", type(tokenizer).__name__)),
            "n_requested": n_seqs,
            "n_found": k,
            "n_candidates": len(rows),
            "n_documents": n_docs,
            "n_windows_scanned": n_windows,
            "filters": {
                "min_gap": 1,
                "excluded": "special (BOS) tokens, tokens decoding to a newline or to partial UTF-8",
                "excluded_ids_seen": excluded.counts(),
            },
            "corpus_exhausted": exhausted,
            "max_documents": max_documents,
            "max_windows": max_windows,
            "starts": [list(origins[i]) for i in chosen],
            "repeats": [list(r) for r in chosen_repeats],
        }
    )
    return tokens, chosen_repeats, info
