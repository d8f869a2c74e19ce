"""Fig. 2c / 3c as the authors box them (ablations/load_results.py), against their path re-implemented
here: per token |loss_post_ablation - loss| (total) and the same with the final norm's scale frozen
(``ln_final_scale_hook``: direct), each neuron set to its mean; one box per flagged neuron and one of
the random neurons pooled, each without the values beyond 1.5 IQR (their ``remove_outliers``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from confidence_neurons.analysis.boxes import box_token_effects
from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.figures.effects import drop_outliers
from confidence_neurons.figures.entropy import fig_total_vs_direct
from confidence_neurons.models.final_layer import final_layer
from tests.tiny import load_tiny, random_tokens


@torch.no_grad()
def _their_abs_delta_loss(model, layer, tokens, neuron: int, value: float, frozen_ln: bool) -> torch.Tensor:
    clean_logits, cache = model.bridge.run_with_cache(tokens, names_filter=lambda n: n == layer.scale_hook)
    scales = cache[layer.scale_hook]

    def neuron_ablation_hook(acts, hook):
        new = acts.clone()
        new[:, :, neuron] = value
        return new

    hooks = [(layer.act_hook, neuron_ablation_hook)]
    if frozen_ln:
        hooks.append((layer.scale_hook, lambda scale, hook: scales.clone()))
    logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)

    def loss(lg):
        logp = lg[:, :-1].double().log_softmax(-1)
        return -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)

    return (loss(logits) - loss(clean_logits)).abs().reshape(-1)  # (n_seqs * (seq_len - 1),)


def _their_remove_outliers(values: pd.Series) -> pd.Series:
    q1, q3 = values.quantile(0.25), values.quantile(0.75)
    iqr = q3 - q1
    return values[(values >= q1 - 1.5 * iqr) & (values <= q3 + 1.5 * iqr)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = load_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))
    layer = final_layer(model)
    tokens = random_tokens(4, 12, seed=2)
    return model, layer, tokens, run_forward(model, layer, tokens, progress=False)


def _neuron_table(d_mlp: int, flagged: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "name": [f"1.{i}" for i in range(d_mlp)],
            "is_entropy_neuron": [i in flagged for i in range(d_mlp)],
            "is_token_frequency_neuron": False,
            "TE": 0.0,
            "DE": 0.0,
        }
    )


def test_per_token_effects_are_their_absolute_loss_changes(setup):
    model, layer, tokens, cache = setup
    neurons = _neuron_table(layer.d_mlp, [3, 7])
    mean = cache.acts.mean(0)
    table = box_token_effects(layer, cache, neurons, mean, None, seed=0, n_random=5, max_tokens=10_000)
    assert sorted(table.loc[~table["random"], "neuron"].unique()) == [3, 7]
    assert table.loc[table["random"], "neuron"].nunique() == 5
    assert not set(table.loc[table["random"], "neuron"]) & {3, 7}
    for neuron in (3, 7, int(table.loc[table["random"], "neuron"].iloc[0])):
        rows = table[table["neuron"] == neuron].sort_values("row")
        assert len(rows) == cache.n_tokens
        for col, frozen in (("abs_TE", False), ("abs_DE", True)):
            theirs = _their_abs_delta_loss(model, layer, tokens, neuron, float(mean[neuron]), frozen)
            np.testing.assert_allclose(rows[col].to_numpy(), theirs.numpy(), atol=1e-4)
    capped = box_token_effects(layer, cache, neurons, mean, None, seed=0, n_random=5, max_tokens=10)
    assert (capped[~capped["random"]].groupby("neuron").size() == 10).all()
    assert len(capped[capped["random"]]) == 5 * 2  # ceil(10 / 5) tokens of each random neuron


def test_the_boxes_drop_outliers_as_theirs_and_name_each_neuron(setup):
    model, layer, tokens, cache = setup
    values = pd.Series(np.r_[np.random.default_rng(0).normal(size=200), 25.0, -30.0])
    np.testing.assert_array_equal(np.sort(drop_outliers(values.to_numpy())), np.sort(_their_remove_outliers(values)))
    neurons = _neuron_table(layer.d_mlp, [3, 7])
    table = box_token_effects(layer, cache, neurons, cache.acts.mean(0), None, seed=0, n_random=5)
    fig = fig_total_vs_direct(neurons, tokens=table)
    total = fig.data[0]
    x, y = np.asarray(total.x), np.asarray(total.y, float)
    assert list(dict.fromkeys(x)) == ["1.3", "1.7", "random neurons (n=5, tokens pooled)"]
    for name, neuron in (("1.3", 3), ("1.7", 7)):
        theirs = _their_remove_outliers(table.loc[table["neuron"] == neuron, "abs_TE"].astype(float))
        np.testing.assert_allclose(np.sort(y[x == name]), np.sort(theirs.to_numpy()), rtol=1e-6)
    pooled = _their_remove_outliers(table.loc[table["random"], "abs_DE"].astype(float))
    direct = fig.data[1]
    dx, dy = np.asarray(direct.x), np.asarray(direct.y, float)
    np.testing.assert_allclose(np.sort(dy[dx == dx[-1]]), np.sort(pooled.to_numpy()), rtol=1e-6)
    assert "authors" in fig.layout.title.text
    assert "per-neuron means" in fig_total_vs_direct(neurons).layout.title.text  # older runs: the toolkit's
