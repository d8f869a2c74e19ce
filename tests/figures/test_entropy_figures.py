"""Figures for the entropy-neuron scan (Fig. 1, Fig. 2a/c/d/e) and their PNG export."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from confidence_neurons.figures import entropy as E
from confidence_neurons.figures.export import figure_to_png
from tests.figures.pngcheck import png_size, save_figure

N, D_MODEL, K = 200, 48, 4
FLAGGED = (7, 91, 150)


def make_neurons(flagged=FLAGGED, n=N, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    flag = np.zeros(n, dtype=bool)
    flag[list(flagged)] = True
    te = rng.uniform(0.001, 0.02, n) + flag * 0.1
    de = te * np.where(flag, 0.2, rng.uniform(0.8, 1.0, n))
    te[3] = de[3] = 0.0  # TE == 0 -> ln_share NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        ln_share = 1 - de / te
    return pd.DataFrame(
        {
            "layer": 11,
            "neuron": np.arange(n),
            "name": [f"11.{i}" for i in range(n)],
            "w_out_norm": rng.uniform(0.5, 2.0, n) + flag * 3,
            "logit_var": 10 ** rng.uniform(-2, 0, n) * np.where(flag, 0.01, 1.0),
            "rho": rng.uniform(0, 0.2, n) + flag * 0.7,
            "mean_activation": rng.normal(size=n),
            "TE": te,
            "DE": de,
            "ln_share": ln_share,
            "abs_delta_entropy": rng.uniform(0, 0.05, n) + flag * 0.3,
            "top1_change_frac": rng.uniform(0, 0.1, n) * np.where(flag, 0.2, 1.0),
            "is_entropy_neuron": flag,
        }
    )


def make_spectrum(neurons: pd.DataFrame, seed=1):
    rng = np.random.default_rng(seed)
    sv = np.sort(rng.uniform(1, 10, D_MODEL))[::-1].copy()
    sv[-K:] = rng.uniform(0, 0.05, K)
    cos = rng.uniform(-0.2, 0.2, (len(neurons), D_MODEL))
    cos[neurons["is_entropy_neuron"].to_numpy(), -K:] = -0.8
    return sv, cos


@pytest.fixture(scope="module")
def neurons():
    return make_neurons()


@pytest.fixture(scope="module")
def no_entropy(neurons):
    return neurons.assign(is_entropy_neuron=False)


def trace(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def has_no_entropy_note(fig: go.Figure) -> bool:
    return any(a.text == E.NO_ENTROPY_TEXT for a in fig.layout.annotations)


def check_common(fig: go.Figure, paper_fig: str):
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text.startswith(f"{paper_fig} analogue:")
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert fig.layout.template.layout.plot_bgcolor == "white"  # plotly_white


def flagged_rows(df):
    return df[df["is_entropy_neuron"]]


# --------------------------------------------------------------------------- Fig. 1


def test_fig1_red_trace_holds_exactly_the_flagged_neurons(neurons):
    fig = E.fig_entropy_vs_prediction(neurons)
    check_common(fig, "Fig. 1")
    red, grey = trace(fig, E.ENTROPY_TRACE), trace(fig, E.OTHER_TRACE)
    exp = flagged_rows(neurons)
    assert red.marker.color == E.ENTROPY_COLOR
    assert list(red.text) == list(exp["name"])
    np.testing.assert_allclose(red.x, exp["top1_change_frac"])
    np.testing.assert_allclose(red.y, exp["abs_delta_entropy"])
    assert "text" in red.mode
    assert len(grey.x) == N - len(FLAGGED) and grey.marker.color == E.OTHER_COLOR
    assert not set(grey.customdata[:, 0]) & set(exp["name"])
    # hover shows name, TE, DE, rho
    assert all(s in red.hovertemplate for s in ("customdata[0]", "TE", "DE", "ρ"))
    np.testing.assert_allclose(red.customdata[:, 1].astype(float), exp["TE"])
    np.testing.assert_allclose(red.customdata[:, 3].astype(float), exp["rho"])
    assert not has_no_entropy_note(fig)


# --------------------------------------------------------------------------- Fig. 2a


def test_fig2a_log_axis_and_red_trace(neurons):
    fig = E.fig_norm_vs_logitvar(neurons)
    check_common(fig, "Fig. 2a")
    assert fig.layout.yaxis.type == "log"
    red = trace(fig, E.ENTROPY_TRACE)
    exp = flagged_rows(neurons)
    np.testing.assert_allclose(red.x, exp["w_out_norm"])
    np.testing.assert_allclose(red.y, exp["logit_var"])
    assert list(red.text) == list(exp["name"])
    assert len(trace(fig, E.OTHER_TRACE).y) == N - len(FLAGGED)


# --------------------------------------------------------------------------- Fig. 2c


def test_fig2c_boxes_entropy_vs_seeded_random(neurons):
    fig = E.fig_total_vs_direct(neurons, n_random=50, seed=3)
    check_common(fig, "Fig. 2c")
    assert [t.type for t in fig.data] == ["box", "box"]
    te, de = fig.data
    assert te.name.startswith("TE") and de.name.startswith("DE")
    assert fig.layout.boxmode == "group"
    x = np.asarray(te.x)
    ent_label, rand_label = list(dict.fromkeys(x))
    assert ent_label.startswith("entropy neurons") and rand_label.startswith("random neurons")
    exp = flagged_rows(neurons)
    np.testing.assert_allclose(np.asarray(te.y)[x == ent_label], exp["TE"])
    np.testing.assert_allclose(np.asarray(de.y)[x == ent_label], exp["DE"])
    rand_names = np.asarray(te.text)[x == rand_label]
    assert len(rand_names) == 50 and len(set(rand_names)) == 50
    assert not set(rand_names) & set(exp["name"])
    # seeded: same seed -> same sample, another seed -> another sample
    again = E.fig_total_vs_direct(neurons, n_random=50, seed=3)
    other = E.fig_total_vs_direct(neurons, n_random=50, seed=4)
    assert list(again.data[0].text) == list(te.text)
    assert list(other.data[0].text) != list(te.text)


def test_fig2c_uses_all_non_entropy_when_fewer_than_n_random(neurons):
    small = neurons.iloc[:20].assign(is_entropy_neuron=False)
    small.loc[small.index[:2], "is_entropy_neuron"] = True
    fig = E.fig_total_vs_direct(small, n_random=100)
    x = np.asarray(fig.data[0].x)
    assert (x == x[-1]).sum() == 18 and (x == x[0]).sum() == 2


# --------------------------------------------------------------------------- Fig. 2d


def test_fig2d_spectrum_and_entropy_cosines(neurons):
    sv, cos = make_spectrum(neurons)
    fig = E.fig_spectrum(sv, cos, neurons, K)
    check_common(fig, "Fig. 2d")
    spec = fig.data[0]
    np.testing.assert_allclose(spec.y, sv)
    assert spec.line.width >= 3
    lines = [t for t in fig.data[1:]]
    assert len(lines) == len(FLAGGED)
    assert all(t.yaxis == "y2" and t.line.width <= 1.5 for t in lines)
    # ordered by ln_share, largest first; values are |cos| of the right rows
    exp = flagged_rows(neurons).sort_values("ln_share", ascending=False)
    assert [t.name.split()[-1] for t in lines] == list(exp["name"])
    for t, pos in zip(lines, exp.index):
        np.testing.assert_allclose(t.y, np.abs(cos[pos]))
    assert fig.layout.yaxis2.side == "right" and fig.layout.yaxis2.overlaying == "y"
    (rect,) = fig.layout.shapes
    assert rect.x0 == D_MODEL - K - 0.5 and rect.x1 == D_MODEL - 0.5


def test_fig2d_caps_at_eight_neurons():
    many = make_neurons(flagged=tuple(range(0, 120, 10)))
    sv, cos = make_spectrum(many)
    fig = E.fig_spectrum(sv, cos, many, K)
    assert len(fig.data) == 1 + 8
    with pytest.raises(ValueError):
        E.fig_spectrum(sv, cos[:-1], many, K)


# --------------------------------------------------------------------------- Fig. 2e


def test_fig2e_colour_scale_and_red_outline(neurons):
    fig = E.fig_rho_vs_ln_share(neurons, K)
    check_common(fig, "Fig. 2e")
    red = trace(fig, E.ENTROPY_TRACE)
    exp = flagged_rows(neurons)
    np.testing.assert_allclose(red.x, exp["rho"])
    np.testing.assert_allclose(red.y, exp["ln_share"])
    np.testing.assert_allclose(red.marker.color, exp["abs_delta_entropy"])
    assert red.marker.line.color == E.ENTROPY_COLOR and red.marker.line.width >= 2
    assert list(red.text) == list(exp["name"])
    grey = trace(fig, E.OTHER_TRACE)
    assert grey.marker.coloraxis == red.marker.coloraxis == "coloraxis"
    assert fig.layout.coloraxis.colorbar.title.text
    assert f"k={K}" in fig.layout.title.text


# --------------------------------------------------------------------------- zero entropy neurons


def test_zero_entropy_neurons_still_render(no_entropy, tmp_path):
    sv, cos = make_spectrum(no_entropy)
    figs = [
        E.fig_entropy_vs_prediction(no_entropy),
        E.fig_norm_vs_logitvar(no_entropy),
        E.fig_total_vs_direct(no_entropy),
        E.fig_spectrum(sv, cos, no_entropy, K),
        E.fig_rho_vs_ln_share(no_entropy, K),
    ]
    for fig in figs:
        assert has_no_entropy_note(fig)
        for t in fig.data:
            if t.name == E.ENTROPY_TRACE:
                assert len(t.x) == 0
    assert len(figs[3].data) == 1  # spectrum only
    out = save_figure(figs[4], tmp_path, "empty")
    assert png_size(out["png"].read_bytes())[0] > 0


# --------------------------------------------------------------------------- PNG


def test_png_for_every_figure_is_fast(neurons):
    sv, cos = make_spectrum(neurons)
    figs = [
        E.fig_entropy_vs_prediction(neurons),
        E.fig_norm_vs_logitvar(neurons),
        E.fig_total_vs_direct(neurons),
        E.fig_spectrum(sv, cos, neurons, K),
        E.fig_rho_vs_ln_share(neurons, K),
    ]
    for fig in figs:
        t0 = time.perf_counter()
        data = figure_to_png(fig, scale=1)
        assert time.perf_counter() - t0 < 5
        assert png_size(data) == (900, 560)
