"""The steer command end to end on a tiny model through ``cli.main``, its run folder read back by
``load_run``, and its answers to bad input (exit 2, one line, nothing written).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from confidence_neurons import load_run
from confidence_neurons.cli import main
from confidence_neurons.errors import ConfigError
from confidence_neurons.studies.steer import SteerConfig, SteerResult, chosen_dials

FIGURES = [
    "steer_nll_vs_ece",
    "steer_reliability",
    "steer_entropy_accuracy_vs_alpha",
    "steer_implied_temperature",
    "steer_implied_vs_confidence",
]


def _steer(model: Path, corpus: Path, out: Path, *extra: str) -> int:
    argv = ["steer", "--model", str(model), "--dataset", str(corpus), "--n-seqs", "4", "--seq-len", "24"]
    return main([*argv, "--out", str(out), "--quiet", *extra])


def test_steer_cli_writes_a_complete_run(tiny_model, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert _steer(tiny_model, corpus, out, "--neurons", "1.3,1.7", "--alphas", "0,1,2", "--ece-bins", "5") == 0
    printed = capsys.readouterr().out
    assert "calibrates" in printed and "report:" in printed
    for name in ["config.json", "tokens.npy", "steering.parquet", "steering.csv", "reliability.parquet"]:
        assert (out / name).is_file(), name
    for stem in FIGURES:
        assert (out / "figures" / f"{stem}.png").stat().st_size > 1000, stem
    assert "calibrates" in (out / "report.html").read_text()
    record = json.loads((out / "config.json").read_text())
    assert record["status"] == "complete" and record["kind"] == "steer"
    assert record["settings"]["placement"] == {"device": "cpu", "dtype": "float32"}
    split = record["settings"]["split"]
    assert split["fit_seqs"] == [0, 2] and split["measure_seqs"] == [2, 4]
    # 24-token sequences: 23 predictions each, of which --token-filter authors counts positions >= 3
    assert split["token_filter"] == "authors" and split["fit_tokens"] == split["measure_tokens"] == 2 * (23 - 3)
    implied = pd.read_parquet(out / "implied_temperature.parquet")
    assert implied["pos"].min() == 3 and set(implied["seq"]) == {2, 3}
    result = load_run(out)
    assert isinstance(result, SteerResult)
    t = result.table
    assert set(t["dial"]) == {"", "1.3+1.7", "1.3", "1.7"}
    assert len(t) == 1 + 3 * 3 + len(result.config.temperatures) + 1 + 3
    clean = t[t["kind"] == "clean"].iloc[0]
    for dial in ["1.3", "1.7", "1.3+1.7"]:  # alpha = 1 is the clean model
        row = t[(t["dial"] == dial) & (t["alpha"] == 1) & ~t["fitted"]].iloc[0]
        assert row["nll"] == pytest.approx(clean["nll"], abs=1e-6) and row["mean_rank_change"] == 0
    t1 = t[(t["kind"] == "temperature") & (t["T"] == 1)].iloc[0]
    assert t1["ece"] == pytest.approx(clean["ece"], abs=1e-6)
    assert (t[t["kind"] == "temperature"]["mean_rank_change"] == 0).all()  # temperature keeps every ranking
    assert t["fit_nll"].notna().sum() == len(t) - 1  # every setting but the clean row was fitted on
    assert len(result.implied) == 3 * split["measure_tokens"]
    assert np.isfinite(result.implied["T_implied"]).all()
    assert (result.implied.loc[~result.implied["clipped"], "T_implied"] == 1).all()
    assert result.config.alphas == (0.0, 1.0, 2.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--neurons", "1.999"], "--neurons: neuron index 999 is outside the last layer"),
        (["--neurons", "0.3"], "--neurons: neuron 0.3 is not in the last layer"),
        (["--neurons", "1.3", "--alphas", ""], "--alphas: the alphas grid is empty"),
        (["--neurons", "1.3", "--temperatures", "1,-2"], "--temperatures: '-2' in temperatures must be"),
        (["--neurons", "1.3", "--n-seqs", "1"], "--n-seqs: steer needs at least 2 sequences"),
        ([], "--neurons: name the neurons to steer"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_model, corpus, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert _steer(tiny_model, corpus, out, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}"), err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def _scan_dir(tmp_path: Path, flagged: list[int], layer: int = 1, d_mlp: int = 128) -> str:
    t = pd.DataFrame(
        {
            "layer": layer,
            "neuron": np.arange(d_mlp),
            "is_entropy_neuron": np.isin(np.arange(d_mlp), flagged),
            "TE": np.linspace(0, 1, d_mlp),
        }
    )
    t.to_parquet(tmp_path / "neurons.parquet")
    return str(tmp_path)


class _Layer:
    layer, d_mlp = 1, 128


def test_scan_dir_gives_its_entropy_neurons_strongest_first(tmp_path):
    config = SteerConfig(scan_dir=_scan_dir(tmp_path, [5, 90]), n_seqs=4)
    dials = chosen_dials(config, _Layer())
    assert [d.name for d in dials] == ["1.90+1.5", "1.90", "1.5"]
    assert dials[0].neurons == (90, 5)
    assert [d.name for d in chosen_dials(SteerConfig(scan_dir=config.scan_dir, dials="each"), _Layer())] == [
        "1.90",
        "1.5",
    ]


def test_scan_dir_without_entropy_neurons_or_of_another_model(tmp_path):
    with pytest.raises(ConfigError, match="flagged no entropy neuron"):
        chosen_dials(SteerConfig(scan_dir=_scan_dir(tmp_path, [])), _Layer())
    with pytest.raises(ConfigError, match="made on another model"):
        chosen_dials(SteerConfig(scan_dir=_scan_dir(tmp_path, [3], d_mlp=64)), _Layer())
