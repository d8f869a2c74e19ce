"""Figures for examples of neuron activity (Fig. 4a and 4c) and their PNG export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from confidence_neurons.figures import activity as A
from tests.figures.pngcheck import png_size, save_figure


def make_tokens(n=3000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rank = rng.geometric(0.35, n)
    rr = 1.0 / rank
    initial = rng.gamma(2.0, 1.5, n) * np.where(rank == 1, 0.2, 1.0)
    delta_loss = 0.3 * (initial - 1.5) * 0.1 + rng.normal(0, 0.02, n)
    activation = rng.normal(0, 1, n)
    delta_kl = rng.normal(0.05, 0.03, n)
    words = ["the", " cat", "<script>", "\n", " & co", "Mes", "otherapy"]
    return pd.DataFrame(
        {
            "seq": np.arange(n) // 100,
            "pos": np.arange(n) % 100,
            "token": [words[i % len(words)] for i in range(n)],
            "target": [words[(i + 1) % len(words)] for i in range(n)],
            "activation": activation,
            "initial_loss": initial,
            "delta_loss": delta_loss,
            "delta_entropy": -2 * delta_kl + rng.normal(0, 0.01, n),
            "delta_kl": delta_kl,
            "reciprocal_rank": rr,
            "clipped": activation > 0.0,
        }
    )


@pytest.fixture(scope="module")
def tokens():
    return make_tokens()


def check_common(fig: go.Figure, paper_fig: str, neuron: str):
    assert fig.layout.title.text.startswith(f"{paper_fig} analogue:")
    assert neuron in fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert fig.layout.template.layout.plot_bgcolor == "white"


def keys(fig_trace) -> list[tuple[int, int]]:
    return [(int(s), int(p)) for s, p in fig_trace.customdata[:, 1:3]]


def test_fig4a_only_clipped_tokens_coloured_by_rr(tokens):
    fig = A.fig_loss_change_vs_initial(tokens, "11.2378")
    check_common(fig, "Fig. 4a", "11.2378")
    (t,) = fig.data
    exp = tokens[tokens["clipped"]]
    assert 0 < len(exp) < len(tokens)
    assert keys(t) == list(zip(exp["seq"], exp["pos"]))
    np.testing.assert_allclose(t.x, exp["initial_loss"])
    np.testing.assert_allclose(t.y, exp["delta_loss"])
    np.testing.assert_allclose(t.marker.color, exp["reciprocal_rank"])
    assert t.marker.colorscale and t.marker.showscale and (t.marker.cmin, t.marker.cmax) == (0.0, 1.0)
    # hover: escaped token → target, visible whitespace
    labels = list(t.customdata[:, 0])
    assert "&lt;script&gt; → ↵" in labels and "<script>" not in "".join(labels)
    assert "·&amp;·co → Mes" in labels
    assert "customdata[0]" in t.hovertemplate


def test_fig4a_caps_points_seeded(tokens):
    fig = A.fig_loss_change_vs_initial(tokens, "n", max_points=100, seed=1)
    (t,) = fig.data
    assert len(t.x) == 100
    clipped = set(zip(tokens.loc[tokens["clipped"], "seq"], tokens.loc[tokens["clipped"], "pos"]))
    assert set(keys(t)) <= clipped and keys(t) == sorted(keys(t))
    assert f"random 100 of {len(clipped):,} tokens" in fig.layout.title.text
    assert keys(A.fig_loss_change_vs_initial(tokens, "n", max_points=100, seed=1).data[0]) == keys(t)


def test_fig4c_only_rr1_clipped_tokens(tokens):
    fig = A.fig_kl_vs_entropy_change(tokens, "23.417")
    check_common(fig, "Fig. 4c", "23.417")
    (t,) = fig.data
    exp = tokens[tokens["clipped"] & (tokens["reciprocal_rank"] == 1)]
    assert 0 < len(exp) < tokens["clipped"].sum()
    assert keys(t) == list(zip(exp["seq"], exp["pos"]))
    np.testing.assert_allclose(t.x, exp["delta_kl"])
    np.testing.assert_allclose(t.y, exp["delta_entropy"])
    np.testing.assert_allclose(t.marker.color, exp["delta_loss"])
    bound = np.abs(exp["delta_loss"]).max()
    assert t.marker.cmin == pytest.approx(-bound) and t.marker.cmax == pytest.approx(bound)


def test_no_clipped_tokens_render_with_note(tokens, tmp_path):
    none = tokens.assign(clipped=False)
    for fig in (A.fig_loss_change_vs_initial(none, "x"), A.fig_kl_vs_entropy_change(none, "x")):
        assert len(fig.data[0].x) == 0
        assert len(fig.layout.annotations) == 1
        assert png_size(save_figure(fig, tmp_path, "empty", png_scale=1)["png"].read_bytes()) == (900, 560)
    with pytest.raises(KeyError):
        A.fig_loss_change_vs_initial(tokens.drop(columns=["reciprocal_rank"]), "x")


def test_visible_token():
    assert A.visible_token(" a\tb\n") == "·a⇥b↵"
    assert A.visible_token("") == "∅"
    assert A.visible_token("<&>") == "<&>"  # escaping is the caller's job


def test_activity_figures_export_to_png(tokens, tmp_path):
    for stem, fig in {
        "fig4a": A.fig_loss_change_vs_initial(tokens, "11.2378"),
        "fig4c": A.fig_kl_vs_entropy_change(tokens, "23.417"),
    }.items():
        out = save_figure(fig, tmp_path, stem)
        assert png_size(out["png"].read_bytes()) == (1800, 1120)
        assert out["html"].stat().st_size > 1000
