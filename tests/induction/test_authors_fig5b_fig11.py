"""Fig. 5b's clipping and Fig. 11's weighting as the authors' case_studies/induction.py does them,
against their code path re-implemented here: their token table's means (``entropy_df.pos < 100`` and
``>= 100``, i.e. the first and second half of the positions), ``weighted_diff = diff * ||W_out[i]||``
and ``strict_neurons_clipped_ablation_hook`` (clip from below when weighted_diff < 0, else from above)
in a real forward pass.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.induction.neurons import clipped_ablation_curves
from confidence_neurons.models.final_layer import final_layer
from tests.tiny import BOS_ID, load_tiny, random_tokens

HALF = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = load_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))
    layer = final_layer(model)
    body = random_tokens(6, HALF + 1, seed=5)[:, 1:]
    tokens = torch.cat([torch.full((6, 1), BOS_ID), body, body], dim=1)  # (6, 1 + 2 HALF)
    return model, layer, tokens, run_forward(model, layer, tokens, progress=False)


def _their_table(model, layer, tokens) -> pd.DataFrame:
    _, cache = model.bridge.run_with_cache(tokens, names_filter=lambda name: name == layer.act_hook)
    acts = cache[layer.act_hook]  # (n_seqs, seq_len, d_mlp): every position, the last included
    n_seqs, seq_len = tokens.shape
    table = pd.DataFrame(acts.reshape(-1, layer.d_mlp).double().numpy(), columns=list(range(layer.d_mlp)))
    table["pos"] = np.tile(np.arange(seq_len), n_seqs)
    return table


@torch.no_grad()
def _their_clipped_entropy(model, layer, tokens, neuron: int, value: float, weighted_diff: float) -> torch.Tensor:
    def strict_neurons_clipped_ablation_hook(acts, hook):
        new = acts.clone()
        col = acts[0, :, neuron]
        target = torch.full_like(col, value)
        new[0, :, neuron] = torch.maximum(target, col) if weighted_diff < 0 else torch.minimum(target, col)
        return new

    rows = []
    for seq in tokens:
        logits = model.bridge.run_with_hooks(
            seq[None], fwd_hooks=[(layer.act_hook, strict_neurons_clipped_ablation_hook)]
        )
        logp = logits[0, :-1].double().log_softmax(-1)
        rows.append(-(logp.exp() * logp).sum(-1))
    return torch.stack(rows)  # (n_seqs, seq_len - 1)


def test_fig5b_clips_as_the_authors_from_below_for_falling_neurons(setup):
    model, layer, tokens, cache = setup
    n_seqs, seq_len = tokens.shape
    table = _their_table(model, layer, tokens)
    half = table["pos"].max() / 2  # their entropy_df.pos.max() / 2, = HALF here
    first = table[table["pos"] < half].drop(columns="pos").mean()
    second = table[table["pos"] >= half].drop(columns="pos").mean()
    w_norm = model.bridge.W_out[layer.layer].detach().double().norm(dim=-1).numpy()
    weighted_diff = (second - first).to_numpy() * w_norm
    falling = int(np.argmin(weighted_diff))
    rising = int(np.argmax(weighted_diff))
    assert weighted_diff[falling] < 0 < weighted_diff[rising]
    out = clipped_ablation_curves(layer, cache, (n_seqs, seq_len), [falling, rising], half_len=HALF, clip="authors")
    torch.testing.assert_close(out["threshold"].double(), torch.tensor(first.to_numpy()), atol=1e-5, rtol=1e-5)
    assert bool(out["from_below"][falling]) and not bool(out["from_below"][rising])
    summary = out["summary"].set_index("neuron")
    assert summary.loc[falling, "clip_from"] == "below" and summary.loc[rising, "clip_from"] == "above"
    clean = _their_clipped_entropy(model, layer, tokens, 0, float("inf"), 1.0)  # min(inf, a) = a: clean
    pp = out["per_position"]
    for neuron in (falling, rising):
        theirs = _their_clipped_entropy(model, layer, tokens, neuron, float(first[neuron]), weighted_diff[neuron])
        delta = (theirs - clean)[:, 1 + HALF :].mean(0).numpy()  # the second copy, mean over sequences
        mine = pp[(pp["neuron"] == neuron) & (pp["copy"] == "second")].sort_values("position")
        np.testing.assert_allclose(mine["delta_entropy_mean"].to_numpy(), delta, atol=1e-4)
    toolkit = clipped_ablation_curves(layer, cache, (n_seqs, seq_len), [falling], half_len=HALF, clip="toolkit")
    assert not bool(toolkit["from_below"].any()) and (toolkit["summary"]["clip"] == "toolkit").all()
    # the falling neuron is below its threshold in the second copy: clipped from above it hardly moves
    assert abs(toolkit["summary"]["delta_entropy"].iloc[0]) < abs(summary.loc[falling, "delta_entropy"])


def test_fig11_ranks_by_the_change_times_the_output_weight_norm(setup):
    from confidence_neurons.figures.induction import fig_activation_change
    from confidence_neurons.induction.neurons import activation_change, acts_by_position
    from confidence_neurons.studies.induction import _fig11_y

    model, layer, tokens, cache = setup
    change = activation_change(acts_by_position(cache), HALF)
    w_norm = layer.W_out.double().norm(dim=-1).numpy()
    table = pd.DataFrame({"neuron": np.arange(layer.d_mlp), "change": change, "w_out_norm": w_norm})
    theirs = change * model.bridge.W_out[layer.layer].detach().double().norm(dim=-1).numpy()  # weighted_diff
    np.testing.assert_allclose(_fig11_y(table), theirs, rtol=1e-5)
    np.testing.assert_allclose(_fig11_y(table.drop(columns="w_out_norm")), change)  # older runs: raw
    fig = fig_activation_change(
        _fig11_y(table),
        np.zeros(layer.d_mlp),
        np.zeros(layer.d_mlp, bool),
        [str(i) for i in range(layer.d_mlp)],
        weighted=True,
    )
    np.testing.assert_allclose(np.asarray(fig.data[0].y, float), theirs, rtol=1e-5)
    assert "‖w_out‖" in fig.layout.title.text
