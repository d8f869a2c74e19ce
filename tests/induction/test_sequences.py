"""Induction sequences (Sec. 6.1, App. H.1, App. I.3): construction, determinism and the n-gram filter."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from confidence_neurons.data.corpus import CorpusError
from confidence_neurons.induction.sequences import (
    corrupt_first_copy,
    find_repeated_ngrams,
    natural_induction,
    synthetic_induction,
)
from tests.tiny import BOS_ID, N_SPECIAL, VOCAB_SIZE, tiny_tokenizer

N_WORDS = VOCAB_SIZE - N_SPECIAL


def filler(length: int, start: int = 1000) -> list[int]:
    """Tokens that never repeat and never collide with planted ones (ids >= start)."""
    return list(range(start, start + length))


def test_find_repeated_ngrams_returns_exactly_the_planted_repeat():
    gram = [1, 2, 3, 4, 5, 6]
    tokens = filler(5) + gram + filler(7, 2000) + gram + filler(4, 3000)
    assert find_repeated_ngrams(tokens, 6) == [(5, 18)]
    assert find_repeated_ngrams(torch.tensor(tokens), 6) == [(5, 18)]


def test_find_repeated_ngrams_sorts_by_second_occurrence():
    a, b = [1, 2, 3, 4], [5, 6, 7, 8]
    tokens = a + filler(3) + b + filler(3, 2000) + b + filler(3, 3000) + a
    assert find_repeated_ngrams(tokens, 4) == [(7, 14), (0, 21)]


def test_three_occurrences_are_excluded():
    gram = [1, 2, 3, 4, 5, 6]
    twice = filler(3) + gram + filler(3, 2000) + gram
    assert find_repeated_ngrams(twice, 6) == [(3, 12)]
    assert find_repeated_ngrams(twice + filler(3, 3000) + gram, 6) == []


def test_repeated_token_inside_the_ngram_is_excluded():
    distinct, repeated = [1, 2, 3, 4, 5, 6], [1, 2, 1, 4, 5, 6]
    assert find_repeated_ngrams(distinct + filler(3) + distinct, 6) == [(0, 9)]
    assert find_repeated_ngrams(repeated + filler(3) + repeated, 6) == []


def test_overlapping_occurrences_are_excluded():
    # "1 2 1 2" occurs exactly twice (at 0 and 2), overlapping itself. An n-gram can only overlap its
    # own repeat if a token repeats inside it, so the distinct-token rule excludes these as well.
    assert find_repeated_ngrams([1, 2, 1, 2, 1, 2] + filler(3), 4) == []
    assert find_repeated_ngrams([7, 8, 9] + filler(2) + [7, 8, 9], 3) == [(0, 5)]
    assert find_repeated_ngrams([5, 5, 5], 2) == []


def test_n_is_respected():
    gram = [1, 2, 3, 4, 5, 6]
    tokens = filler(2) + gram + filler(3, 2000) + gram + filler(2, 3000)
    assert find_repeated_ngrams(tokens, 7) == []
    assert find_repeated_ngrams(tokens, 3) == [(2 + k, 11 + k) for k in range(4)]


def write_corpus(path, n_words: int, seed: int) -> str:
    words = np.random.default_rng(seed).integers(0, N_WORDS, n_words)
    path.write_text(" ".join(f"w{i}" for i in words))
    return str(path)


def test_synthetic_induction_repeats_the_first_half_after_bos(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", 2000, seed=0)
    tok = tiny_tokenizer()
    tokens, record = synthetic_induction(tok, corpus, n_seqs=5, half_len=20, bos_id=BOS_ID, seed=3)
    assert tokens.shape == (5, 41) and tokens.dtype == torch.long
    assert (tokens[:, 0] == BOS_ID).all()
    torch.testing.assert_close(tokens[:, 1:21], tokens[:, 21:])
    assert (tokens[:, 1:] >= N_SPECIAL).all()
    assert len({tuple(r) for r in tokens[:, 1:21].tolist()}) == 5
    assert record["half_len"] == 20 and record["corpus"]["kind"] == "txt"
    json.dumps(record)

    again, _ = synthetic_induction(tok, corpus, n_seqs=5, half_len=20, bos_id=BOS_ID, seed=3)
    other, _ = synthetic_induction(tok, corpus, n_seqs=5, half_len=20, bos_id=BOS_ID, seed=4)
    assert torch.equal(tokens, again)
    assert not torch.equal(tokens, other)

    no_bos, _ = synthetic_induction(tok, corpus, n_seqs=5, half_len=20, bos_id=None, seed=3)
    assert torch.equal(no_bos, tokens[:, 1:])


def test_corrupt_first_copy_replaces_only_the_first_copy():
    tokens = torch.tensor([[BOS_ID, 5, 6, 7, 5, 6, 7]])
    out = corrupt_first_copy(tokens, torch.tensor([[9, 10, 11]]))
    assert out.tolist() == [[BOS_ID, 9, 10, 11, 5, 6, 7]]
    assert tokens.tolist() == [[BOS_ID, 5, 6, 7, 5, 6, 7]]
    assert corrupt_first_copy(tokens[:, 1:], torch.tensor([[9, 10, 11]])).tolist() == [[9, 10, 11, 5, 6, 7]]
    with pytest.raises(ValueError, match="two copies"):
        corrupt_first_copy(tokens, torch.tensor([[9, 10]]))


def jsonl(path, docs: list[list[int]]) -> str:
    path.write_text("".join(json.dumps({"text": " ".join(f"w{i}" for i in d)}) + "\n" for d in docs))
    return str(path)


def plain_doc(length: int, start: int) -> list[int]:
    """A document of distinct words (no repeated n-gram at all)."""
    return [(start + k) % N_WORDS for k in range(length)]


def test_natural_induction_finds_planted_repeats(tmp_path):
    tok = tiny_tokenizer()
    gram = [50, 51, 52, 53, 54, 55]
    planted = [0, 1, 2] + gram + [10, 11, 12, 13] + gram + [20, 21, 22, 23, 24, 25]  # 25 tokens
    docs = [plain_doc(25, 30), planted, plain_doc(25, 60), planted[::-1], plain_doc(25, 5)]
    corpus = jsonl(tmp_path / "c.jsonl", docs)
    tokens, repeats, record = natural_induction(tok, corpus, n_seqs=2, seq_len=26, n=6, bos_id=BOS_ID)
    assert tokens.shape == (2, 26) and (tokens[:, 0] == BOS_ID).all()
    assert sorted(repeats) == [(4, 14), (7, 17)]  # documents read in an order shuffled by the seed
    for row, (first, second) in zip(tokens.tolist(), repeats):
        assert row[first : first + 6] == row[second : second + 6]
        assert (first, second) in find_repeated_ngrams(row, 6)
    assert record["n_found"] == 2 and record["n_windows_scanned"] == 5
    json.dumps(record)


def test_natural_induction_returns_fewer_with_a_warning(tmp_path, caplog):
    tok = tiny_tokenizer()
    planted = [0, 1, 2, 3, 4, 5, 9] + [0, 1, 2, 3, 4, 5] + [30, 31, 32]
    corpus = jsonl(tmp_path / "c.jsonl", [plain_doc(16, 40), planted])
    with caplog.at_level(logging.WARNING):
        tokens, repeats, record = natural_induction(tok, corpus, n_seqs=3, seq_len=17, n=6, bos_id=BOS_ID)
    assert tokens.shape == (1, 17) and repeats == [(1, 8)]
    assert record["n_found"] == 1 and record["n_requested"] == 3
    assert "found only 1" in caplog.text


def test_natural_induction_needs_a_predicted_position_after_the_repeat(tmp_path):
    tok = tiny_tokenizer()
    late = [9, 8, 7] + [0, 1, 2, 3, 4, 5] + [0, 1, 2, 3, 4, 5]  # second occurrence ends the window
    corpus = jsonl(tmp_path / "c.jsonl", [plain_doc(15, 40), late])
    with pytest.raises(CorpusError, match="occurs exactly twice"):
        natural_induction(tok, corpus, n_seqs=1, seq_len=16, n=6, bos_id=BOS_ID)


def test_the_two_occurrences_need_a_token_between_them():
    gram = [1, 2, 3, 4, 5, 6]
    adjacent = filler(2) + gram + gram + filler(2, 2000)
    assert find_repeated_ngrams(adjacent, 6) == []  # the authors' filter: at least one token between
    assert find_repeated_ngrams(adjacent, 6, min_gap=0) == [(2, 8)]
    one_between = filler(2) + gram + [999] + gram + filler(2, 2000)
    assert find_repeated_ngrams(one_between, 6) == [(2, 9)]
    assert find_repeated_ngrams(one_between, 6, min_gap=2) == []
    with pytest.raises(ValueError, match="min_gap"):
        find_repeated_ngrams(one_between, 6, min_gap=-1)


# A byte-level tokenizer in miniature: "Ċ" decodes to a newline, "Ã" to one byte of a two-byte
# character (U+FFFD alone), "Ã©" to the whole character é; words w0.. follow.
NEWLINE, PARTIAL, WHOLE, NEWLINE_AFTER_SPACE, FIRST_WORD = 3, 4, 5, 6, 7


def byte_level_tokenizer(n_words: int = 40):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": BOS_ID, "</s>": 2, "Ċ": NEWLINE, "Ã": PARTIAL, "Ã©": WHOLE, "ĠĊ": NEWLINE_AFTER_SPACE}
    vocab.update({f"w{i}": FIRST_WORD + i for i in range(n_words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_excluded_tokens_name_newline_partial_utf8_and_special_tokens():
    from confidence_neurons.induction.sequences import ExcludedTokens

    tok = byte_level_tokenizer()
    excluded = ExcludedTokens(tok, bos_id=BOS_ID)
    assert excluded.reason(NEWLINE) == "newline" and excluded.reason(NEWLINE_AFTER_SPACE) == "newline"
    assert excluded.reason(PARTIAL) == "partial utf-8"
    assert excluded.reason(BOS_ID) == "special" and excluded.reason(2) == "special"
    assert excluded.reason(WHOLE) is None and excluded.reason(FIRST_WORD) is None
    assert NEWLINE in excluded and WHOLE not in excluded
    assert excluded.counts() == {"newline": 2, "partial utf-8": 1, "special": 2}
    # a BOS id the tokenizer does not call special is excluded when passed
    assert 20 in ExcludedTokens(tok, bos_id=20) and 20 not in ExcludedTokens(tok, bos_id=None)


@pytest.mark.parametrize("bad", [NEWLINE, PARTIAL, BOS_ID])
def test_an_ngram_holding_an_excluded_token_does_not_qualify(bad):
    from confidence_neurons.induction.sequences import ExcludedTokens

    excluded = ExcludedTokens(byte_level_tokenizer(), bos_id=BOS_ID)
    w = [FIRST_WORD + k for k in range(6)]
    clean = w[:3] + [WHOLE] + w[3:5]  # the whole character é is allowed
    spoiled = w[:3] + [bad] + w[3:5]
    for gram, expected in ((clean, [(1, 10)]), (spoiled, [])):
        tokens = [30] + gram + [31, 32, 33] + gram + [34, 35]
        assert find_repeated_ngrams(tokens, 6) == [(1, 10)]  # without the filter both qualify
        assert find_repeated_ngrams(tokens, 6, excluded=excluded) == expected


def test_natural_induction_skips_windows_whose_only_repeat_holds_a_newline(tmp_path):
    tok = byte_level_tokenizer()

    def doc(gram: list[str]) -> str:
        return " ".join(["w30", *gram, "w31", "w32", "w33", *gram, "w34", "w35", "w36"])

    words = [f"w{k}" for k in range(6)]
    with_newline = words[:2] + ["Ċ"] + words[2:5]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in (doc(with_newline), doc(words))))
    tokens, repeats, record = natural_induction(tok, str(path), n_seqs=2, seq_len=20, n=6, bos_id=BOS_ID)
    assert tokens.shape == (1, 20) and repeats == [(2, 11)]  # only the document without the newline
    assert NEWLINE not in tokens[0].tolist()
    assert record["n_windows_scanned"] == 2 and record["filters"]["excluded_ids_seen"]["newline"] == 1
