"""The induction command end to end on a tiny model."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from confidence_neurons.cli import main
from confidence_neurons.commands import load_run
from tests.tiny import make_tiny_dir

WINDOW = 63  # body of a 64-token natural-induction window after BOS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = make_tiny_dir("gpt2", tmp_path_factory.mktemp("model"))
    rng = random.Random(0)
    pool = [f"w{i}" for i in range(10, 80)]
    ngram = [f"w{i}" for i in range(80, 86)]  # never drawn at random: the only repeated 6-gram of a window
    folder = tmp_path_factory.mktemp("corpus")
    for d in range(4):
        windows = [rng.sample(pool, 5) + ngram + rng.sample(pool, 19) + ngram + rng.sample(pool, 27) for _ in range(6)]
        assert all(len(w) == WINDOW for w in windows)
        (folder / f"doc{d}.txt").write_text(" ".join(w for window in windows for w in window))
    return model, folder


def test_induction_end_to_end(setup, tmp_path, capsys):
    model, corpus = setup
    out = tmp_path / "run"
    argv = [
        "induction",
        "--model",
        str(model),
        "--dataset",
        str(corpus),
        "--neurons",
        "1.3,1.7",
        "--half-len",
        "16",
        "--n-induction-seqs",
        "6",
        "--n-prefix-seqs",
        "4",
        "--n-bos-seqs",
        "4",
        "--n-ablation-seqs",
        "4",
        "--ablation-half-len",
        "8",
        "--n-natural",
        "4",
        "--natural-seq-len",
        "64",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    for table in (
        "clipped_summary",
        "clipped_per_position",
        "second_copy_token_effects",
        "activation_change",
        "head_scores",
        "bos_ablation",
        "mean_z_ablation",
        "dfa",
        "curves",
        "natural_effects",
    ):
        assert (out / f"{table}.parquet").is_file(), table
    bos = pd.read_parquet(out / "bos_ablation.parquet")
    assert set(bos["kind"]) >= {"clean", "induction"} and set(bos["neuron"]) == {"1.3", "1.7"}
    assert (bos["head_set"] == "none").sum() == 2 * 17  # clean row per neuron and position (BOS + 2 x 8)
    nat = pd.read_parquet(out / "natural_effects.parquet")
    assert set(nat["label"]) == {f"A{k}" for k in range(6)} | {"B", "X"}
    first, second = (nat[nat["occurrence"] == o].sort_values(["neuron", "seq", "offset"]) for o in ("first", "second"))
    a = first["offset"] < 6  # the n-gram itself: the same words at both occurrences
    assert first.loc[a, "token"].tolist() == second.loc[second["offset"] < 6, "token"].tolist()
    assert set(first.loc[a, "token"]) == {f"w{i}" for i in range(80, 86)}
    config = json.loads((out / "config.json").read_text())
    settings = config["settings"]
    assert config["status"] == "complete" and len(settings["timings_s"]) == 7  # BOS and mean-z: one stage
    assert settings["placement"] == {"device": "cpu", "dtype": "float32"}
    assert settings["head_ablation"] == "per-position" and config["config"]["head_ablation"] == "per-position"
    assert settings["sizes"]["ablation_half_len"] == 8 and settings["sizes"]["half_len"] == 16
    # the run names the App. D sizes it did not use
    smaller = {"n_seqs", "n_ablation_seqs", "n_prefix_seqs", "n_bos_seqs", "n_natural"}
    assert set(settings["smaller_than_paper"]) == smaller
    assert settings["smaller_than_paper"]["n_seqs"].startswith(f"{settings['sizes']['n_seqs']} (App. D: 500;")
    random_neurons = settings["random_neurons"]  # App. H.2: 10 random neurons, none of the studied ones
    assert len(set(random_neurons)) == 10 and not {"1.3", "1.7"} & set(random_neurons)
    summary = pd.read_parquet(out / "clipped_summary.parquet")
    assert sorted(f"1.{i}" for i in summary.loc[summary["group"] == "random", "neuron"]) == sorted(random_neurons)
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"fig9c_natural_loss_1_3", "fig9c_natural_loss_1_7", "fig11_natural_activation_change"} <= figures
    report = (out / "report.html").read_text()
    for title in ("Fig. 5a", "Fig. 5b", "Fig. 11", "Sec. 6.2", "Fig. 5c", "Fig. 13", "Fig. 14", "Fig. 9", "Fig. 9c"):
        assert title in report, title
    assert "ablated only at the position read" in report and "at every position at once" not in report
    printed = capsys.readouterr().out
    assert "induction heads:" in printed and "report:" in printed
    loaded = load_run(out)  # the typed result, read back, rebuilds every figure the run drew
    assert loaded.names == ["1.3", "1.7"] and loaded.curves.activation_mean.shape == (2, 32)  # P = seq_len - 1
    assert {f"{stem}.png" for stem in loaded.figures()} == {p.name for p in (out / "figures").glob("*.png")}
    assert "Induction case study" in loaded._repr_html_()


def test_induction_needs_neurons_or_a_scan(setup, tmp_path, capsys):
    model, corpus = setup
    assert (
        main(["induction", "--model", str(model), "--dataset", str(corpus), "--out", str(tmp_path / "r"), "--quiet"])
        == 2
    )
    assert "--neurons" in capsys.readouterr().err
    assert (
        main(
            [
                "induction",
                "--model",
                str(model),
                "--dataset",
                str(corpus),
                "--scan",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "holds no finished scan" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    base = ["induction", "--model", str(model), "--dataset", str(corpus), "--neurons", "1.3", "--quiet"]
    base += ["--half-len", "16", "--natural-seq-len", "64"]
    with pytest.raises(SystemExit) as exc:  # argparse refuses a choice it does not know
        main([*base, "--head-ablation", "sideways", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "per-position" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "r")]) == 2  # BOS + 50 + 50 ablation tokens, a 64-token context
    assert "--ablation-half-len" in capsys.readouterr().err
    base += ["--ablation-half-len", "16"]
    assert main([*base, "--n-random", "128", "--out", str(tmp_path / "r")]) == 2  # d_mlp 128, one studied
    assert "--n-random" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_induction_studies_the_neurons_of_a_scan(setup, tmp_path):
    model, corpus = setup
    scan_dir = tmp_path / "scan"
    assert (
        main(
            [
                "scan",
                "--model",
                str(model),
                "--dataset",
                str(corpus),
                "--n-seqs",
                "4",
                "--seq-len",
                "32",
                "--out",
                str(scan_dir),
                "--quiet",
            ]
        )
        == 0
    )
    table = pd.read_parquet(scan_dir / "neurons.parquet")
    flagged = set(table.loc[table["is_entropy_neuron"] | table["is_token_frequency_neuron"], "name"])
    out = tmp_path / "run"
    assert (
        main(
            [
                "induction",
                "--model",
                str(model),
                "--dataset",
                str(corpus),
                "--scan",
                str(scan_dir),
                "--half-len",
                "16",
                "--n-induction-seqs",
                "4",
                "--n-prefix-seqs",
                "2",
                "--n-bos-seqs",
                "2",
                "--n-ablation-seqs",
                "2",
                "--ablation-half-len",
                "16",
                "--n-natural",
                "2",
                "--natural-seq-len",
                "64",
                "--head-ablation",
                "all-positions",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    settings = json.loads((out / "config.json").read_text())["settings"]
    studied = set(settings["neurons"])
    assert settings["head_ablation"] == "all-positions"
    assert "at every position at once" in (out / "report.html").read_text()
    if flagged:
        assert studied == flagged
    else:  # nothing flagged: the scan's three strongest entropy-neuron candidates
        assert len(studied) == 3


def test_paper_sizes_take_app_d_sizes_unless_a_size_is_given():
    from confidence_neurons.studies.induction import PAPER_SIZES, InductionConfig

    scaled = InductionConfig(neurons=("1.3",))
    assert scaled.head_ablation == "per-position" and scaled.ablation_half_len == 50
    paper = InductionConfig(neurons=("1.3",), paper_sizes=True)
    assert {k: getattr(paper, k) for k in PAPER_SIZES} == PAPER_SIZES
    assert (paper.n_seqs, paper.n_ablation_seqs, paper.n_prefix_seqs, paper.n_natural) == (500, 100, 1024, 1000)
    assert InductionConfig(neurons=("1.3",), paper_sizes=True, n_natural=200).n_natural == 200
    assert InductionConfig.from_dict(paper.to_dict()) == paper  # config.json round trip
