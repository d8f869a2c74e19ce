"""Tests for confidence_neurons.data.unigrams (offline word-level tokenizer; the paper's published count files)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from confidence_neurons.data.unigrams import (
    UnigramCounts,
    UnigramError,
    count_unigrams,
    load_counts,
    p_freq,
    save_counts,
    v_freq,
)
from confidence_neurons.paper import REFERENCE_DIR

# The authors' published counts ship with the package (confidence_neurons.paper; sha256-checked on load).
COUNTS_DIR = REFERENCE_DIR

DOCS = [
    "the cat sat on the mat",
    "the dog sat on the log and the cat ran",
    "a bird flew over the dog",
    "",
    "zebra quagga the the the",  # zebra and quagga are out of vocabulary -> [UNK]
]
WORDS = ["[UNK]", "the", "cat", "sat", "on", "mat", "dog", "log", "and", "ran", "a", "bird", "flew", "over", "spare"]
VOCAB = {w: i for i, w in enumerate(WORDS)}


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def _expected(docs, limit=None) -> np.ndarray:
    ids = [VOCAB.get(w, 0) for d in docs for w in d.split()]
    if limit is not None:
        ids = ids[:limit]
    out = np.zeros(len(WORDS), dtype=np.int64)
    for i, n in Counter(ids).items():
        out[i] = n
    return out


@pytest.fixture
def jsonl(tmp_path) -> Path:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": d, "id": k}) + "\n" for k, d in enumerate(DOCS)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------- counting


def test_tokenizer_is_what_the_expectations_assume(tokenizer):
    assert len(tokenizer) == len(WORDS)
    assert tokenizer("the zebra", add_special_tokens=False)["input_ids"] == [1, 0]


def test_count_txt_exact(tokenizer, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("\n".join(DOCS), encoding="utf-8")
    uc = count_unigrams(tokenizer, str(path), progress=False)
    np.testing.assert_array_equal(uc.counts, _expected(DOCS))
    assert uc.counts.dtype == np.int64 and uc.counts.shape == (len(WORDS),)
    assert uc.meta["source"] == "counted"
    assert uc.meta["n_tokens"] == int(uc.counts.sum()) == sum(len(d.split()) for d in DOCS)
    assert uc.meta["n_documents"] == 1
    assert uc.meta["corpus"]["dataset"] == str(path)
    assert uc.meta["max_tokens"] is None and uc.meta["reached_max_tokens"] is False
    assert uc.counts[VOCAB["spare"]] == 0


def test_count_jsonl_exact_and_batch_size_invariant(tokenizer, jsonl):
    runs = [count_unigrams(tokenizer, str(jsonl), text_field="body", batch_docs=b, progress=False) for b in (1, 2, 64)]
    for uc in runs:
        np.testing.assert_array_equal(uc.counts, _expected(DOCS))
        assert uc.meta["n_documents"] == len(DOCS)
        assert uc.meta["corpus"]["text_field"] == "body"


@pytest.mark.parametrize("limit", [1, 6, 7, 10, 23])
@pytest.mark.parametrize("batch", [1, 3])
def test_max_tokens_respected(tokenizer, jsonl, limit, batch):
    uc = count_unigrams(tokenizer, str(jsonl), text_field="body", max_tokens=limit, batch_docs=batch, progress=False)
    np.testing.assert_array_equal(uc.counts, _expected(DOCS, limit))
    assert uc.meta["n_tokens"] == int(uc.counts.sum()) == limit
    assert uc.meta["max_tokens"] == limit and uc.meta["reached_max_tokens"] is True


def test_max_tokens_above_corpus_size(tokenizer, jsonl):
    uc = count_unigrams(tokenizer, str(jsonl), text_field="body", max_tokens=10_000, progress=False)
    np.testing.assert_array_equal(uc.counts, _expected(DOCS))
    assert uc.meta["reached_max_tokens"] is False


def test_vocab_size_too_small_raises(tokenizer, jsonl):
    with pytest.raises(UnigramError, match=r"token id 13, outside the count vector of 5 entries.*vocab_size"):
        count_unigrams(tokenizer, str(jsonl), text_field="body", vocab_size=5, progress=False)


def test_larger_vocab_size_pads_with_zeros(tokenizer, jsonl):
    uc = count_unigrams(tokenizer, str(jsonl), text_field="body", vocab_size=20, progress=False)
    assert uc.counts.shape == (20,)
    np.testing.assert_array_equal(uc.counts[: len(WORDS)], _expected(DOCS))
    assert not uc.counts[len(WORDS) :].any()


def test_builtin_corpus(tokenizer):
    uc = count_unigrams(tokenizer, None, max_tokens=5000, progress=False)
    assert uc.meta["n_tokens"] == int(uc.counts.sum()) == 5000
    assert uc.meta["corpus"]["dataset"] is None
    assert "pydoc_data.topics" in uc.meta["corpus"]["description"]
    assert uc.counts[VOCAB["the"]] > 0


def test_bad_dataset_is_a_corpus_error(tokenizer, tmp_path):
    from confidence_neurons.data.corpus import CorpusError

    with pytest.raises(CorpusError):
        count_unigrams(tokenizer, str(tmp_path / "missing.txt"), progress=False)


# --------------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tokenizer, jsonl, tmp_path):
    uc = count_unigrams(tokenizer, str(jsonl), text_field="body", progress=False)
    out = tmp_path / "sub" / "counts.npy"
    save_counts(uc, out)
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    assert np.load(out).dtype == np.int64
    back = load_counts(out, d_vocab=len(WORDS))
    np.testing.assert_array_equal(back.counts, uc.counts)
    assert back.counts.dtype == np.int64
    assert {k: v for k, v in back.meta.items() if k != "path"} == uc.meta
    assert back.meta["path"] == str(out)


def test_load_detects_mismatched_sidecar(tmp_path):
    out = tmp_path / "c.npy"
    save_counts(UnigramCounts(np.arange(10, dtype=np.int64), {"n_tokens": 45, "source": "counted"}), out)
    np.save(out, np.arange(10, dtype=np.int64) * 2)
    with pytest.raises(UnigramError, match="do not belong together"):
        load_counts(out, 10)


def test_save_refuses_non_npy_path(tmp_path):
    with pytest.raises(UnigramError, match=r"\.npy"):
        save_counts(UnigramCounts(np.ones(3, dtype=np.int64), {}), tmp_path / "c.bin")


# --------------------------------------------------------------------------------------------- bad inputs


def _write(tmp_path, arr, name="bad.npy") -> Path:
    path = tmp_path / name
    np.save(path, arr)
    return path


def test_too_long_raises(tmp_path):
    path = _write(tmp_path, np.ones(120, dtype=np.int64))
    with pytest.raises(
        UnigramError, match="has 120 entries but the model's vocabulary has only 100.*another tokenizer"
    ):
        load_counts(path, 100)


def test_much_too_short_raises(tmp_path):
    path = _write(tmp_path, np.ones(50, dtype=np.int64))
    with pytest.raises(UnigramError, match="50 entries.*another tokenizer"):
        load_counts(path, 100)


def test_slightly_short_is_padded(tmp_path):
    path = _write(tmp_path, np.arange(95, dtype=np.int64))
    p = p_freq(load_counts(path, 100), 100)
    assert p.shape == (100,) and not p[95:].any()


def test_negative_raises(tmp_path):
    arr = np.ones(100, dtype=np.int64)
    arr[3] = -2
    with pytest.raises(UnigramError, match="negative"):
        load_counts(_write(tmp_path, arr), 100)


def test_fractional_float_raises(tmp_path):
    arr = np.full(100, 0.01)
    with pytest.raises(UnigramError, match="fractional"):
        load_counts(_write(tmp_path, arr), 100)


def test_integral_float_is_accepted_and_cast(tmp_path):
    arr = np.arange(100, dtype=np.float64)
    uc = load_counts(_write(tmp_path, arr), 100)
    assert uc.counts.dtype == np.int64
    np.testing.assert_array_equal(uc.counts, np.arange(100))


def test_nan_float_raises(tmp_path):
    arr = np.ones(100)
    arr[0] = np.nan
    with pytest.raises(UnigramError, match="non-finite"):
        load_counts(_write(tmp_path, arr), 100)


def test_2d_raises(tmp_path):
    with pytest.raises(UnigramError, match="2-D array"):
        load_counts(_write(tmp_path, np.ones((10, 10), dtype=np.int64)), 100)


def test_non_integer_dtype_raises(tmp_path):
    with pytest.raises(UnigramError, match="dtype <U1, not an integer"):
        load_counts(_write(tmp_path, np.array(["a"] * 100)), 100)


def test_not_npy_and_unreadable_raise(tmp_path):
    txt = tmp_path / "counts.txt"
    txt.write_text("1 2 3")
    with pytest.raises(UnigramError, match="not a .npy file"):
        load_counts(txt, 3)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy at all")
    with pytest.raises(UnigramError, match="is not a numeric .npy array"):
        load_counts(junk, 3)
    with pytest.raises(UnigramError, match="does not exist"):
        load_counts(tmp_path / "missing.npy", 3)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(UnigramError, match="is not a numeric .npy array"):
        load_counts(obj, 3)


# --------------------------------------------------------------------------------------------- p_freq / v_freq


def test_p_and_v_on_a_small_example():
    uc = UnigramCounts(np.array([0, 1, 2, 5], dtype=np.int64), {})
    p = p_freq(uc, 4)
    assert p.dtype == torch.float64
    torch.testing.assert_close(p, torch.tensor([1, 2, 3, 6], dtype=torch.float64) / 12)
    v = v_freq(p)
    expected = torch.log(p) - torch.log(p).mean()  # the paper's definition when nothing is padded
    torch.testing.assert_close(v, expected)
    p5 = p_freq(UnigramCounts(np.array([0, 1, 2, 5, 3], dtype=np.int64), {}), 5)
    v5 = v_freq(torch.cat([p5, torch.zeros(1, dtype=torch.float64)]))
    assert v5[-1] == 0 and torch.isfinite(v5).all()
    assert abs(float(v5[:-1].sum())) < 1e-12


def test_p_freq_refuses_too_long():
    with pytest.raises(UnigramError, match="another tokenizer"):
        p_freq(UnigramCounts(np.ones(10, dtype=np.int64), {}), 9)


def test_v_freq_bad_input():
    with pytest.raises(UnigramError, match="1-D"):
        v_freq(torch.ones(2, 2))
    with pytest.raises(UnigramError, match="negative"):
        v_freq(torch.tensor([0.5, -0.1, 0.6]))
    with pytest.raises(UnigramError, match="zero everywhere"):
        v_freq(torch.zeros(3))


# --------------------------------------------------------------------------------------------- published files

PUBLISHED = [
    # file, entries, W_U widths to try, total count, relative tolerance on the README's total
    ("gpt2-small-unigrams_openwebtext-2M_rows_500000.npy", 50_257, (50_257,), 5.63e8, 0.01),
    ("pythia-unigrams.npy", 50_277, (50_277, 50_304), 3.0e11, 0.05),
    ("phi-2-unigrams_c4_en_validation.npy", 50_295, (50_295, 51_200), 1.74e8, 0.01),
]


@pytest.fixture(scope="module")
def reference_dir() -> Path:
    assert COUNTS_DIR.is_dir(), f"the packaged reference counts are missing from {COUNTS_DIR}"
    return COUNTS_DIR


@pytest.mark.parametrize("name,n,widths,total,rtol", PUBLISHED)
def test_published_counts(reference_dir, name, n, widths, total, rtol):
    path = reference_dir / name
    assert path.is_file(), f"{path} is missing from the packaged reference data"
    for d_vocab in widths:
        uc = load_counts(path, d_vocab)
        assert uc.counts.shape == (n,) and uc.counts.dtype == np.int64
        assert uc.meta["source"] == f"published:{name}"
        assert uc.meta["n_tokens"] == int(uc.counts.sum())
        assert uc.meta["n_tokens"] == pytest.approx(total, rel=rtol)
        p = p_freq(uc, d_vocab)
        assert p.shape == (d_vocab,) and p.dtype == torch.float64
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)
        smoothed = uc.counts.astype(np.float64) + 1
        np.testing.assert_allclose(p[:n].numpy(), smoothed / smoothed.sum(), rtol=1e-12)
        assert (p[:n] > 0).all()
        assert not p[n:].any()
        v = v_freq(p)
        assert v.shape == (d_vocab,) and v.dtype == torch.float64 and torch.isfinite(v).all()
        assert abs(float(v[:n].mean())) < 1e-9
        assert not v[n:].any()
        # commoner tokens point further along v_freq
        assert int(torch.argmax(v)) == int(np.argmax(uc.counts))
    with pytest.raises(UnigramError, match="another tokenizer"):
        load_counts(path, n - 1)


def test_published_gpt2_total(reference_dir):
    uc = load_counts(reference_dir / PUBLISHED[0][0], 50_257)
    assert uc.meta["n_tokens"] == pytest.approx(5.63e8, rel=0.01)
    assert uc.meta["tokenizer"].startswith("GPT-2")
