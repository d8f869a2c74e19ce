"""Clipped mean-ablation (Sec. 5) and the inspect command."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from confidence_neurons.analysis.activity import parse_neuron
from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.cli import main
from confidence_neurons.models.final_layer import final_layer
from tests.tiny import load_tiny, random_tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = load_tiny("llama", tmp_path_factory.mktemp("llama"))
    layer = final_layer(model)
    tokens = random_tokens(3, 24)
    return layer, run_forward(model, layer, tokens, progress=False)


def test_clip_changes_nothing_below_the_mean_and_equals_mean_ablation_above(setup):
    layer, cache = setup
    mean = cache.acts.mean(0)
    neurons = [int(i) for i in cache.acts.std(0).topk(4).indices]
    clip = per_token_effects(layer, cache, neurons, mode="clip", mean_act=mean)
    full = per_token_effects(layer, cache, neurons, mode="mean", mean_act=mean)
    above = cache.acts[:, neurons] > mean[neurons]
    assert above.any() and (~above).any(), "the test needs tokens on both sides of the mean"
    for v in ("TE", "DE"):
        for q in ("loss", "entropy"):
            untouched = (getattr(clip.variant(v), q) - getattr(clip, q)[:, None])[~above]
            assert untouched.abs().max() < 1e-6
            torch.testing.assert_close(getattr(clip.variant(v), q)[above], getattr(full.variant(v), q)[above])
        assert (full.variant(v).loss - full.loss[:, None])[~above].abs().max() > 1e-4, "mean ablation must differ"


def test_parse_neuron(setup):
    layer, _ = setup
    assert parse_neuron(f"{layer.layer}.5", layer) == 5
    with pytest.raises(ValueError, match="not in the last layer"):
        parse_neuron("0.5", layer)
    with pytest.raises(ValueError, match="outside the last layer"):
        parse_neuron(f"{layer.layer}.{layer.d_mlp}", layer)
    with pytest.raises(ValueError, match="is not a neuron of the form"):
        parse_neuron("five", layer)


def test_inspect_cli_end_to_end(tiny_model, corpus, tmp_path, capsys):
    out = tmp_path / "inspect"
    argv = [
        "inspect",
        "--model",
        str(tiny_model),
        "--dataset",
        str(corpus),
        "--n-seqs",
        "4",
        "--seq-len",
        "32",
        "--neuron",
        "1.7",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    t = pd.read_parquet(out / "token_effects.parquet")
    assert len(t) == 4 * 31
    assert set(t.columns) >= {
        "token",
        "target",
        "activation",
        "initial_loss",
        "delta_loss",
        "delta_entropy",
        "delta_kl",
        "reciprocal_rank",
        "clipped",
    }
    assert (t.loc[~t["clipped"], "delta_loss"].abs() < 1e-5).all()
    assert ((t["reciprocal_rank"] > 0) & (t["reciprocal_rank"] <= 1)).all()
    for stem in ("fig4a_loss_change_vs_initial", "fig4c_kl_vs_entropy_change"):
        assert (out / "figures" / f"{stem}.png").stat().st_size > 0
    report = (out / "report.html").read_text()
    assert "Where the neuron matters most" in report and "cnp-hl" in report
    assert "report:" in capsys.readouterr().out


def test_inspect_rejects_a_neuron_outside_the_last_layer(tiny_model, corpus, tmp_path, capsys):
    out = tmp_path / "inspect"
    assert (
        main(
            [
                "inspect",
                "--model",
                str(tiny_model),
                "--dataset",
                str(corpus),
                "--neuron",
                "1.4096",
                "--seq-len",
                "16",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 2
    )
    assert "outside the last layer" in capsys.readouterr().err
    assert not out.exists()
