"""The scan CLI end to end on a tiny model, and its answers to bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from confidence_neurons.analysis.table import NEURON_COLUMNS
from confidence_neurons.cli import main
from tests.tiny import VOCAB_SIZE, scan_argv

RUN_FILES = [
    "config.json",
    "tokens.npy",
    "neurons.parquet",
    "neurons.csv",
    "spectrum.csv",
    "cos_sv.npy",
    "token_metrics.parquet",
    "unigrams.npy",
    "unigrams.json",
    "report.html",
]
FIGURES = [
    "fig1_entropy_vs_prediction",
    "fig2a_norm_vs_logitvar",
    "fig2c_total_vs_direct",
    "fig2d_spectrum",
    "fig2e_rho_vs_ln_share",
    "fig3a_kl_vs_entropy",
    "fig3b_freq_share_vs_dkl",
    "fig3c_total_vs_freq_direct",
]


def _scan(model: Path, corpus: Path, out: Path, *extra: str) -> int:
    argv = scan_argv(model, corpus, n_seqs=4, seq_len=32)
    return main([*argv, "--neuron-chunk", "32", "--out", str(out), "--quiet", *extra])


def test_scan_writes_every_file(tiny_model, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _scan(tiny_model, corpus, out) == 0
    for name in RUN_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for stem in FIGURES:
        assert (out / "figures" / f"{stem}.html").stat().st_size > 0
        assert (out / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_parquet(out / "neurons.parquet")
    assert list(table.columns) == list(NEURON_COLUMNS)
    assert len(table) == 4 * 32  # tiny GPT-2: d_mlp = 4 * d_model
    pd.testing.assert_frame_equal(table, pd.read_csv(out / "neurons.csv", dtype={"name": str}), check_dtype=False)
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "complete" and config["config"]["n_seqs"] == 4
    de_freq = config["settings"]["de_freq"]
    assert de_freq["tol_nats"] > 0 and 0 <= de_freq["exact_share"] <= 1
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (4, 32) and (tokens[:, 0] == 1).all()  # BOS first
    metrics = pd.read_parquet(out / "token_metrics.parquet")  # --token-filter authors: positions >= 3
    assert len(metrics) == 4 * (31 - 3) == config["settings"]["n_tokens_analysed"] and metrics["pos"].min() == 3
    report = (out / "report.html").read_text()
    assert "Entropy neurons" in report and 'src="http' not in report
    printed = capsys.readouterr().out
    assert "entropy neurons in layer 1" in printed and str((out / "report.html").resolve()) in printed


def test_rerun_resumes_and_another_run_is_refused(tiny_model, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _scan(tiny_model, corpus, out) == 0
    first = pd.read_parquet(out / "neurons.parquet")
    ckpts = sorted((out / "checkpoints").glob("sweep_*.npz"))
    assert len(ckpts) == 4
    ckpts[1].unlink()
    assert _scan(tiny_model, corpus, out) == 0  # same command: resumes, recomputes the missing chunk
    pd.testing.assert_frame_equal(first, pd.read_parquet(out / "neurons.parquet"))
    capsys.readouterr()
    assert _scan(tiny_model, corpus, out, "--seed", "1") == 2
    assert "already holds a different run" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/model-dir"], "neither an existing path nor a Hugging Face model id"),
        (["--k", "0"], "k = 0 is out of range"),
        (["--k", "32"], "k = 32 is out of range"),
        (["--n-seqs", "500"], "the corpus has only"),
        (["--unigrams", "MISSING.npy"], "count file MISSING.npy does not exist"),
    ],
)
def test_bad_input_is_one_sentence_and_leaves_nothing(tiny_model, corpus, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    argv = [
        "scan",
        "--model",
        str(tiny_model),
        "--dataset",
        str(corpus),
        "--n-seqs",
        "2",
        "--seq-len",
        "16",
        "--out",
        str(out),
        "--quiet",
    ]
    argv += args
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists(), "bad input must leave no run directory behind"


def test_a_path_that_is_not_a_model(tmp_path, corpus, capsys):
    (tmp_path / "notamodel").mkdir()
    assert (
        main(
            [
                "scan",
                "--model",
                str(tmp_path / "notamodel"),
                "--dataset",
                str(corpus),
                "--quiet",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    assert "is not a model" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unreachable_hub_model_says_what_to_do(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert (
        main(
            [
                "scan",
                "--model",
                "someone/not-cached-model",
                "--dataset",
                str(corpus),
                "--quiet",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "pass a local model directory or a GGUF file" in err
    assert not (tmp_path / "run").exists()


def test_unigrams_command_counts_the_corpus(tiny_model, corpus, tmp_path, capsys):
    out = tmp_path / "counts.npy"
    assert main(["unigrams", "--model", str(tiny_model), "--dataset", str(corpus), "--out", str(out), "--quiet"]) == 0
    counts = np.load(out)
    assert counts.sum() == 6 * 400 and len(counts) == VOCAB_SIZE
    assert json.loads(out.with_suffix(".json").read_text())["n_tokens"] == 6 * 400
    capsys.readouterr()
    assert _scan(tiny_model, corpus, tmp_path / "run", "--unigrams", str(out)) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["settings"]["unigrams"]["n_tokens"] == 6 * 400
