"""Tests for confidence_neurons.data.corpus (offline, with a small real byte-level BPE tokenizer)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from confidence_neurons.data import corpus
from confidence_neurons.data.corpus import (
    CorpusError,
    TokenSample,
    describe_default_corpus,
    iter_documents,
    sample_token_sequences,
)

INAUGURAL = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "inaugural"

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models regulate their confidence with a few special neurons.",
    "Entropy neurons write to the null space of the unembedding matrix.",
    "Token frequency neurons shift the output towards the unigram distribution.",
    "We the People of the United States, in Order to form a more perfect Union.",
]
PARAGRAPH = " ".join(SENTENCES)


def _make_tokenizer(with_bos: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 5, trainer=trainer)
    kwargs = {"bos_token": "<|endoftext|>"} if with_bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", model_max_length=10**9, **kwargs)


@pytest.fixture(scope="module")
def tokenizer():
    return _make_tokenizer(with_bos=True)


@pytest.fixture(scope="module")
def tokenizer_no_bos():
    return _make_tokenizer(with_bos=False)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _assert_windows_match(sample: TokenSample, tokenizer, dataset, **kw) -> None:
    """Every row (after BOS) is the recorded slice of the re-tokenized recorded document (documents in
    the order the sample read them: shuffled by its seed unless it sampled the first documents).
    """
    if sample.source.get("sampling") == "whole":
        kw = {**kw, "order_seed": sample.source["seed"]}
    docs = list(iter_documents(dataset, **kw))
    skip = 1 if sample.source["prepend_bos"] else 0
    body_len = sample.tokens.shape[1] - skip
    for row, (d, off) in zip(sample.tokens.tolist(), sample.source["starts"]):
        expected = _ids(tokenizer, docs[d])[off : off + body_len]
        assert row[skip:] == expected


def _is_contiguous_in(row: list[int], doc_ids: list[int]) -> bool:
    n = len(row)
    return any(doc_ids[i : i + n] == row for i in range(len(doc_ids) - n + 1))


def test_default_corpus_shape_bos_and_description(tokenizer):
    sample = sample_token_sequences(tokenizer, None, n_seqs=4, seq_len=64)
    assert sample.tokens.shape == (4, 64) and sample.tokens.dtype == torch.int64
    assert (sample.tokens[:, 0] == tokenizer.bos_token_id).all()
    assert sample.source["kind"] == "builtin" and sample.source["packing"] == "per_document"
    desc = describe_default_corpus()
    assert "pydoc_data.topics" in desc and "\n" not in desc
    _assert_windows_match(sample, tokenizer, None)


def test_default_corpus_sorted_keys():
    from pydoc_data.topics import topics

    docs = iter_documents(None)
    assert [next(docs) for _ in range(3)] == [topics[k] for k in sorted(topics)[:3]]


def test_deterministic_and_seed_dependent(tokenizer):
    a = sample_token_sequences(tokenizer, None, n_seqs=8, seq_len=32, seed=1)
    b = sample_token_sequences(tokenizer, None, n_seqs=8, seq_len=32, seed=1)
    c = sample_token_sequences(tokenizer, None, n_seqs=8, seq_len=32, seed=2)
    assert torch.equal(a.tokens, b.tokens) and a.source == b.source
    assert not torch.equal(a.tokens, c.tokens)
    first = sample_token_sequences(tokenizer, None, n_seqs=8, seq_len=32, seed=1, sampling="first")
    assert first.source["starts"] == sorted(first.source["starts"])


def test_bos_rules(tokenizer, tokenizer_no_bos):
    given = sample_token_sequences(tokenizer_no_bos, None, n_seqs=3, seq_len=16, bos_id=7)
    assert (given.tokens[:, 0] == 7).all() and given.source["bos_id"] == 7
    none = sample_token_sequences(tokenizer_no_bos, None, n_seqs=3, seq_len=16)
    assert none.source["prepend_bos"] is False and none.source["bos_id"] is None
    _assert_windows_match(none, tokenizer_no_bos, None)  # all 16 tokens are text
    off = sample_token_sequences(tokenizer, None, n_seqs=3, seq_len=16, prepend_bos=False)
    assert not (off.tokens[:, 0] == tokenizer.bos_token_id).all()
    _assert_windows_match(off, tokenizer, None)
    with pytest.raises(CorpusError, match="bos"):
        sample_token_sequences(tokenizer_no_bos, None, n_seqs=1, seq_len=8, prepend_bos=True)


def test_txt_file_windows_are_contiguous(tokenizer, tmp_path):
    text = " ".join(f"Sentence number {i} says: {SENTENCES[i % 5]}" for i in range(60))
    path = tmp_path / "doc.txt"
    path.write_text(text, encoding="utf-8")
    sample = sample_token_sequences(tokenizer, str(path), n_seqs=5, seq_len=20, seed=3)
    src = sample.source
    assert src["kind"] == "txt" and src["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert src["n_documents"] == 1 and src["n_tokens_available"] == len(_ids(tokenizer, text))
    json.loads(json.dumps(src))
    doc_ids = _ids(tokenizer, text)
    for row in sample.tokens.tolist():
        assert row[0] == tokenizer.bos_token_id and _is_contiguous_in(row[1:], doc_ids)
    _assert_windows_match(sample, tokenizer, str(path))


def test_jsonl_custom_field_and_folder(tokenizer, tmp_path):
    rows = [{"body": f"{i}: " + PARAGRAPH * 2, "meta": i} for i in range(4)]
    jl = tmp_path / "sub" / "b.jsonl"
    jl.parent.mkdir()
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    sample = sample_token_sequences(tokenizer, str(jl), n_seqs=6, seq_len=24, text_field="body")
    assert sample.source["kind"] == "jsonl" and 1 <= sample.source["n_documents"] <= 4
    _assert_windows_match(sample, tokenizer, str(jl), text_field="body")

    (tmp_path / "a.txt").write_text("Alpha document. " + PARAGRAPH, encoding="utf-8")
    (tmp_path / "ignored.csv").write_text("x,y\n1,2\n", encoding="utf-8")
    docs = list(iter_documents(str(tmp_path), text_field="body"))
    assert docs[0].startswith("Alpha") and docs[1:] == [r["body"] for r in rows]
    folder = sample_token_sequences(tokenizer, str(tmp_path), n_seqs=6, seq_len=24, text_field="body")
    files = sorted(folder.source["files"], key=lambda f: f["path"])  # in the order they were read
    assert [f["path"] for f in files] == ["a.txt", "sub/b.jsonl"]
    assert files[1]["sha256"] == hashlib.sha256(jl.read_bytes()).hexdigest()
    json.dumps(folder.source)
    _assert_windows_match(folder, tokenizer, str(tmp_path), text_field="body")


def test_jsonl_missing_field(tokenizer, tmp_path):
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"content": PARAGRAPH}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"'text'.*content"):
        sample_token_sequences(tokenizer, str(jl), n_seqs=1, seq_len=8)


def test_too_short_corpus_reports_token_count(tokenizer, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text(SENTENCES[0], encoding="utf-8")
    n = len(_ids(tokenizer, SENTENCES[0]))
    with pytest.raises(CorpusError, match=rf"only {n} tokens"):
        sample_token_sequences(tokenizer, str(path), n_seqs=4, seq_len=64)


def test_short_documents_fall_back_to_concatenation(tokenizer, tmp_path):
    for i, s in enumerate(SENTENCES * 4):
        (tmp_path / f"{i:02d}.txt").write_text(s, encoding="utf-8")
    sample = sample_token_sequences(tokenizer, str(tmp_path), n_seqs=3, seq_len=33, seed=5)
    assert sample.source["packing"] == "concatenated"
    eos = tokenizer.eos_token_id
    docs = list(iter_documents(str(tmp_path), order_seed=5))
    stream: list[int] = []
    for d, doc in enumerate(docs):
        stream += ([eos] if d else []) + _ids(tokenizer, doc)
    for row in sample.tokens.tolist():
        assert _is_contiguous_in(row[1:], stream)


def test_max_documents_limits_reading(tokenizer, tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_text(f"Document {i}. " + PARAGRAPH, encoding="utf-8")
    sample = sample_token_sequences(tokenizer, str(tmp_path), n_seqs=3, seq_len=24, max_documents=2)
    assert sample.source["n_documents"] == 2 and sample.source["packing"] == "per_document"
    assert all(d < 2 for d, _ in sample.source["starts"]) and len(sample.source["files"]) == 2


def test_invalid_utf8_is_replaced_and_recorded(tokenizer, tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(("Caf\xe9 " + PARAGRAPH).encode("latin-1"))
    doc = next(iter_documents(str(path)))
    assert doc.startswith("Caf\ufffd ")
    sample = sample_token_sequences(tokenizer, str(path), n_seqs=2, seq_len=16)
    assert sample.source["invalid_utf8_replaced"] is True


@pytest.mark.parametrize("n_seqs,seq_len", [(0, 16), (2, 1)])
def test_bad_sizes(tokenizer, n_seqs, seq_len):
    with pytest.raises(CorpusError):
        sample_token_sequences(tokenizer, None, n_seqs=n_seqs, seq_len=seq_len)


def test_missing_path_is_an_error(tokenizer, tmp_path):
    with pytest.raises(CorpusError, match="not an existing file"):
        sample_token_sequences(tokenizer, str(tmp_path / "nope.txt"), n_seqs=1, seq_len=8)


def test_unreachable_hub_id(tokenizer, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CorpusError, match="no-such-corpus is not an existing file or folder, and the Hugging Face hub"):
        sample_token_sequences(tokenizer, "nobody-x/no-such-corpus", n_seqs=1, seq_len=8)


def test_missing_builtin_corpus(monkeypatch):
    def boom():
        raise CorpusError("this Python has no pydoc_data.topics; pass --dataset")

    monkeypatch.setattr(corpus, "_topics", boom)
    with pytest.raises(CorpusError, match="--dataset"):
        iter_documents(None)
    assert "--dataset" in describe_default_corpus()


def test_inaugural_speeches_folder(tokenizer):
    if not INAUGURAL.is_dir():
        pytest.skip(f"public-domain corpus {INAUGURAL} not present (it lives in ../shared/corpora)")
    sample = sample_token_sequences(tokenizer, str(INAUGURAL), n_seqs=8, seq_len=128, seed=0)
    assert sample.tokens.shape == (8, 128) and sample.source["packing"] == "per_document"
    # Whole-corpus sampling shuffles the documents (the authors' procedure): the record names the files
    # actually read, in reading order, each one a speech of the folder with its hash.
    on_disk = {f.name for f in INAUGURAL.glob("*.txt")}
    read = [f["path"] for f in sample.source["files"]]
    assert read and set(read) <= on_disk and len(set(read)) == len(read)
    assert all(len(f["sha256"]) == 64 for f in sample.source["files"])
    assert sample.source["n_files"] == len(on_disk) and sample.source["n_documents_in_corpus"] == len(on_disk)
    again = sample_token_sequences(tokenizer, str(INAUGURAL), n_seqs=8, seq_len=128, seed=0)
    assert [f["path"] for f in again.source["files"]] == read and torch.equal(again.tokens, sample.tokens)
    other = sample_token_sequences(tokenizer, str(INAUGURAL), n_seqs=8, seq_len=128, seed=1)
    assert [f["path"] for f in other.source["files"]] != read
    assert len(np.unique(sample.tokens[:, 1:].numpy(), axis=0)) == 8
    _assert_windows_match(sample, tokenizer, str(INAUGURAL))


def _many_files(tmp_path: Path) -> Path:
    """Ten files, five .txt and five .jsonl of three documents each: 20 documents, each named by its first word."""
    for i in range(5):
        (tmp_path / f"t{i}.txt").write_text(f"Doc{i} " + PARAGRAPH, encoding="utf-8")
        lines = [json.dumps({"text": f"Doc{i}{j} " + PARAGRAPH}) for j in range(3)]
        (tmp_path / f"j{i}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path


def test_whole_sampling_reaches_every_file_and_document(tokenizer, tmp_path):
    folder = str(_many_files(tmp_path))
    all_docs = {doc.split()[0] for doc in iter_documents(folder)}
    assert len(all_docs) == 20
    seen, files = set(), set()
    for seed in range(30):
        sample = sample_token_sequences(tokenizer, folder, n_seqs=4, seq_len=12, seed=seed)
        docs = list(iter_documents(folder, order_seed=seed))
        names = [docs[d].split()[0] for d, _ in sample.source["starts"]]
        assert len(set(names)) == 4  # each sequence from another document
        seen.update(names)
        files.update(f["path"] for f in sample.source["files"])
        _assert_windows_match(sample, tokenizer, folder)
        assert sample.source["n_documents_in_corpus"] == 20 and sample.source["n_documents"] == 4
    assert seen == all_docs and len(files) == 10
    for seed in range(5):
        old = sample_token_sequences(tokenizer, folder, n_seqs=4, seq_len=12, seed=seed, sampling="first")
        first = {f["path"] for f in old.source["files"]}
        assert first == {"j0.jsonl"}  # the old procedure never leaves the alphabetically first file


def test_whole_sampling_of_the_builtin_corpus_draws_from_every_topic(tokenizer):
    from pydoc_data.topics import topics

    first_six = set(sorted(topics)[:6])
    drawn = set()
    for seed in range(3):
        sample = sample_token_sequences(tokenizer, None, n_seqs=6, seq_len=64, seed=seed)
        keys = sorted(topics)
        order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
        names = {order[d] for d, _ in sample.source["starts"]}
        assert len(names) == 6  # six topics, one window each
        drawn |= names
    assert len(drawn) > 6 and not drawn <= first_six


def test_too_few_documents_take_more_windows_of_those_read(tokenizer, tmp_path):
    (tmp_path / "one.txt").write_text(PARAGRAPH * 6, encoding="utf-8")
    (tmp_path / "two.txt").write_text(PARAGRAPH * 6, encoding="utf-8")
    sample = sample_token_sequences(tokenizer, str(tmp_path), n_seqs=5, seq_len=16, seed=0)
    assert sample.source["packing"] == "per_document" and len({tuple(s) for s in sample.source["starts"]}) == 5
    assert {d for d, _ in sample.source["starts"]} == {0, 1}
    _assert_windows_match(sample, tokenizer, str(tmp_path))
