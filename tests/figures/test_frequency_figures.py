"""Figures for token frequency neurons (Fig. 3a/b/c) and their PNG export."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from confidence_neurons.figures import entropy as E
from confidence_neurons.figures import frequency as F
from tests.figures.pngcheck import png_size, save_figure

N = 300
FREQ = (5, 44, 120, 250)
ENT = (10, 120, 200)  # 120 is both: it belongs to the green trace only


def make_neurons(freq=FREQ, ent=ENT, n=N, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    is_freq = np.zeros(n, dtype=bool)
    is_freq[list(freq)] = True
    is_ent = np.zeros(n, dtype=bool)
    is_ent[list(ent)] = True
    te = rng.uniform(0.001, 0.02, n) + is_freq * 0.05
    de_freq = te * np.where(is_freq, 0.4, rng.uniform(0.8, 1.1, n))
    te[7], de_freq[7] = 1e-7, 0.01  # TE ~ 0 -> freq_share hugely negative
    return pd.DataFrame(
        {
            "layer": 23,
            "neuron": np.arange(n),
            "name": [f"23.{i}" for i in range(n)],
            "TE": te,
            "DE": te * 0.9,
            "DE_freq": de_freq,
            "freq_share": 1 - de_freq / te,
            "abs_delta_kl": rng.uniform(0, 0.02, n) + is_freq * 0.1 + is_ent * 0.2,
            "v_freq_cos": rng.uniform(-0.1, 0.1, n) - is_freq * 0.5,
            "is_token_frequency_neuron": is_freq,
            "is_entropy_neuron": is_ent,
        }
    )


@pytest.fixture(scope="module")
def neurons():
    return make_neurons()


def trace(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def check_common(fig: go.Figure, paper_fig: str):
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text.startswith(f"{paper_fig} analogue:")
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert fig.layout.template.layout.plot_bgcolor == "white"


def has_note(fig: go.Figure, text: str) -> bool:
    return any(a.text == text for a in fig.layout.annotations)


# --------------------------------------------------------------------------- Fig. 3a


def kl_data(n, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.1, 8, n)
    kl = 10 - h + rng.normal(0, 1.5, n)
    return h, kl


def title_r(fig) -> float:
    m = re.search(r"Pearson r = (-?\d+\.\d+)", fig.layout.title.text)
    assert m, fig.layout.title.text
    return float(m.group(1))


def test_fig3a_r_in_title_matches_corrcoef_and_subsamples():
    h, kl = kl_data(50_000)
    h[3], kl[9] = np.nan, np.inf  # dropped pairs
    fig = F.fig_kl_vs_entropy(h, kl)
    check_common(fig, "Fig. 3a")
    ok = np.isfinite(h) & np.isfinite(kl)
    r = np.corrcoef(h[ok], kl[ok])[0, 1]
    assert r < -0.5
    assert title_r(fig) == pytest.approx(r, abs=5e-4)
    assert f"n = {ok.sum():,} tokens" in fig.layout.title.text
    pts = fig.data[0]
    assert len(pts.x) == F.MAX_SCATTER_POINTS
    # subsample = real (entropy, kl) pairs, in input order, seeded
    lookup = dict(zip(h[ok], kl[ok]))
    assert all(lookup[x] == y for x, y in zip(pts.x[:500], pts.y[:500]))
    rows = [np.flatnonzero(h == x)[0] for x in pts.x[:200]]
    assert np.all(np.diff(rows) > 0)
    again = F.fig_kl_vs_entropy(h, kl)
    other = F.fig_kl_vs_entropy(h, kl, seed=1)
    np.testing.assert_array_equal(again.data[0].x, pts.x)
    assert not np.array_equal(other.data[0].x, pts.x)
    # binned means go down with entropy
    binned = trace(fig, F.KL_BINNED_TRACE)
    assert binned.y[0] > binned.y[-1]


def test_fig3a_small_input_keeps_all_points_and_positive_r():
    h = np.array([1.0, 2.0, 3.0, 4.0, 5.5])
    kl = np.array([0.5, 0.7, 1.9, 2.0, 2.2])
    fig = F.fig_kl_vs_entropy(h, kl)
    np.testing.assert_allclose(fig.data[0].x, h)
    assert title_r(fig) == pytest.approx(np.corrcoef(h, kl)[0, 1], abs=5e-4)
    with pytest.raises(ValueError):
        F.fig_kl_vs_entropy(h, kl[:-1])
    empty = F.fig_kl_vs_entropy(np.array([np.nan]), np.array([1.0]))
    assert "r = n/a" in empty.layout.title.text


# --------------------------------------------------------------------------- Fig. 3b


def test_fig3b_green_trace_is_exactly_the_frequency_neurons(neurons):
    fig = F.fig_freq_share_vs_dkl(neurons)
    check_common(fig, "Fig. 3b")
    green = trace(fig, F.FREQ_TRACE)
    exp = neurons[neurons["is_token_frequency_neuron"]]
    assert green.marker.color == F.FREQ_COLOR
    assert list(green.text) == list(exp["name"]) and "text" in green.mode
    np.testing.assert_allclose(green.x, exp["freq_share"])
    np.testing.assert_allclose(green.y, exp["abs_delta_kl"])
    red = trace(fig, E.ENTROPY_TRACE)
    assert red.marker.color == E.ENTROPY_COLOR
    assert list(red.text) == ["23.10", "23.200"]  # 23.120 is green only
    grey = trace(fig, E.OTHER_TRACE)
    assert grey.marker.color == E.OTHER_COLOR
    assert len(grey.x) == N - len(set(FREQ) | set(ENT))
    all_names = list(grey.customdata[:, 0]) + list(red.customdata[:, 0]) + list(green.customdata[:, 0])
    assert sorted(all_names) == sorted(neurons["name"])
    # hover: name, TE, DE_freq, freq_share, v_freq_cos
    for s in ("customdata[0]", "TE", "DE_freq", "DE_freq/TE", "v_freq"):
        assert s in green.hovertemplate
    np.testing.assert_allclose(green.customdata[:, 1].astype(float), exp["TE"])
    np.testing.assert_allclose(green.customdata[:, 2].astype(float), exp["DE_freq"])
    np.testing.assert_allclose(green.customdata[:, 3].astype(float), exp["freq_share"])
    np.testing.assert_allclose(green.customdata[:, 4].astype(float), exp["v_freq_cos"])
    # the TE~0 outlier does not stretch the axis; a note says it is off-range
    lo, hi = fig.layout.xaxis.range
    others = neurons["freq_share"].drop(index=7)
    assert neurons["freq_share"][7] < lo <= others.min() and hi >= others.max()
    assert "(1 neuron(s) with 1 − DE_freq/TE <" in fig.layout.xaxis.title.text
    assert not F.fig_freq_share_vs_dkl(neurons.drop(index=7)).layout.xaxis.range  # no outlier: autorange
    assert not has_note(fig, F.NO_FREQ_TEXT)


def test_fig3b_without_optional_columns_and_without_flags(neurons):
    bare = neurons.drop(columns=["is_entropy_neuron", "v_freq_cos"]).assign(is_token_frequency_neuron=False)
    fig = F.fig_freq_share_vs_dkl(bare)
    assert has_note(fig, F.NO_FREQ_TEXT)
    assert len(trace(fig, F.FREQ_TRACE).x) == 0 and len(trace(fig, E.ENTROPY_TRACE).x) == 0
    assert np.isnan(trace(fig, E.OTHER_TRACE).customdata[:, 4].astype(float)).all()
    with pytest.raises(KeyError):
        F.fig_freq_share_vs_dkl(neurons.drop(columns=["abs_delta_kl"]))


# --------------------------------------------------------------------------- Fig. 3c


def test_fig3c_boxes_frequency_vs_seeded_random(neurons):
    fig = F.fig_total_vs_freq_direct(neurons, n_random=40, seed=2)
    check_common(fig, "Fig. 3c")
    assert [t.type for t in fig.data] == ["box", "box"]
    te, de = fig.data
    assert te.name.startswith("TE") and de.name.startswith("DE_freq")
    x = np.asarray(te.x)
    grp, rnd = list(dict.fromkeys(x))
    assert grp == f"token frequency neurons (n={len(FREQ)})" and rnd == "random neurons (n=40)"
    exp = neurons[neurons["is_token_frequency_neuron"]]
    np.testing.assert_allclose(np.asarray(te.y)[x == grp], exp["TE"])
    np.testing.assert_allclose(np.asarray(de.y)[x == grp], exp["DE_freq"])
    rand_names = np.asarray(te.text)[x == rnd]
    assert len(set(rand_names)) == 40 and not set(rand_names) & set(exp["name"])
    again = F.fig_total_vs_freq_direct(neurons, n_random=40, seed=2)
    assert list(again.data[0].text) == list(te.text)
    # Fig. 2c and Fig. 3c share one implementation: same sample for the same mask and seed
    as_entropy = neurons.assign(is_entropy_neuron=neurons["is_token_frequency_neuron"])
    fig2c = E.fig_total_vs_direct(as_entropy, n_random=40, seed=2)
    assert list(fig2c.data[0].text) == list(te.text)
    none = F.fig_total_vs_freq_direct(neurons.assign(is_token_frequency_neuron=False))
    assert has_note(none, F.NO_FREQ_TEXT)
    with pytest.raises(ValueError):
        F.fig_total_vs_freq_direct(neurons, n_random=-1)


# --------------------------------------------------------------------------- export


def test_every_frequency_figure_exports_to_png(neurons, tmp_path):
    h, kl = kl_data(30_000)
    figs = {
        "fig3a": F.fig_kl_vs_entropy(h, kl),
        "fig3b": F.fig_freq_share_vs_dkl(neurons),
        "fig3c": F.fig_total_vs_freq_direct(neurons),
        "fig3b_empty": F.fig_freq_share_vs_dkl(neurons.assign(is_token_frequency_neuron=False)),
    }
    for stem, fig in figs.items():
        out = save_figure(fig, tmp_path, stem, png_scale=1)
        assert png_size(out["png"].read_bytes()) == (900, 560)
        assert out["html"].stat().st_size > 1000
