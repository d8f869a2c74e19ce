"""The direction a final-layer neuron writes into the residual: g * w_out through Gemma's post-MLP
norm, w_out elsewhere; rho, LogitVar and the norm are reported for both (Sec. 3.1, 3.4).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.analysis.selection import EntropyNeuronRule, TokenFrequencyNeuronRule, select_entropy_neurons
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.analysis.table import NEURON_COLUMNS, neuron_table
from confidence_neurons.analysis.weights import logit_var, weight_stats, written_directions
from confidence_neurons.figures.entropy import fig_norm_vs_logitvar, fig_rho_vs_ln_share
from confidence_neurons.models.final_layer import final_layer
from tests.tiny import load_tiny, random_tokens

K = 3


@pytest.fixture(scope="module", params=[2, 3])
def gemma(request, tmp_path_factory):
    model = load_tiny(f"gemma{request.param}", tmp_path_factory.mktemp(f"gemma{request.param}"))
    return model, final_layer(model)


def _brute_rho(W: torch.Tensor, W_U: torch.Tensor, k: int) -> torch.Tensor:
    """The paper's rho from a fresh SVD: each row's norm share in W_U's bottom-k left singular vectors."""
    U, _, _ = torch.linalg.svd(W_U.double(), full_matrices=True)
    V0 = U[:, W_U.shape[0] - k :]  # (d_model, k)
    return (W @ V0).norm(dim=-1) / W.norm(dim=-1)


def test_the_written_direction_is_what_the_post_norm_module_writes(gemma):
    """Slow twin: the real post-feedforward module, fed a small multiple of w_out, returns a vector
    along g * w_out (at m = 0 the norm's rescaling is the same for every direction).
    """
    model, layer = gemma
    module = model.bridge.blocks[layer.layer].ln2_post._original_component
    written = written_directions(layer)
    with torch.no_grad():
        out = module((1e-4 * layer.W_out).to(next(module.parameters()).dtype)).double()
    cos = torch.nn.functional.cosine_similarity(out, written, dim=-1)
    assert cos.min() > 1 - 1e-5
    raw_cos = torch.nn.functional.cosine_similarity(out, layer.W_out.double(), dim=-1)
    assert raw_cos.min() < 0.99, "the random norm weights must bend the direction, or the test shows nothing"


def test_written_statistics_use_g_times_w_out_and_differ_from_the_raw_ones(gemma):
    _, layer = gemma
    ws = weight_stats(layer, K)
    gw = layer.W_out.double() * layer.post_mlp_norm.g.double()
    W_U = layer.W_U.double()
    torch.testing.assert_close(ws.norm_written.double(), gw.norm(dim=-1), rtol=1e-5, atol=0)
    torch.testing.assert_close(ws.rho_written.double(), _brute_rho(gw, W_U, K), rtol=1e-4, atol=1e-6)
    lv = ((gw @ W_U) / (W_U.norm(dim=0) * gw.norm(dim=-1, keepdim=True))).var(dim=-1)
    torch.testing.assert_close(ws.logit_var_written.double(), lv, rtol=1e-4, atol=0)
    torch.testing.assert_close(ws.rho.double(), _brute_rho(layer.W_out.double(), W_U, K), rtol=1e-4, atol=1e-6)
    for raw, wr in ((ws.w_out_norm, ws.norm_written), (ws.rho, ws.rho_written), (ws.logit_var, ws.logit_var_written)):
        assert ((raw - wr).abs() / raw.abs()).max() > 0.05
    cos_wr = (gw / gw.norm(dim=-1, keepdim=True)) @ torch.linalg.svd(W_U, full_matrices=False)[0]
    torch.testing.assert_close(ws.cos_sv.abs().double(), cos_wr.abs(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_without_a_post_norm_the_written_statistics_are_the_raw_ones(arch, tmp_path):
    layer = final_layer(load_tiny(arch, tmp_path))
    assert layer.post_mlp_norm is None
    ws = weight_stats(layer, K)
    assert torch.equal(ws.norm_written, ws.w_out_norm)
    assert torch.equal(ws.rho_written, ws.rho)
    assert torch.equal(ws.logit_var_written, ws.logit_var)
    assert torch.equal(written_directions(layer), layer.W_out.double())
    torch.testing.assert_close(ws.logit_var.double(), logit_var(layer.W_out.double(), layer.W_U.double()))


def test_the_table_carries_both_and_the_rule_reads_the_written_one(gemma):
    model, layer = gemma
    cache = run_forward(model, layer, random_tokens(2, 12), progress=False)
    ws = weight_stats(layer, K)
    table = neuron_table(
        layer, ws, sweep(layer, cache, progress=False), EntropyNeuronRule(), None, TokenFrequencyNeuronRule()
    )
    assert list(table.columns) == list(NEURON_COLUMNS)
    np.testing.assert_array_equal(table["rho_written"], ws.rho_written.numpy())
    np.testing.assert_array_equal(table["rho"], ws.rho.numpy())
    assert table["norm_pct"].max() == 100 and table["norm_pct"].idxmax() == int(ws.norm_written.argmax())
    # a threshold between a neuron's raw and written rho decides by the written one
    i = int((ws.rho_written - ws.rho).abs().argmax())
    rule = EntropyNeuronRule(min_rho=float((ws.rho[i] + ws.rho_written[i]) / 2), min_ln_share=-1e9, min_te_ratio=0)
    flagged = select_entropy_neurons(table, rule)
    assert bool(flagged[i]) == bool(ws.rho_written[i] > ws.rho[i])
    assert bool(select_entropy_neurons(table.drop(columns="rho_written"), rule)[i]) == bool(
        ws.rho[i] > ws.rho_written[i]
    )


def test_figures_plot_the_written_statistics_when_they_differ():
    n = 6
    table = pd.DataFrame(
        {
            "name": [f"1.{i}" for i in range(n)],
            "w_out_norm": np.arange(1.0, n + 1),
            "logit_var": np.full(n, 0.1),
            "rho": np.linspace(0, 0.5, n),
            "norm_written": np.arange(1.0, n + 1) * 2,
            "logit_var_written": np.full(n, 0.2),
            "rho_written": np.linspace(0.5, 1, n),
            "TE": np.ones(n),
            "DE": np.ones(n) / 2,
            "ln_share": np.full(n, 0.5),
            "abs_delta_entropy": np.ones(n),
            "is_entropy_neuron": [False] * n,
        }
    )
    fig = fig_rho_vs_ln_share(table, K)
    np.testing.assert_allclose(fig.data[0].x, table["rho_written"])
    assert "g ⊙ w_out" in fig.layout.xaxis.title.text
    fig = fig_norm_vs_logitvar(table)
    np.testing.assert_allclose(fig.data[0].x, table["norm_written"])
    same = table.assign(rho_written=table["rho"], norm_written=table["w_out_norm"])
    fig = fig_rho_vs_ln_share(same, K)
    np.testing.assert_allclose(fig.data[0].x, table["rho"])
    assert "g ⊙ w_out" not in fig.layout.xaxis.title.text
