"""Figures for the induction case study (Fig. 5a/b/c, 9, 10, 11, 12, 13, 14) and their PNG export.

The inputs come from the real producers (``confidence_neurons.induction``) run on a tiny GPT-2
with duplicated random tokens, so the figures are checked against the producers' actual formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.figures import induction as I
from confidence_neurons.figures.style import ENTROPY_COLOR, ENTROPY_TRACE, FREQ_COLOR, OTHER_TRACE
from confidence_neurons.induction.heads import (
    baseline_combinations,
    bos_ablation_hooks,
    choose_heads,
    direct_feature_attribution,
    head_combinations,
    mean_bos_attention,
    neuron_activations_under,
    prefix_matching_scores,
)
from confidence_neurons.induction.neurons import (
    activation_change,
    acts_by_position,
    clipped_ablation_curves,
    curves_from_cache,
    natural_induction_effects,
    random_neuron_draws,
)
from confidence_neurons.induction.sequences import corrupt_first_copy
from confidence_neurons.models.final_layer import final_layer
from tests.figures.pngcheck import png_size, save_figure
from tests.tiny import BOS_ID, load_tiny, random_tokens

HALF = 8
N_SEQS = 5
START2 = 1 + HALF  # BOS + first copy
NEURONS = [3, 17]
NAMES = ["1.3", "1.17"]
NGRAM = 6


@dataclass
class Data:
    curves: object
    clipped: dict
    change: np.ndarray
    prefix: np.ndarray
    bos: np.ndarray
    induction: list
    baseline: list
    heads_df: pd.DataFrame
    dfa_labels: list
    dfa_diff: np.ndarray
    natural: pd.DataFrame
    d_mlp: int


def head_set_label(hs) -> str:
    return "+".join(I.head_label(h) for h in hs)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    model = load_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))
    layer = final_layer(model)
    body = random_tokens(N_SEQS, HALF + 1, seed=4)[:, 1:]
    tokens = torch.cat([torch.full((N_SEQS, 1), BOS_ID), body, body], dim=1)
    cache = run_forward(model, layer, tokens, progress=False)
    curves = curves_from_cache(layer, cache, NEURONS)
    draws = random_neuron_draws(layer.d_mlp, 3, 2, exclude=NEURONS, seed=1)
    clipped = clipped_ablation_curves(layer, cache, tuple(tokens.shape), NEURONS, half_len=HALF, random_neurons=draws)
    change = activation_change(acts_by_position(cache), HALF)

    prefix = prefix_matching_scores(model, tokens)
    bos = mean_bos_attention(model, tokens)
    induction, baseline = choose_heads(prefix, bos, n_induction=2, n_baseline=3, min_bos=-1.0, max_prefix=2.0)

    rows = []
    sets = [("none", "clean", [])]
    sets += [(head_set_label(hs), "induction", bos_ablation_hooks(hs)) for hs in head_combinations(induction, 2)]
    sets += [
        (head_set_label(hs), "baseline", bos_ablation_hooks(hs))
        for hs in baseline_combinations(baseline, n_pairs=1, n_triples=1)
    ]
    for label, kind, hooks in sets:
        acts = neuron_activations_under(model, tokens, NEURONS, hooks).numpy()  # (n_neurons, seq_len)
        for name, row in zip(NAMES, acts):
            rows += [
                {"neuron": name, "head_set": label, "kind": kind, "position": p, "activation": float(a)}
                for p, a in enumerate(row)
            ]
    heads_df = pd.DataFrame(rows)

    corrupted = corrupt_first_copy(tokens, random_tokens(N_SEQS, HALF + 1, seed=9)[:, 1:])
    labels, clean_dfa = direct_feature_attribution(model, tokens, NEURONS[0])
    _, corr_dfa = direct_feature_attribution(model, corrupted, NEURONS[0])
    diff = (clean_dfa - corr_dfa)[:, START2:].mean(1).numpy()

    # natural induction: a distinct 6-gram planted twice in random text
    nat = random_tokens(4, 24, seed=7)
    gram = torch.arange(10, 10 + NGRAM)
    nat[:, 2 : 2 + NGRAM] = gram
    nat[:, 12 : 12 + NGRAM] = gram
    nat_cache = run_forward(model, layer, nat, progress=False)
    natural = natural_induction_effects(
        layer, nat_cache, [(2, 12)] * 4, NEURONS, reference_mean=nat_cache.acts.mean(0), n=NGRAM
    )
    return Data(
        curves,
        clipped,
        change,
        prefix.numpy(),
        bos.numpy(),
        induction,
        baseline,
        heads_df,
        labels,
        diff,
        natural,
        layer.d_mlp,
    )


def trace(fig: go.Figure, name: str):
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def check_common(fig: go.Figure, prefix: str):
    assert isinstance(fig, go.Figure)
    assert fig.layout.title.text.startswith(prefix), fig.layout.title.text
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert fig.layout.template.layout.plot_bgcolor == "white"


def has_note(fig: go.Figure, text: str = I.NO_DATA_TEXT) -> bool:
    return any(a.text == text for a in fig.layout.annotations)


def shade_x0(fig: go.Figure) -> list[float]:
    return [s.x0 for s in fig.layout.shapes if s.type == "rect"]


def vline_x(fig: go.Figure) -> list[float]:
    return [s.x0 for s in fig.layout.shapes if s.type == "line" and s.xref == "x" and s.x0 == s.x1]


# --------------------------------------------------------------------------- helpers


def test_second_copy_start_with_and_without_bos():
    assert I.second_copy_start(1 + 2 * HALF, HALF) == 1 + HALF
    assert I.second_copy_start(2 * HALF, HALF) == HALF
    with pytest.raises(ValueError, match="two copies"):
        I.second_copy_start(2 * HALF + 3, HALF)


# --------------------------------------------------------------------------- Fig. 5a / 10a


def test_fig5a_curves(data: Data):
    fig = I.fig_induction_curves(data.curves, NAMES, HALF)
    check_common(fig, "Fig. 5a analogue:")
    for k, name in enumerate(NAMES):
        t = trace(fig, name)
        assert t.line.dash == "dot" and t.yaxis in (None, "y")
        assert t.line.color == I.ENTROPY_PALETTE[k]
        np.testing.assert_allclose(t.y, data.curves.activation_mean[k])
        bands = [b for b in fig.data if b.name == f"{name} ± SE"]
        assert len(bands) == 2 and all(b.showlegend is False for b in bands)
        mean, se = data.curves.activation_mean[k][0], data.curves.activation_se[k][0]
        np.testing.assert_allclose(sorted([b.y[0] for b in bands]), [mean - se, mean + se])
    ent, loss = trace(fig, "entropy"), trace(fig, "loss")
    assert ent.yaxis == loss.yaxis == "y2" and ent.line.dash is None
    np.testing.assert_allclose(ent.y, data.curves.entropy_mean)
    np.testing.assert_allclose(loss.y, data.curves.loss_mean)
    assert fig.layout.yaxis2.overlaying == "y"
    assert shade_x0(fig) == [START2 - 0.5]
    assert ENTROPY_COLOR == I.ENTROPY_PALETTE[0]


def test_fig10a_frequency_kind_is_green_and_names_must_match(data: Data):
    fig = I.fig_induction_curves(data.curves, NAMES, HALF, kind="frequency")
    check_common(fig, "Fig. 10a analogue:")
    assert trace(fig, NAMES[0]).line.color == FREQ_COLOR
    with pytest.raises(ValueError, match="names"):
        I.fig_induction_curves(data.curves, NAMES[:1], HALF)
    with pytest.raises(ValueError, match="two copies"):
        I.fig_induction_curves(data.curves, NAMES, HALF + 2)


# --------------------------------------------------------------------------- Fig. 5b / 10b


def test_fig5b_clipped_ablation_lines_and_random_baseline(data: Data):
    pp, summary = data.clipped["per_position"], data.clipped["summary"]
    fig = I.fig_clipped_ablation(pp, summary, HALF, names={3: "1.3"})
    check_common(fig, "Fig. 5b analogue:")
    second = pp[pp["copy"] == "second"]
    for neuron, label in ((3, "1.3"), (17, "neuron 17")):
        overall = float(summary.query("group == 'selected' and neuron == @neuron")["rel_delta_entropy_pct"].iloc[0])
        t = trace(fig, f"{label} (overall {overall:+.3g}%)")
        rows = second[(second["group"] == "selected") & (second["neuron"] == neuron)].sort_values("position")
        np.testing.assert_array_equal(t.x, rows["position"].to_numpy(float))
        np.testing.assert_allclose(t.y, rows["rel_delta_entropy_pct"])
        assert min(t.x) == START2
    rand = second[second["group"] == "random"]
    mean = rand.groupby("position")["rel_delta_entropy_pct"].mean().sort_index()
    t = trace(fig, f"{I.RANDOM_TRACE}: mean ± SD (n=6)")
    np.testing.assert_allclose(t.y, mean.to_numpy())
    assert t.line.color == I.RANDOM_COLOR
    assert vline_x(fig) == [START2 - 0.5]


def test_fig5b_empty_and_missing_columns(data: Data):
    pp, summary = data.clipped["per_position"], data.clipped["summary"]
    fig = I.fig_clipped_ablation(pp.iloc[0:0], summary.iloc[0:0], HALF)
    assert has_note(fig) and len(fig.data) == 0
    with pytest.raises(KeyError, match="rel_delta_entropy_pct"):
        I.fig_clipped_ablation(pp.drop(columns="rel_delta_entropy_pct"), summary, HALF)


def test_clipped_summary_boxes(data: Data):
    summary = data.clipped["summary"]
    fig = I.fig_clipped_summary(summary)
    check_common(fig, "Fig. 5b analogue:")
    assert [t.type for t in fig.data] == ["box", "box"]
    h, loss = trace(fig, "ΔH (entropy)"), trace(fig, "Δ loss")
    assert list(h.x).count("chosen entropy neurons (n=2)") == 2
    assert list(h.x).count(f"{I.RANDOM_TRACE} (n=6)") == 6
    sel = summary[summary["group"] == "selected"]
    np.testing.assert_allclose(h.y[:2], sel["delta_entropy"])
    np.testing.assert_allclose(loss.y[:2], sel["delta_loss"])
    assert has_note(I.fig_clipped_summary(summary.iloc[0:0]))


# --------------------------------------------------------------------------- Fig. 11


def test_fig11_red_trace_holds_exactly_the_entropy_neurons(data: Data):
    n = data.d_mlp
    rng = np.random.default_rng(0)
    is_ent = np.zeros(n, dtype=bool)
    flagged = [1, 5, 40, 77, 100]
    is_ent[flagged] = True
    rho = rng.uniform(0, 0.2, n) + is_ent * 0.7
    names = [f"1.{i}" for i in range(n)]
    fig = I.fig_activation_change(data.change, rho, is_ent, names, label_top=3)
    check_common(fig, "Fig. 11 analogue:")
    red, grey = trace(fig, ENTROPY_TRACE), trace(fig, OTHER_TRACE)
    assert red.marker.color == ENTROPY_COLOR
    assert list(red.x) == flagged
    np.testing.assert_allclose(red.y, data.change[flagged])
    assert len(grey.x) == n - len(flagged) and not set(grey.x) & set(flagged)
    sizes = np.asarray(red.marker.size)
    assert np.all(np.diff(sizes[np.argsort(rho[flagged])]) >= 0)  # larger rho, larger marker
    labelled = [t for t in red.text if t]
    top = sorted(flagged, key=lambda i: -abs(data.change[i]))[:3]
    assert sorted(labelled) == sorted(f"{names[i]} (ρ={rho[i]:.2f})" for i in top)


def test_fig11_natural_setting_and_no_entropy_neurons(data: Data):
    n = data.d_mlp
    fig = I.fig_activation_change(
        data.change, np.zeros(n), np.zeros(n, bool), [str(i) for i in range(n)], setting="natural"
    )
    assert "natural" in fig.layout.title.text
    assert len(trace(fig, ENTROPY_TRACE).x) == 0
    assert has_note(fig, "no entropy neurons under the current rule")
    with pytest.raises(ValueError, match="one entry per neuron"):
        I.fig_activation_change(data.change, np.zeros(3), np.zeros(n, bool), [""] * n)


# --------------------------------------------------------------------------- heads


def test_head_scores_highlight_and_label(data: Data):
    fig = I.fig_head_scores(data.prefix, data.bos, data.induction, data.baseline)
    assert fig.layout.title.text.startswith("Sec. 6.2 analogue:")
    ind, base = trace(fig, I.INDUCTION_HEADS_TRACE), trace(fig, I.BASELINE_HEADS_TRACE)
    assert list(ind.text) == [I.head_label(h) for h in data.induction]
    np.testing.assert_allclose(ind.y, [data.prefix[h] for h in data.induction])
    np.testing.assert_allclose(ind.x, [data.bos[h] for h in data.induction])
    assert list(base.text) == [I.head_label(h) for h in data.baseline]
    n_heads = data.prefix.size
    assert len(trace(fig, "other heads").x) == n_heads - len(data.induction) - len(data.baseline)
    assert I.head_label((5, 1)) == "L5H1"
    with pytest.raises(ValueError, match="outside"):
        I.fig_head_scores(data.prefix, data.bos, [(99, 0)], [])


def test_fig5c_head_ablation_lines(data: Data):
    df = data.heads_df
    fig = I.fig_head_ablation(df, NAMES[0], HALF)
    check_common(fig, "BOS ablation (Fig. 5c analogue):")
    clean = trace(fig, I.CLEAN_TRACE)
    assert clean.line.color == I.CLEAN_COLOR == "#000000"
    rows = df[(df["neuron"] == NAMES[0]) & (df["kind"] == "clean")].sort_values("position")
    np.testing.assert_allclose(clean.y, rows["activation"])
    assert fig.data[-1].name == I.CLEAN_TRACE  # drawn on top
    ind_sets = list(pd.unique(df[df["kind"] == "induction"]["head_set"]))
    ind_traces = [t for t in fig.data if t.name and t.name.startswith("induction: ")]
    assert [t.name for t in ind_traces] == [f"induction: {hs}" for hs in ind_sets]
    assert all(t.line.color not in (I.BASELINE_COLOR, I.CLEAN_COLOR) for t in ind_traces)
    base_sets = pd.unique(df[df["kind"] == "baseline"]["head_set"])
    base_traces = [t for t in fig.data if t.name and t.name.startswith("baseline: ")]
    assert len(base_traces) == len(base_sets) and all(t.line.color == I.BASELINE_COLOR for t in base_traces)
    assert all(t.showlegend is False for t in base_traces)
    assert shade_x0(fig) == [START2 - 0.5]

    fig13 = I.fig_head_ablation(df, NAMES[1], HALF, title_kind="Mean attention-output ablation (Fig. 13 analogue)")
    assert fig13.layout.title.text.startswith("Mean attention-output ablation (Fig. 13 analogue):")
    rows = df[(df["neuron"] == NAMES[1]) & (df["kind"] == "clean")].sort_values("position")
    np.testing.assert_allclose(trace(fig13, I.CLEAN_TRACE).y, rows["activation"])


def test_head_ablation_empty_and_bad_kind(data: Data):
    df = data.heads_df
    assert has_note(I.fig_head_ablation(df, "no such neuron", HALF))
    with pytest.raises(ValueError, match="unknown kind"):
        I.fig_head_ablation(df.assign(kind="other"), NAMES[0], HALF)


def test_head_ablation_summary(data: Data):
    df = data.heads_df
    fig = I.fig_head_ablation_summary(df, NAMES, HALF)
    assert fig.layout.title.text.startswith("BOS ablation (Fig. 12 analogue):")
    clean = trace(fig, I.CLEAN_TRACE)
    for k, name in enumerate(NAMES):
        rows = df[(df["neuron"] == name) & (df["kind"] == "clean") & (df["position"] >= START2)]
        assert clean.y[3 * k] == pytest.approx(rows["activation"].mean())
        assert clean.x[3 * k] == pytest.approx(k - 0.35)
    assert list(fig.layout.xaxis.ticktext) == NAMES
    ind_sets = list(pd.unique(df[df["kind"] == "induction"]["head_set"]))
    assert [t.name for t in fig.data if t.name.startswith("induction: ")] == [f"induction: {hs}" for hs in ind_sets]
    with pytest.raises(KeyError, match="neuron"):
        I.fig_head_ablation_summary(df.drop(columns="neuron"), NAMES, HALF)


# --------------------------------------------------------------------------- Fig. 14


def test_fig14_dfa_orders_heads_before_mlps(data: Data):
    labels = data.dfa_labels
    prefix_by_label = {I.head_label(h): float(data.prefix[h]) for h in np.ndindex(data.prefix.shape)}
    # shuffle the producer's order: the figure must restore heads -> MLPs -> rest
    perm = np.random.default_rng(0).permutation(len(labels))
    fig = I.fig_dfa([labels[i] for i in perm], data.dfa_diff[perm], prefix_by_label, NAMES[0])
    check_common(fig, "Fig. 14 analogue:")
    heads = trace(fig, "attention heads (colour: prefix-matching score)")
    mlps, rest = trace(fig, "MLPs"), trace(fig, "embeddings and biases")
    head_labels = [lab for lab in labels if lab.startswith("L")]
    assert list(heads.customdata) == head_labels  # the producer's (layer, head) order
    assert max(heads.x) < min(mlps.x) and max(mlps.x) < min(rest.x)
    assert list(rest.customdata) == ["embed", "pos_embed", "bias"]  # embeddings first, bias last
    lookup = dict(zip(labels, data.dfa_diff))
    np.testing.assert_allclose(heads.y, [lookup[lab] for lab in head_labels])
    np.testing.assert_allclose(heads.marker.color, [prefix_by_label[lab] for lab in head_labels])
    assert heads.marker.coloraxis == "coloraxis"
    dotted = [s for s in fig.layout.shapes if s.type == "line" and s.line.dash == "dot"]
    assert len(dotted) == 1 and dotted[0].x0 == len(head_labels) - 0.5
    texts = [t for tr in (heads, mlps, rest) for t in tr.text if t]
    assert len(texts) == 6
    with pytest.raises(ValueError, match="1-D"):
        I.fig_dfa(labels, np.zeros((len(labels), 3)), prefix_by_label, NAMES[0])
    assert has_note(I.fig_dfa([], np.zeros(0), {}, NAMES[0]))


# --------------------------------------------------------------------------- Fig. 9


def test_fig9_natural_induction(data: Data):
    eff = data.natural
    fig = I.fig_natural_induction(eff, NAMES)
    check_common(fig, "Fig. 9a analogue:")
    assert list(fig.layout.xaxis.ticktext) == [f"A{k}" for k in range(NGRAM)] + ["B"] + [
        f"A{k}" for k in range(NGRAM)
    ] + ["X"]
    xs, _, _ = I.natural_x_layout(NGRAM)
    for name, neuron in zip(NAMES, NEURONS):
        t = trace(fig, name)
        rows = eff[eff["neuron"] == neuron]
        for occ, label, off in (("first", "A0", 0), ("first", "B", NGRAM), ("second", "X", NGRAM)):
            want = rows[(rows["occurrence"] == occ) & (rows["label"] == label)]["activation"].mean()
            i = list(t.x).index(xs[(occ, off)])
            assert t.y[i] == pytest.approx(want)
        assert np.isnan(t.y[NGRAM + 1])  # break between the occurrences
    assert shade_x0(fig) == [NGRAM + 1.5]

    fig_b = I.fig_natural_induction_entropy(eff, NAMES)
    check_common(fig_b, "Fig. 9b analogue:")
    rows = eff[(eff["neuron"] == NEURONS[0]) & (eff["occurrence"] == "second") & (eff["label"] == "X")]
    t = trace(fig_b, NAMES[0])
    i = list(t.x).index(xs[("second", NGRAM)])
    assert t.y[i] == pytest.approx(100 * rows["delta_entropy"].mean() / rows["entropy"].mean())
    t_abs = trace(I.fig_natural_induction_entropy(eff, NAMES, relative=False), NAMES[0])
    assert t_abs.y[i] == pytest.approx(rows["delta_entropy"].mean())
    with pytest.raises(ValueError, match="names"):
        I.fig_natural_induction(eff, NAMES[:1])
    assert has_note(I.fig_natural_induction(eff.iloc[0:0], []))


# --------------------------------------------------------------------------- export


def all_figures(data: Data) -> dict[str, go.Figure]:
    pp, summary = data.clipped["per_position"], data.clipped["summary"]
    n = data.d_mlp
    is_ent = np.zeros(n, dtype=bool)
    is_ent[[1, 5, 40]] = True
    prefix_by_label = {I.head_label(h): float(data.prefix[h]) for h in np.ndindex(data.prefix.shape)}
    return {
        "fig5a": I.fig_induction_curves(data.curves, NAMES, HALF),
        "fig10a": I.fig_induction_curves(data.curves, NAMES, HALF, kind="frequency"),
        "fig5b": I.fig_clipped_ablation(pp, summary, HALF),
        "fig5b_summary": I.fig_clipped_summary(summary),
        "fig11": I.fig_activation_change(data.change, np.linspace(0, 1, n), is_ent, [str(i) for i in range(n)]),
        "heads": I.fig_head_scores(data.prefix, data.bos, data.induction, data.baseline),
        "fig5c": I.fig_head_ablation(data.heads_df, NAMES[0], HALF),
        "fig12_summary": I.fig_head_ablation_summary(data.heads_df, NAMES, HALF),
        "fig14": I.fig_dfa(data.dfa_labels, data.dfa_diff, prefix_by_label, NAMES[0]),
        "fig9a": I.fig_natural_induction(data.natural, NAMES),
        "fig9b": I.fig_natural_induction_entropy(data.natural, NAMES),
        "empty5b": I.fig_clipped_ablation(pp.iloc[0:0], summary.iloc[0:0], HALF),
        "empty5c": I.fig_head_ablation(data.heads_df.iloc[0:0], NAMES[0], HALF),
        "empty14": I.fig_dfa([], np.zeros(0), {}, NAMES[0]),
        "empty9": I.fig_natural_induction_entropy(data.natural.iloc[0:0], []),
    }


def test_every_induction_figure_exports_to_png(data: Data, tmp_path):
    for stem, fig in all_figures(data).items():
        out = save_figure(fig, tmp_path, stem, png_scale=1.0)
        assert png_size(out["png"].read_bytes()) == (900, 560), stem
        assert out["html"].stat().st_size > 0
