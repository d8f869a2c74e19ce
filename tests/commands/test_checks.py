"""Every bad input: one sentence naming the flag or file, exit code 2, nothing written, and (where
the model is not needed to tell) no model loaded. The table of bad inputs in docs/runs.md is this file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import confidence_neurons.commands.checks as checks
import confidence_neurons.commands.unigrams as unigrams_cmd
from confidence_neurons.cli import main
from confidence_neurons.data.corpus import _decode
from tests.tiny import VOCAB_SIZE


def _files(tmp: Path) -> dict[str, Path]:
    """Bad files of every kind, made once per test in ``tmp``."""
    f = {}
    f["file"] = tmp / "a-file"
    f["file"].write_text("x")
    f["other"] = tmp / "other"
    f["other"].mkdir()
    (f["other"] / "notes.txt").write_text("mine")
    for name, arr in {
        "zeros": np.zeros(VOCAB_SIZE, np.int64),
        "negative": np.r_[-1, np.ones(VOCAB_SIZE - 1, int)],
        "fraction": np.full(VOCAB_SIZE, 0.5),
        "nan": np.r_[np.nan, np.ones(VOCAB_SIZE - 1)],
        "wide": np.ones(VOCAB_SIZE * 3, np.int64),
    }.items():
        np.save(tmp / f"{name}.npy", arr)
        f[name] = tmp / f"{name}.npy"
    f["textnpy"] = tmp / "text.npy"
    f["textnpy"].write_text("1 2 3")
    f["pickled"] = tmp / "pickled.npy"
    np.save(f["pickled"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    f["counts_txt"] = tmp / "counts.txt"
    f["counts_txt"].write_text("1 2 3")
    f["binary"] = tmp / "binary.txt"
    f["binary"].write_bytes(bytes(range(256)) * 20)
    f["undecodable"] = tmp / "undecodable.txt"
    f["undecodable"].write_bytes(b"w1 \xff\xfe\xfa w2 \xc3\xc3\xc3 " * 200)
    f["empty_folder"] = tmp / "empty_folder"
    f["empty_folder"].mkdir()
    f["csv"] = tmp / "table.csv"
    f["csv"].write_text("a,b\n1,2\n")
    f["jsonl"] = tmp / "rows.jsonl"
    f["jsonl"].write_text(json.dumps({"body": "w1 w2"}) + "\n")
    f["blank"] = tmp / "blank.txt"
    f["blank"].write_text("   \n  ")
    f["config_missing"] = tmp / "missing-config.json"
    f["config_broken"] = tmp / "broken.json"
    f["config_broken"].write_text("{not json")
    f["config_unknown"] = tmp / "unknown.json"
    f["config_unknown"].write_text(json.dumps({"colour": "red"}))
    f["notmodel"] = tmp / "notamodel"
    f["notmodel"].mkdir()
    return f


# (command, extra argv, expected words, known without the model)
CASES = [
    ("scan", ["--out", "{file}"], "is a file, not a directory", True),
    ("scan", ["--out", "/proc/confidence-neurons-test/run"], "is not writable", True),
    ("scan", ["--out", "{other}"], "is not empty and holds no run", True),
    ("scan", ["--n-seqs", "0"], "--n-seqs: n_seqs = 0 must be at least 1", True),
    ("scan", ["--seq-len", "1"], "--seq-len: seq_len = 1 must be at least 2", True),
    (
        "scan",
        ["--seq-len", "100"],
        "--seq-len: sequences of 100 tokens are longer than the model's context of 64",
        True,
    ),
    ("scan", ["--k", "0"], "--k: k = 0 is out of range", True),
    ("scan", ["--k", "32"], "--k: k = 32 is out of range", True),
    ("scan", ["--min-rho", "2"], "--min-rho: min_rho = 2.0 must lie in [0, 1]", True),
    ("scan", ["--unigrams", "MISSING.npy"], "count file MISSING.npy does not exist", True),
    ("scan", ["--unigrams", "{zeros}"], "zeros.npy sums to zero", True),
    ("scan", ["--unigrams", "{negative}"], "negative.npy has 1 negative entries", True),
    ("scan", ["--unigrams", "{fraction}"], "fraction.npy holds fractional values", True),
    ("scan", ["--unigrams", "{nan}"], "nan.npy holds non-finite values", True),
    ("scan", ["--unigrams", "{textnpy}"], "text.npy is not a numeric .npy array", True),
    ("scan", ["--unigrams", "{pickled}"], "pickled.npy is not a numeric .npy array", True),
    ("scan", ["--unigrams", "{counts_txt}"], "counts.txt is not a .npy file", True),
    ("scan", ["--unigrams", "{wide}"], "it was made for another tokenizer", False),
    ("scan", ["--dataset", "./no/such/file.txt"], "is not an existing file or folder nor a Hugging Face hub id", True),
    (
        "scan",
        ["--dataset", "nosuchfolder"],
        "is not an existing file or folder, and the Hugging Face hub is unreachable",
        True,
    ),
    ("scan", ["--dataset", "{binary}"], "holds NUL bytes: it is binary data, not text", True),
    ("scan", ["--dataset", "{undecodable}"], "is not text:", True),
    ("scan", ["--dataset", "{empty_folder}"], "holds no .txt or .jsonl files", True),
    ("scan", ["--dataset", "{csv}"], "is neither a .txt nor a .jsonl file", True),
    ("scan", ["--dataset", "{jsonl}"], "has no text field 'text'", True),
    ("scan", ["--model", "/nonexistent/model-dir"], "neither an existing path nor a Hugging Face model id", True),
    ("scan", ["--model", "{notmodel}"], "is not a model", True),
    ("scan", ["--model", "someone/not-cached-model"], "the hub is unreachable", True),
    ("scan", ["--n-seqs", "500"], "the corpus has only", False),
    ("scan", ["--config", "{config_missing}"], "--config: ", True),
    ("scan", ["--config", "{config_broken}"], "is not a readable JSON file", True),
    ("scan", ["--config", "{config_unknown}"], "has settings that ScanConfig does not know: colour", True),
    ("inspect", ["--neuron", "abc"], "--neuron: 'abc' is not a neuron of the form LAYER.INDEX", True),
    ("inspect", ["--neuron", "0.5"], "--neuron: neuron 0.5 is not in the last layer", True),
    ("inspect", ["--neuron", "1.4096"], "--neuron: neuron index 4096 is outside the last layer", True),
    ("inspect", [], "--neuron: neuron is required", True),
    ("induction", [], "--neurons: name the neurons to study", True),
    ("induction", ["--neurons", "1.x"], "--neurons: '1.x' is not a neuron", True),
    ("induction", ["--scan", "{other}"], "--scan: ", True),
    ("induction", ["--neurons", "1.3", "--half-len", "40"], "longer than the model's context of 64", True),
    ("unigrams", ["--out", "counts.txt"], "--out: counts.txt must end in .npy", True),
    ("unigrams", ["--out", "{zeros}"], "already exists", True),
    ("unigrams", ["--out", "/proc/confidence-neurons-test/c.npy"], "is not writable", True),
    ("unigrams", ["--dataset", "{blank}", "--out", "new.npy"], "the corpus produced no tokens", False),
]


@pytest.mark.parametrize(
    ("command", "extra", "words", "before_model"),
    CASES,
    ids=[f"{c}-{' '.join(e) or 'no-flags'}-{i}" for i, (c, e, _, _) in enumerate(CASES)],
)
def test_bad_input_is_one_sentence_exit_2_and_leaves_nothing(
    tiny_model,
    corpus,
    tmp_path,
    capsys,
    monkeypatch,
    command,
    extra,
    words,
    before_model,
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    files = _files(tmp_path)
    extra = [a.format(**files) for a in extra]
    if before_model:  # these must be told before any weight loads
        monkeypatch.setattr(checks, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
        monkeypatch.setattr(unigrams_cmd, "load_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was loaded"))
    out = tmp_path / "run"
    argv = [command, "--model", str(tiny_model), "--dataset", str(corpus), "--quiet"]
    if command in ("scan", "inspect"):
        argv += ["--n-seqs", "2", "--seq-len", "16"]
    if command != "unigrams":
        argv += ["--out", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert words in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before, "nothing may be written"


def test_rerun_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["rerun", str(tmp_path), "--quiet"]) == 2
    assert "config.json does not exist" in capsys.readouterr().err


def test_a_text_not_in_utf8_says_how_it_was_read(caplog):
    record: dict = {}
    text = _decode(
        "café crème brûlée au lait chaud et des w1 w2 w3 mots ordinaires".encode("latin-1"), "doc.txt", record
    )
    assert "caf" in text and record["invalid_utf8_replaced"]
    assert "read as UTF-8 with 4 undecodable bytes replaced by U+FFFD" in caplog.text
