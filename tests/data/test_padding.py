"""Padded W_U ids under the two paddings, and when counts are too sparse for a log-frequency (Sec. 4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from confidence_neurons.data.unigrams import (
    MAX_ZERO_SHARE,
    MIN_TOKENS_PER_ENTRY,
    UnigramCounts,
    UnigramError,
    count_sparsity,
    load_counts,
    p_freq,
    padding_cosine,
    v_freq,
)
from tests.data.test_unigrams import COUNTS_DIR

SMALL = [0, 1, 2, 5, 0, 0, 0, 0, 0, 3]  # 10 real ids, 21 after add-one smoothing


def _counts(values) -> UnigramCounts:
    return UnigramCounts(np.asarray(values, dtype=np.int64), {})


def test_authors_padding_pads_the_counts_before_smoothing():
    uc = _counts(SMALL)
    p = p_freq(uc, 11, "authors")
    # the authors' code: np.concatenate([counts, [0]]) + 1, normalised
    expected = torch.tensor([*(c + 1 for c in SMALL), 1], dtype=torch.float64) / 22
    torch.testing.assert_close(p, expected)
    v = v_freq(p)
    torch.testing.assert_close(v, p.log() - p.log().mean())  # the paper's definition over every id
    assert v[10] == v[0], "a padded id weighs like an unseen real id"
    assert v[10] < 0


def test_exclude_padding_leaves_padded_ids_out():
    uc = _counts(SMALL)
    p = p_freq(uc, 11, "exclude")
    torch.testing.assert_close(p[:10], torch.tensor([c + 1 for c in SMALL], dtype=torch.float64) / 21)
    assert p[10] == 0
    v = v_freq(p)
    assert v[10] == 0
    torch.testing.assert_close(v[:10], p[:10].log() - p[:10].log().mean())
    assert p_freq(uc, 11).equal(p), "exclude is the default"


def test_the_paddings_agree_without_padded_ids_and_differ_with_them():
    uc = _counts(SMALL)
    assert p_freq(uc, 10, "authors").equal(p_freq(uc, 10, "exclude"))
    assert padding_cosine(uc, 10) == pytest.approx(1.0, abs=1e-15)
    assert padding_cosine(_counts(np.arange(100) % 7), 110) < 0.99


def test_bad_padding_is_refused():
    with pytest.raises(UnigramError, match="padding must be"):
        p_freq(_counts(SMALL), 10, "zeros")


@pytest.mark.parametrize(
    ("counts", "reliable"),
    [
        ([MIN_TOKENS_PER_ENTRY] * 4, True),  # exactly 10 tokens per id, none at zero
        ([MIN_TOKENS_PER_ENTRY] * 3 + [MIN_TOKENS_PER_ENTRY - 1], False),  # one token short
        ([4 * MIN_TOKENS_PER_ENTRY] * 2 + [0, 0], True),  # exactly half at zero
        ([100 * MIN_TOKENS_PER_ENTRY] * 2 + [0, 0, 0], False),  # 60% at zero, plenty of tokens
    ],
)
def test_sparsity_thresholds(counts, reliable):
    s = count_sparsity(_counts(counts))
    assert s.n_tokens == sum(counts) and s.n_entries == len(counts)
    assert s.zero_share == pytest.approx(counts.count(0) / len(counts))
    assert s.reliable is reliable
    assert (s.problem() is None) is reliable
    assert s.to_dict()["reliable"] is reliable
    if not reliable:
        assert "too sparse" in s.problem() and f"{s.n_entries:,}" in s.problem()


def test_built_in_corpus_sized_counts_are_sparse():
    """About 113k tokens over a 49k vocabulary with 89% of ids unseen, as the issue measured."""
    counts = np.zeros(49_152, dtype=np.int64)
    seen = np.random.default_rng(0).choice(49_152, size=5_400, replace=False)
    counts[seen] = 21
    s = count_sparsity(_counts(counts))
    assert s.zero_share > MAX_ZERO_SHARE and not s.reliable


PUBLISHED = [
    # file, W_U width (the model's padded unembedding), cosine of the two v_freq
    ("gpt2-small-unigrams_openwebtext-2M_rows_500000.npy", 50_257, 1.0),
    ("pythia-unigrams.npy", 50_304, 0.9789),
    ("phi-2-unigrams_c4_en_validation.npy", 51_200, 0.8890),
]


@pytest.mark.parametrize(("name", "d_vocab", "cosine"), PUBLISHED)
def test_published_counts_under_both_paddings(name, d_vocab, cosine):
    path = COUNTS_DIR / name
    assert path.is_file(), f"the packaged reference counts are missing ({path})"
    uc = load_counts(path, d_vocab)
    assert padding_cosine(uc, d_vocab) == pytest.approx(cosine, abs=1e-4)
    assert count_sparsity(uc).reliable, "the published counts are dense enough"
    n = len(uc.counts)
    va = v_freq(p_freq(uc, d_vocab, "authors"))
    # the authors' padded ids sit at the log-frequency of an unseen id, below almost every real id
    if d_vocab > n:
        unseen = float(va[n])
        assert (va[n:] == unseen).all() and float((va[:n] <= unseen).double().mean()) < 0.01
