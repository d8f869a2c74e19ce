"""Every bad input: one sentence naming the flag or file, exit code 2, nothing written, and (where
the model is not needed to tell) no model loaded. The table in docs/bad-input.md of bad inputs is this file.
"""

from __future__ import annotations

import json
import logging
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
    f["sidecar_only"] = tmp / "u" / "counts.npy"  # u/counts.json exists, u/counts.npy does not
    f["sidecar_only"].parent.mkdir()
    f["sidecar_only"].with_suffix(".json").write_text('{"mine": true}')
    f["unreadable"] = tmp / "unreadable.txt"  # reading /proc/self/mem at offset 0 fails, even for root
    f["unreadable"].symlink_to("/proc/self/mem")
    for name, settings in {
        "config_k_str": {"k": "abc"},
        "config_n_seqs_float": {"n_seqs": 2.7},
        "config_rule_str": {"rule": "x"},
        "config_min_rho_str": {"rule": {"min_rho": "high"}},
        "config_select_bad": {"rule": {"select": "x"}},
        "config_filter_bad": {"token_filter": "some"},
        "config_list_for_int": {"seed": [1, 2]},
        "config_bool_for_str": {"model": True},
        "config_nan": {"tf_rule": {"min_te_ratio": float("nan")}},
        "config_run_out_of_range": {"kind": "scan", "config": {"n_seqs": 0}},
    }.items():
        f[name] = tmp / f"{name}.json"
        f[name].write_text(json.dumps(settings))
    return f


# (command, extra argv, expected words, known without the model[, environment])
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
    # issue 17: nothing outside the run folder overwritten
    ("unigrams", ["--out", "{sidecar_only}"], "u/counts.json already exists and --out", True),
    # issue 17: numbers checked for NaN, inf and range in one place
    ("scan", ["--seed", "-1"], "--seed: seed = -1 must be at least 0", True),
    ("scan", ["--min-te-ratio", "nan"], "--min-te-ratio: min_te_ratio = nan must be a finite number", True),
    ("scan", ["--min-te-ratio", "inf"], "--min-te-ratio: min_te_ratio = inf must be a finite number", True),
    ("scan", ["--tf-min-te-ratio", "-inf"], "--tf-min-te-ratio: min_te_ratio = -inf must be a finite number", True),
    ("scan", ["--min-freq-share", "nan"], "--min-freq-share: min_freq_share = nan must be a finite number", True),
    ("scan", ["--min-rho", "nan"], "--min-rho: min_rho = nan must be a finite number", True),
    ("scan", ["--min-ln-share", "-0.5"], "--min-ln-share: min_ln_share = -0.5 must lie in [0, 1]", True),
    (
        "scan",
        ["--tf-min-dkl-pct", "101"],
        "--tf-min-dkl-pct: min_dkl_pct = 101.0 must be a percentile in [0, 100]",
        True,
    ),
    ("scan", ["--select", "top-rho", "--top-n", "100000"], "--top-n: top_n = 100000 would flag every neuron", True),
    ("scan", ["--select", "top-rho", "--top-n", "128"], "of a final layer of 128; give at most 127", True),
    ("steer", ["--neurons", "1.3", "--alphas", "1e308"], "--alphas: '1e308' in alphas must be a finite number", True),
    ("steer", ["--neurons", "1.3", "--alphas", "0,nan"], "--alphas: 'nan' in alphas must be a finite number", True),
    ("steer", ["--neurons", "1.3", "--temperatures", "1e-9"], "--temperatures: '1e-9' in temperatures", True),
    ("steer", ["--neurons", "1.3", "--shift", "-1e9"], "--shift: shift = -1000000000.0 must lie in", True),
    (
        "induction",
        ["--neurons", "1.3", "--natural-seq-len", "64", "--ngram", "64"],
        "--ngram: ngram = 64 needs natural sequences of at least 130 tokens",
        True,
    ),
    # issue 17: config files checked by key and type
    ("scan", ["--config", "{config_k_str}"], "key 'k' is 'abc', but it must be a whole number", True),
    ("scan", ["--config", "{config_n_seqs_float}"], "key 'n_seqs' is 2.7, but it must be a whole number", True),
    ("scan", ["--config", "{config_rule_str}"], "key 'rule' is str 'x', but it must be an object of", True),
    ("scan", ["--config", "{config_min_rho_str}"], "key 'rule.min_rho' is 'high', but it must be a number", True),
    ("scan", ["--config", "{config_select_bad}"], "key 'rule.select' is 'x', but it must be one of 'rule'", True),
    ("scan", ["--config", "{config_filter_bad}"], "key 'token_filter' is 'some', but it must be one of", True),
    ("scan", ["--config", "{config_list_for_int}"], "key 'seed' is [1, 2], but it must be a whole number", True),
    ("scan", ["--config", "{config_bool_for_str}"], "key 'model' is True, but it must be a string", True),
    ("scan", ["--config", "{config_nan}"], "config_nan.json: min_te_ratio = nan must be a finite number", True),
    ("scan", ["--config", "{config_run_out_of_range}"], "out_of_range.json: n_seqs = 0 must be at least 1", True),
    # issue 17: the environment and unreadable files named up front
    (
        "scan",
        [],
        "CONFIDENCE_NEURONS_CACHE={file}/cache is not a writable directory",
        True,
        {"CONFIDENCE_NEURONS_CACHE": "{file}/cache"},
    ),
    ("scan", ["--dataset", "{unreadable}"], "unreadable.txt cannot be read (Input/output error)", True),
    ("unigrams", ["--dataset", "{unreadable}", "--out", "new.npy"], "unreadable.txt cannot be read", True),
]


@pytest.mark.parametrize(
    ("command", "extra", "words", "before_model", "env"),
    [(*c, {}) if len(c) == 4 else c for c in CASES],
    ids=[f"{c[0]}-{' '.join(c[1]) or 'no-flags'}-{i}" for i, c in enumerate(CASES)],
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
    env,
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    files = _files(tmp_path)
    extra = [a.format(**files) for a in extra]
    words = words.format(**files)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**files))
    if before_model:  # these must be told before any weight loads
        monkeypatch.setattr(checks, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
        monkeypatch.setattr(unigrams_cmd, "load_tokenizer", lambda *a, **k: pytest.fail("the tokenizer was loaded"))
    out = tmp_path / "run"
    argv = [command, "--model", str(tiny_model), "--dataset", str(corpus), "--quiet"]
    if command in ("scan", "inspect", "steer"):
        argv += ["--n-seqs", "2", "--seq-len", "16"]
    if command != "unigrams":
        argv += ["--out", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    sidecar = files["sidecar_only"].with_suffix(".json")
    assert main(argv + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert words in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before, "nothing may be written"
    assert sidecar.read_text() == '{"mine": true}' and not sidecar.with_suffix(".npy").exists()


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


def test_rerun_of_the_current_folder_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["rerun", ".", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "config.json does not exist" in err, err
    assert list(tmp_path.iterdir()) == []


def test_negative_values_are_values_not_flags():
    from confidence_neurons.cli import _config, build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["steer", "--neurons", "1.3", "--alphas", "-1,0,1,2,3", "--shift", "-0.5"])
    config = _config("steer", args)
    assert config.alphas == (-1.0, 0.0, 1.0, 2.0, 3.0) and config.shift == -0.5
    # a list that only looks numeric at its start is still an unknown flag, as before
    with pytest.raises(SystemExit):
        parser.parse_args(["steer", "--neurons", "1.3", "--alphas", "-1,x"])


def _old_scan_record(tmp_path: Path, tiny_model: Path, corpus: Path, **settings) -> Path:
    """A run folder whose config.json was written by a version without the token filter."""
    run = tmp_path / "old-run"
    run.mkdir()
    config = {"model": str(tiny_model), "dataset": str(corpus), "n_seqs": 2, "seq_len": 16, **settings}
    (run / "config.json").write_text(json.dumps({"kind": "scan", "status": "complete", "config": config}))
    return run


@pytest.mark.parametrize("how", ["rerun", "--config"])
def test_a_config_from_before_the_token_filter_reruns_with_the_old_behaviour(
    tiny_model, corpus, tmp_path, capsys, monkeypatch, how
):
    import confidence_neurons.cli as cli

    ran = []
    monkeypatch.setattr(cli, "_run", lambda kind, config, out, quiet: ran.append(config))
    run = _old_scan_record(tmp_path, tiny_model, corpus)
    argv = ["rerun", str(run)] if how == "rerun" else ["scan", "--config", str(run / "config.json")]
    assert main([*argv, "--quiet"]) == 0
    assert ran[0].token_filter == "all" and ran[0].n_seqs == 2
    err = capsys.readouterr().err
    assert "has no token_filter setting, so it is repeated with token_filter = 'all'" in err
    # a record that has the setting keeps it, and a bare settings file takes today's default silently
    (tmp_path / "bare.json").write_text(json.dumps({"n_seqs": 3}))
    assert main(["scan", "--config", str(tmp_path / "bare.json"), "--quiet"]) == 0
    assert ran[1].token_filter == "authors" and "token_filter" not in capsys.readouterr().err
    run2 = (
        _old_scan_record(tmp_path / "x", tiny_model, corpus, token_filter="paper")
        if (tmp_path / "x").mkdir() is None
        else None
    )
    assert main(["rerun", str(run2), "--quiet"]) == 0
    # the toolkit's own filter was called "paper" then: the rerun keeps it, under its new name, and says so
    assert ran[2].token_filter == "toolkit" and "now called 'toolkit'" in capsys.readouterr().err


def test_quiet_prints_no_warnings_and_inspect_names_no_flag_it_lacks(tiny_model, tmp_path, capsys, caplog):
    """On a corpus far too small for P_freq: the sparse-counts warning (without a scan-only flag in
    inspect), and with --quiet nothing on stderr at all (no transformers deprecation either).
    """
    small = tmp_path / "small.txt"
    small.write_text(" ".join(f"w{i % 12}" for i in range(400)))
    base = ["inspect", "--model", str(tiny_model), "--dataset", str(small), "--neuron", "1.3"]
    base += ["--n-seqs", "2", "--seq-len", "16", "--n-passages", "0"]
    assert main([*base, "--out", str(tmp_path / "loud")]) == 0
    warned = [r.getMessage() for r in caplog.records if "too sparse" in r.getMessage()]
    assert len(warned) == 1 and "--flag-token-frequency" not in warned[0], warned
    assert "torch_dtype" not in capsys.readouterr().err
    caplog.clear()
    assert main([*base, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "report:" in captured.out
    assert not [r for r in caplog.records if r.levelno < logging.ERROR], [r.getMessage() for r in caplog.records]
    assert logging.getLogger("confidence_neurons").level == logging.NOTSET, "the level is set back after the command"
