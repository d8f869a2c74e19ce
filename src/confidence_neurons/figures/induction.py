"""Plotly figures for the induction case study (Stolfo et al. 2024, Sec. 6 Fig. 5; App. H Fig. 9-11; App. I Fig. 12-14).

Like the other figure modules every function is pure: plain numpy / pandas (or the
:class:`~confidence_neurons.induction.neurons.PositionCurves` dataclass) in,
:class:`plotly.graph_objects.Figure` out, no I/O (save with
:func:`confidence_neurons.figures.export.save_figure`).  Only the Plotly subset that
the PNG converter draws is used: scatter traces (lines, markers, text), box traces,
a secondary y axis, ``rect`` / ``line`` shapes and annotations; bars are drawn as
"lollipops" (a stem line and a marker).

Positions and the second copy
-----------------------------
A synthetic induction sequence is ``[BOS] t_1..t_T t_1..t_T`` (T = ``half_len``), so
with ``seq_len`` tokens the first copy starts at ``offset = seq_len - 2T`` (1 with a
BOS token, 0 without) and the second copy at ``offset + T``.  Per-position data of
the clean forward cache (``PositionCurves``, ``clipped_ablation_curves``) hold
``P = seq_len - 1`` positions (position p predicts token p + 1); head-ablation
activations (``neuron_activations_under``) hold all ``seq_len`` positions.  Every
per-position figure shades the second copy (:data:`SECOND_COPY_FILL`) or, where only
the second copy is drawn, marks its start with a dotted vertical line.

Conventions
-----------
* ``plotly_white`` template; titles name the paper figure (``"Fig. 5a analogue: ..."``);
* neuron lines use :data:`ENTROPY_PALETTE` (red first) for entropy neurons and
  :data:`FREQ_PALETTE` (green first) for token frequency neurons (``kind=``);
* standard errors are drawn as thin, faint lines at mean ± SE (not in the legend);
* empty inputs give a figure carrying the annotation :data:`NO_DATA_TEXT`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.entropy import (
    ENTROPY_COLOR,
    ENTROPY_TRACE,
    OTHER_COLOR,
    OTHER_TRACE,
    _base_layout,
    _floats,
    _label_positions,
    _note,
)
from confidence_neurons.figures.frequency import FREQ_COLOR

__all__ = [
    "BASELINE_COLOR",
    "BASELINE_HEADS_TRACE",
    "CLEAN_COLOR",
    "CLEAN_TRACE",
    "ENTROPY_PALETTE",
    "FREQ_PALETTE",
    "INDUCTION_HEADS_TRACE",
    "INDUCTION_PALETTE",
    "NO_DATA_TEXT",
    "RANDOM_TRACE",
    "SECOND_COPY_FILL",
    "fig_activation_change",
    "fig_clipped_ablation",
    "fig_clipped_summary",
    "fig_dfa",
    "fig_head_ablation",
    "fig_head_ablation_summary",
    "fig_head_scores",
    "fig_induction_curves",
    "fig_natural_induction",
    "fig_natural_induction_entropy",
    "head_label",
    "natural_x_layout",
    "second_copy_start",
]

NeuronKind = Literal["entropy", "frequency"]

NO_DATA_TEXT = "no data to show"
SECOND_COPY_FILL = "rgba(31, 119, 180, 0.08)"
CLEAN_COLOR = "#000000"
BASELINE_COLOR = "#9e9e9e"
RANDOM_COLOR = "#7f7f7f"
H_COLOR = "#1f3a93"  # entropy of the output (navy)
LOSS_COLOR = "#111111"  # loss (near black)
MLP_COLOR = "#ff7f0e"
MISC_COLOR = "#7f7f7f"
CLEAN_TRACE = "clean"
RANDOM_TRACE = "random neurons"
INDUCTION_HEADS_TRACE = "induction heads"
BASELINE_HEADS_TRACE = "baseline heads"
INDUCTION_HEAD_COLOR = "#9467bd"
ENTROPY_PALETTE = ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#7f0000", "#bcbd22", "#ff9896", "#9467bd")
FREQ_PALETTE = ("#2ca02c", "#17becf", "#006400", "#bcbd22", "#98df8a", "#9467bd", "#8c564b", "#e377c2")
INDUCTION_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
_ZERO_LINE = {"color": "rgba(60,60,60,0.6)", "width": 1.2, "dash": "dash"}
_START_LINE = {"color": "rgba(31,119,180,0.9)", "width": 1.5, "dash": "dot"}
_BAND_OPACITY = 0.35
_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
_MLP_RE = re.compile(r"^mlp(\d+)$")


# --------------------------------------------------------------------------- helpers


def head_label(head: Sequence[int]) -> str:
    """``(5, 1)`` -> ``"L5H1"``."""
    layer, h = head
    return f"L{int(layer)}H{int(h)}"


def second_copy_start(seq_len: int, half_len: int) -> int:
    """Token index where the second copy starts in a sequence of ``seq_len`` tokens (BOS counted)."""
    if half_len < 1:
        raise ValueError(f"half_len must be >= 1, got {half_len}")
    offset = int(seq_len) - 2 * int(half_len)
    if offset not in (0, 1):
        raise ValueError(f"a sequence of {seq_len} tokens is not two copies of {half_len} tokens "
                         "(with or without a BOS token); pass the half_len the sequences were built with")
    return offset + int(half_len)


def _palette(kind: str) -> tuple[str, ...]:
    if kind not in ("entropy", "frequency"):
        raise ValueError(f"kind must be 'entropy' or 'frequency', got {kind!r}")
    return ENTROPY_PALETTE if kind == "entropy" else FREQ_PALETTE


def _check(df: pd.DataFrame, cols: Sequence[str], func: str, arg: str) -> None:
    missing = sorted(set(cols) - set(df.columns))
    if missing:
        raise KeyError(f"{func}: `{arg}` lacks column(s) {missing}")


def _shade_from(fig: go.Figure, x0: float, x1: float, label: str = "second copy") -> None:
    """Shade x0..x1 (data x, full height) and label it at the top."""
    fig.add_shape(type="rect", xref="x", yref="paper", x0=x0, x1=x1, y0=0, y1=1,
                  fillcolor=SECOND_COPY_FILL, line={"width": 0}, layer="below")
    fig.add_annotation(text=label, xref="x", yref="paper", x=x0, y=1.0, xanchor="left", yanchor="bottom",
                       showarrow=False, font={"size": 11, "color": "#1f77b4"})


def _start_line(fig: go.Figure, x: float, label: str = "second copy starts") -> None:
    fig.add_shape(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=_START_LINE)
    fig.add_annotation(text=label, xref="x", yref="paper", x=x, y=1.0, xanchor="left", yanchor="bottom",
                       showarrow=False, font={"size": 11, "color": "#1f77b4"})


def _zero_line(fig: go.Figure) -> None:
    fig.add_shape(type="line", xref="paper", yref="y", x0=0, x1=1, y0=0, y1=0, line=_ZERO_LINE)


def _band(x: np.ndarray, mean: np.ndarray, se: np.ndarray, color: str, group: str, yaxis: str = "y"
          ) -> list[go.Scatter]:
    """Two faint lines at mean ± SE (nothing where SE is all NaN, e.g. a single sequence)."""
    se = np.asarray(se, dtype=float)
    if not np.isfinite(se).any():
        return []
    return [go.Scatter(x=x, y=mean + sign * se, mode="lines", name=f"{group} ± SE", legendgroup=group,
                       showlegend=False, opacity=_BAND_OPACITY, line={"color": color, "width": 1},
                       yaxis=yaxis, hoverinfo="skip")
            for sign in (1.0, -1.0)]


def _empty(fig: go.Figure, text: str = NO_DATA_TEXT) -> go.Figure:
    _note(fig, text)
    return fig


def _neuron_label(names: Mapping[int, str] | None, neuron: int) -> str:
    if names is not None and int(neuron) in names:
        return str(names[int(neuron)])
    return f"neuron {int(neuron)}"


def _copy_title(kind: str, a: str, b: str) -> str:
    return a if kind == "entropy" else b


# --------------------------------------------------------------------------- Fig. 5a / 10a


def fig_induction_curves(curves, names: Sequence[str], half_len: int, *, kind: NeuronKind = "entropy"
                         ) -> go.Figure:
    """Fig. 5a (``kind="entropy"``) / Fig. 10a (``kind="frequency"``): the clean pass by position.

    ``curves`` is a :class:`~confidence_neurons.induction.neurons.PositionCurves`;
    ``names[k]`` labels ``curves.neurons[k]`` (row k of ``activation_mean``).  Each
    neuron's mean activation is a dotted line on the left axis; the mean entropy (navy)
    and loss (black) of the next-token distribution are solid lines on the right
    axis (nats).  Faint lines mark mean ± SE over sequences.  The second copy
    (positions >= offset + ``half_len``) is shaded.
    """
    palette = _palette(kind)
    names = [str(n) for n in names]
    act_mean = np.atleast_2d(np.asarray(curves.activation_mean, dtype=float))
    act_se = np.atleast_2d(np.asarray(curves.activation_se, dtype=float))
    if len(names) != len(curves.neurons) or act_mean.shape[0] != len(names):
        raise ValueError(f"names ({len(names)}) must label each of the curves' {len(curves.neurons)} neurons "
                         f"(activation rows: {act_mean.shape[0]})")
    x = np.asarray(curves.positions, dtype=float)
    fig = go.Figure()
    which = _copy_title(kind, "entropy neurons", "token frequency neurons")
    title = (f"{_copy_title(kind, 'Fig. 5a', 'Fig. 10a')} analogue: {which}' activations, entropy and loss "
             f"by position on duplicated sequences (n = {int(curves.n_seqs)} sequences, T = {int(half_len)})")
    _base_layout(
        fig, title,
        "token position p (predicting token p + 1)",
        "mean activation (dotted lines)",
        yaxis2={"title": {"text": "entropy and loss (nats, solid lines)"}, "overlaying": "y", "side": "right",
                "showgrid": False},
        legend={"orientation": "h", "x": 0.0, "y": -0.18},
    )
    fig.update_layout(margin={"r": 80, "b": 120})
    if x.size == 0:
        return _empty(fig)

    for k, name in enumerate(names):
        color = palette[k % len(palette)]
        fig.add_traces(_band(x, act_mean[k], act_se[k], color, name))
        fig.add_trace(go.Scatter(x=x, y=act_mean[k], mode="lines", name=name, legendgroup=name,
                                 line={"color": color, "width": 2, "dash": "dot"},
                                 hovertemplate=f"{name}<br>p = %{{x}}<br>activation = %{{y:.4g}}<extra></extra>"))
    for label, mean, se, color in (("entropy", curves.entropy_mean, curves.entropy_se, H_COLOR),
                                   ("loss", curves.loss_mean, curves.loss_se, LOSS_COLOR)):
        mean = np.asarray(mean, dtype=float)
        fig.add_traces(_band(x, mean, np.asarray(se, dtype=float), color, label, yaxis="y2"))
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", name=label, legendgroup=label, yaxis="y2",
                                 line={"color": color, "width": 2.5},
                                 hovertemplate=f"{label}<br>p = %{{x}}<br>%{{y:.4g}} nats<extra></extra>"))
    start = second_copy_start(x.size + 1, half_len)
    _shade_from(fig, start - 0.5, float(x.max()) + 0.5)
    return fig


# --------------------------------------------------------------------------- Fig. 5b / 10b


_PP_COLS = ("group", "draw", "neuron", "position", "copy", "rel_delta_entropy_pct")
_SUMMARY_COLS = ("group", "draw", "neuron", "delta_entropy", "delta_loss", "rel_delta_entropy_pct")


def fig_clipped_ablation(per_position: pd.DataFrame, summary: pd.DataFrame, half_len: int, *,
                         names: Mapping[int, str] | None = None, kind: NeuronKind = "entropy") -> go.Figure:
    """Fig. 5b / 10b: relative change of entropy (%) by position when clipping in the second copy.

    ``per_position`` and ``summary`` are ``clipped_ablation_curves(...)["per_position"]`` /
    ``["summary"]``.  One line per chosen neuron (``group == "selected"``, in table
    order; ``names`` maps neuron index -> label, default ``"neuron i"``) of
    ``rel_delta_entropy_pct`` = 100 · mean ΔH / mean clean H at each second-copy
    position; its legend entry adds the overall change over the second copy from
    ``summary``.  The random baseline (``group == "random"``, every neuron of every
    draw) is the grey dashed mean over those neurons with thin grey lines at mean ± SD.
    """
    _check(per_position, _PP_COLS, "fig_clipped_ablation", "per_position")
    _check(summary, _SUMMARY_COLS, "fig_clipped_ablation", "summary")
    palette = _palette(kind)
    fig = go.Figure()
    which = _copy_title(kind, "entropy neurons", "token frequency neurons")
    _base_layout(
        fig,
        f"{_copy_title(kind, 'Fig. 5b', 'Fig. 10b')} analogue: change of entropy when clipping {which} "
        "to their first-copy mean in the second copy",
        "token position p in the second copy (predicting token p + 1)",
        "relative change of entropy, 100 · ΔH / H (%)",
        legend={"orientation": "h", "x": 0.0, "y": -0.18},
    )
    fig.update_layout(margin={"b": 120})
    second = per_position[per_position["copy"].astype(str) == "second"]
    if second.empty:
        return _empty(fig)
    n_positions = int(pd.to_numeric(per_position["position"]).max()) + 1
    start = second_copy_start(n_positions + 1, half_len)
    _zero_line(fig)

    rand = second[second["group"] == "random"]
    if not rand.empty:
        stats = rand.groupby("position")["rel_delta_entropy_pct"].agg(["mean", "std", "count"]).sort_index()
        x = stats.index.to_numpy(dtype=float)
        mean, sd = stats["mean"].to_numpy(float), stats["std"].to_numpy(float)
        n_rand = int(len(rand[["draw", "neuron"]].drop_duplicates()))
        label = f"{RANDOM_TRACE}: mean ± SD (n={n_rand})"
        for sign in (1.0, -1.0):
            if np.isfinite(sd).any():
                fig.add_trace(go.Scatter(x=x, y=mean + sign * sd, mode="lines", name=f"{label} band",
                                         legendgroup=RANDOM_TRACE, showlegend=False, opacity=0.6,
                                         line={"color": RANDOM_COLOR, "width": 1}, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=x, y=mean, mode="lines", name=label, legendgroup=RANDOM_TRACE,
                                 line={"color": RANDOM_COLOR, "width": 2, "dash": "dash"},
                                 hovertemplate="random neurons<br>p = %{x}<br>mean ΔH/H = %{y:.3g}%<extra></extra>"))

    sel = second[second["group"] == "selected"]
    sel_summary = summary[summary["group"] == "selected"].set_index("neuron")
    for k, neuron in enumerate(pd.unique(sel["neuron"])):
        rows = sel[sel["neuron"] == neuron].sort_values("position")
        label = _neuron_label(names, neuron)
        if neuron in sel_summary.index:
            overall = float(np.asarray(sel_summary.loc[neuron, "rel_delta_entropy_pct"]).reshape(-1)[0])
            label = f"{label} (overall {overall:+.3g}%)"
        color = palette[k % len(palette)]
        fig.add_trace(go.Scatter(x=_floats(rows["position"]), y=_floats(rows["rel_delta_entropy_pct"]),
                                 mode="lines", name=label, line={"color": color, "width": 2},
                                 hovertemplate=f"{label}<br>p = %{{x}}<br>ΔH/H = %{{y:.3g}}%<extra></extra>"))
    _start_line(fig, start - 0.5)
    return fig


def fig_clipped_summary(summary: pd.DataFrame, *, kind: NeuronKind = "entropy",
                        names: Mapping[int, str] | None = None) -> go.Figure:
    """Fig. 5b / 10b summary: overall change of entropy and of loss, chosen vs random neurons.

    Two box traces, ``"ΔH (entropy)"`` and ``"Δ loss"``, of ``summary``'s
    ``delta_entropy`` / ``delta_loss`` (mean over the second copy, nats) grouped by
    ``"<chosen> (n=...)"`` (``group == "selected"``) and ``"random neurons (n=...)"``
    (every neuron of every random draw), all points shown.
    """
    _check(summary, _SUMMARY_COLS, "fig_clipped_summary", "summary")
    which = _copy_title(kind, "entropy neurons", "token frequency neurons")
    sel = summary[summary["group"] == "selected"]
    rand = summary[summary["group"] == "random"]
    sel_label = f"chosen {which} (n={len(sel)})"
    rand_label = f"{RANDOM_TRACE} (n={len(rand)})"
    x = [sel_label] * len(sel) + [rand_label] * len(rand)
    hover = [_neuron_label(names, i) for i in sel["neuron"]] + [
        f"{_neuron_label(names, i)} (draw {d})" for d, i in zip(rand["draw"], rand["neuron"])]
    fig = go.Figure()
    for col, color, label in (("delta_entropy", ENTROPY_COLOR if kind == "entropy" else FREQ_COLOR, "ΔH (entropy)"),
                              ("delta_loss", "#4c72b0", "Δ loss")):
        y = np.concatenate([_floats(sel[col]), _floats(rand[col])])
        fig.add_trace(go.Box(x=x, y=y, name=label, marker={"color": color, "size": 5}, line={"color": color},
                             boxpoints="all", jitter=0.35, pointpos=0, text=hover,
                             hovertemplate="%{text}<br>" + col + " = %{y:.4g}<extra></extra>"))
    _base_layout(
        fig,
        f"{_copy_title(kind, 'Fig. 5b', 'Fig. 10b')} analogue: mean change of entropy and loss over the second copy "
        f"on clip mean-ablation, {which} vs random neurons",
        "neuron group",
        "mean change over the second copy, ablated − clean (nats)",
        boxmode="group",
    )
    fig.update_xaxes(categoryorder="array", categoryarray=[sel_label, rand_label])
    if summary.empty:
        _note(fig, NO_DATA_TEXT)
    else:
        _zero_line(fig)
    return fig


# --------------------------------------------------------------------------- Fig. 11


def fig_activation_change(change: np.ndarray, rho: np.ndarray, is_entropy: np.ndarray, names: Sequence[str], *,
                          label_top: int = 8, setting: Literal["synthetic", "natural"] = "synthetic") -> go.Figure:
    """Fig. 11: change of mean activation on induction for every final-layer neuron.

    x = neuron index, y = ``change`` (mean activation in the second copy − in the first
    for ``setting="synthetic"``; second − first occurrence of the n-gram for
    ``"natural"``).  Ordinary neurons form the grey :data:`OTHER_TRACE`, entropy
    neurons the red :data:`ENTROPY_TRACE` (exactly the rows where ``is_entropy``),
    with marker size growing with ρ (fraction of ‖w_out‖ in W_U's null space).  The
    ``label_top`` entropy neurons of largest |change| are labelled ``"name (ρ=...)"``.
    """
    change = np.asarray(change, dtype=float).reshape(-1)
    rho = np.asarray(rho, dtype=float).reshape(-1)
    is_entropy = np.asarray(is_entropy, dtype=bool).reshape(-1)
    names = [str(n) for n in names]
    n = change.size
    if not (rho.size == is_entropy.size == len(names) == n):
        raise ValueError(f"change ({n}), rho ({rho.size}), is_entropy ({is_entropy.size}) and names ({len(names)}) "
                         "must all have one entry per neuron")
    if label_top < 0:
        raise ValueError("label_top must be >= 0")
    idx = np.arange(n)
    what = ("second copy − first copy" if setting == "synthetic"
            else "second occurrence − first occurrence of the n-gram")
    fig = go.Figure()
    other = ~is_entropy
    fig.add_trace(go.Scatter(
        x=idx[other], y=change[other], mode="markers", name=OTHER_TRACE,
        marker={"color": OTHER_COLOR, "size": 5, "opacity": 0.6},
        text=[names[i] for i in idx[other]], customdata=rho[other],
        hovertemplate="%{text}<br>Δ activation = %{y:.4g}<br>ρ = %{customdata:.3f}<extra></extra>"))
    ent = idx[is_entropy]
    r = np.nan_to_num(np.clip(rho[ent], 0.0, 1.0), nan=0.0)
    top = ent[np.argsort(-np.abs(np.nan_to_num(change[ent], nan=0.0)), kind="stable")[:label_top]]
    top_set = set(top.tolist())
    labels = [f"{names[i]} (ρ={rho[i]:.2f})" if i in top_set else "" for i in ent]
    custom = np.empty((ent.size, 2), dtype=object)
    custom[:, 0] = [names[i] for i in ent]
    custom[:, 1] = rho[ent]
    fig.add_trace(go.Scatter(
        x=ent, y=change[ent], mode="markers+text", name=ENTROPY_TRACE,
        text=labels, textposition=_label_positions(change[ent]) if ent.size else None,
        textfont={"color": ENTROPY_COLOR, "size": 10},
        marker={"color": ENTROPY_COLOR, "size": (7 + 10 * r).tolist(), "line": {"color": "#7f0000", "width": 1}},
        customdata=custom,
        hovertemplate="%{customdata[0]}<br>Δ activation = %{y:.4g}<br>ρ = %{customdata[1]:.3f}<extra></extra>"))
    _base_layout(
        fig,
        f"Fig. 11 analogue: change of mean activation of final-layer neurons on {setting} induction "
        f"({what}); entropy neurons sized by ρ",
        "final-layer neuron index",
        f"Δ mean activation ({what})",
        legend={"orientation": "h", "x": 0.0, "y": -0.15},
    )
    fig.update_layout(margin={"b": 100})
    if n == 0:
        return _empty(fig)
    _zero_line(fig)
    if not is_entropy.any():
        _note(fig, "no entropy neurons under the current rule")
    return fig


# --------------------------------------------------------------------------- heads (Sec. 6.2 / App. D)


def fig_head_scores(prefix: np.ndarray, bos: np.ndarray, induction: Sequence[tuple[int, int]],
                    baseline: Sequence[tuple[int, int]], *, min_bos: float | None = 0.6,
                    max_prefix: float | None = 0.1) -> go.Figure:
    """Sec. 6.2 head choice: every head's prefix-matching score vs its mean attention to BOS.

    ``prefix`` and ``bos`` are (n_layers, n_heads) (``prefix_matching_scores`` /
    ``mean_bos_attention``; tensors are accepted).  Traces: grey ``"other heads"``,
    purple :data:`INDUCTION_HEADS_TRACE` and blue :data:`BASELINE_HEADS_TRACE`, both
    labelled ``"L5H1"``.  Dashed lines mark the baseline rule (BOS > ``min_bos``,
    prefix < ``max_prefix``); pass None to omit one.
    """
    prefix = np.asarray(prefix, dtype=float)
    bos = np.asarray(bos, dtype=float)
    if prefix.shape != bos.shape or prefix.ndim != 2:
        raise ValueError(f"prefix {prefix.shape} and bos {bos.shape} must both be (n_layers, n_heads)")
    n_layers, n_heads = prefix.shape
    induction = [tuple(map(int, h)) for h in induction]
    baseline = [tuple(map(int, h)) for h in baseline]
    for h in induction + baseline:
        if not (0 <= h[0] < n_layers and 0 <= h[1] < n_heads):
            raise ValueError(f"head {h} is outside the {n_layers} x {n_heads} score grid")
    chosen = set(induction) | set(baseline)
    others = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in chosen]
    fig = go.Figure()

    def add(heads, name, color, size, labelled):
        x = np.array([bos[h] for h in heads], dtype=float)
        y = np.array([prefix[h] for h in heads], dtype=float)
        labels = [head_label(h) for h in heads]
        trace = {"x": x, "y": y, "name": name, "text": labels,
                 "hovertemplate": "%{text}<br>BOS attention = %{x:.3f}<br>prefix score = %{y:.3f}<extra></extra>"}
        if labelled:
            trace.update(mode="markers+text", textposition=_label_positions(x) if len(heads) else None,
                         textfont={"color": color, "size": 11},
                         marker={"color": color, "size": size, "line": {"color": "#333333", "width": 1}})
        else:
            trace.update(mode="markers", marker={"color": color, "size": size, "opacity": 0.6})
        fig.add_trace(go.Scatter(**trace))

    add(others, "other heads", OTHER_COLOR, 6, False)
    add(baseline, BASELINE_HEADS_TRACE, "#1f77b4", 10, True)
    add(induction, INDUCTION_HEADS_TRACE, INDUCTION_HEAD_COLOR, 12, True)
    _base_layout(
        fig,
        "Sec. 6.2 analogue: prefix-matching score vs mean attention to BOS for every attention head",
        "mean attention to BOS (position 0) over query positions",
        "prefix-matching score on repeated random tokens",
    )
    if prefix.size == 0:
        return _empty(fig)
    if min_bos is not None:
        fig.add_shape(type="line", xref="x", yref="paper", x0=min_bos, x1=min_bos, y0=0, y1=1, line=_ZERO_LINE)
    if max_prefix is not None:
        fig.add_shape(type="line", xref="paper", yref="y", x0=0, x1=1, y0=max_prefix, y1=max_prefix,
                      line=_ZERO_LINE)
    return fig


# --------------------------------------------------------------------------- Fig. 5c / 12 / 13


_HEAD_COLS = ("head_set", "kind", "position", "activation")


def _head_rows(df: pd.DataFrame, neuron_name: str | None) -> pd.DataFrame:
    if neuron_name is not None and "neuron" in df.columns:
        return df[df["neuron"].astype(str) == str(neuron_name)]
    return df


def fig_head_ablation(df: pd.DataFrame, neuron_name: str, half_len: int, *,
                      title_kind: str = "BOS ablation (Fig. 5c analogue)") -> go.Figure:
    """Fig. 5c / 12 (BOS ablation) and Fig. 13 (mean attention-output ablation, via ``title_kind``).

    ``df`` columns: ``head_set`` (label such as ``"L5H1+L5H5"``, ``"none"`` for clean),
    ``kind`` (``"clean"`` | ``"induction"`` | ``"baseline"``), ``position`` (token index of
    the full sequence, as ``neuron_activations_under``) and ``activation`` (mean over
    sequences); an optional ``neuron`` column is filtered to ``neuron_name``.  One
    line per head set: clean black (:data:`CLEAN_TRACE`), induction-head sets in
    :data:`INDUCTION_PALETTE`, baseline sets thin grey (one legend entry).  The
    second copy is shaded.
    """
    _check(df, _HEAD_COLS, "fig_head_ablation", "df")
    df = _head_rows(df, neuron_name)
    fig = go.Figure()
    _base_layout(
        fig,
        f"{title_kind}: activation of neuron {neuron_name} by position with head sets ablated",
        "token position",
        f"mean activation of {neuron_name}",
        legend={"orientation": "h", "x": 0.0, "y": -0.18},
    )
    fig.update_layout(margin={"b": 130})
    if df.empty:
        return _empty(fig)
    kinds = df["kind"].astype(str)
    unknown = sorted(set(kinds) - {"clean", "induction", "baseline"})
    if unknown:
        raise ValueError(f"fig_head_ablation: unknown kind(s) {unknown}; use clean, induction or baseline")

    def line(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        rows = rows.sort_values("position")
        return _floats(rows["position"]), _floats(rows["activation"])

    base = df[kinds == "baseline"]
    base_sets = list(pd.unique(base["head_set"]))
    for hs in base_sets:
        x, y = line(base[base["head_set"] == hs])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"baseline: {hs}", legendgroup="baseline",
                                 showlegend=False, opacity=0.7, line={"color": BASELINE_COLOR, "width": 1.2},
                                 hovertemplate=f"baseline {hs}<br>p = %{{x}}<br>%{{y:.4g}}<extra></extra>"))
    if base_sets:  # one legend entry for all baseline sets
        fig.add_trace(go.Scatter(x=[np.nan], y=[np.nan], mode="lines", legendgroup="baseline",
                                 name=f"baseline head sets (n={len(base_sets)})",
                                 line={"color": BASELINE_COLOR, "width": 1.2}, hoverinfo="skip"))
    ind = df[kinds == "induction"]
    for j, hs in enumerate(pd.unique(ind["head_set"])):
        x, y = line(ind[ind["head_set"] == hs])
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"induction: {hs}",
                                 line={"color": INDUCTION_PALETTE[j % len(INDUCTION_PALETTE)], "width": 2},
                                 hovertemplate=f"induction {hs}<br>p = %{{x}}<br>%{{y:.4g}}<extra></extra>"))
    clean = df[kinds == "clean"]
    if not clean.empty:
        x, y = line(clean)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=CLEAN_TRACE, line={"color": CLEAN_COLOR, "width": 3},
                                 hovertemplate="clean<br>p = %{x}<br>%{y:.4g}<extra></extra>"))
    n_positions = int(pd.to_numeric(df["position"]).max()) + 1
    start = second_copy_start(n_positions, half_len)
    _shade_from(fig, start - 0.5, n_positions - 0.5)
    return fig


def fig_head_ablation_summary(df: pd.DataFrame, neuron_names: Sequence[str], half_len: int, *,
                              title_kind: str = "BOS ablation (Fig. 12 analogue)") -> go.Figure:
    """Compact Fig. 12 / 13: mean activation over the second copy per ablated head set, per neuron.

    ``df`` as in :func:`fig_head_ablation` plus a ``neuron`` column matching
    ``neuron_names`` (compared as strings; without it, a single name is allowed and
    every row belongs to it).  x = neuron; markers: one trace per induction head set
    (coloured), one grey trace for all baseline sets; the clean value is a short black
    line (:data:`CLEAN_TRACE`) and the clean first-copy mean a short dotted one.
    """
    _check(df, _HEAD_COLS, "fig_head_ablation_summary", "df")
    names = [str(n) for n in neuron_names]
    if "neuron" not in df.columns:
        if len(names) > 1:
            raise KeyError("fig_head_ablation_summary: `df` needs a `neuron` column for several neurons")
        df = df.assign(neuron=names[0] if names else "")
    fig = go.Figure()
    _base_layout(
        fig,
        f"{title_kind}: mean activation over the second copy with head sets ablated",
        "neuron",
        "mean activation over the second copy",
        legend={"orientation": "h", "x": 0.0, "y": -0.18},
    )
    fig.update_layout(margin={"b": 130})
    if df.empty or not names:
        return _empty(fig)
    n_positions = int(pd.to_numeric(df["position"]).max()) + 1
    start = second_copy_start(n_positions, half_len)
    offset = start - int(half_len)
    pos = pd.to_numeric(df["position"])
    key = df["neuron"].astype(str)
    second = df[pos >= start].assign(neuron=key[pos >= start])
    first = df[(pos >= offset) & (pos < start)].assign(neuron=key[(pos >= offset) & (pos < start)])
    means = second.groupby(["neuron", "kind", "head_set"], sort=False)["activation"].mean().reset_index()
    first_means = first.groupby(["neuron", "kind"], sort=False)["activation"].mean().reset_index()
    means = means[means["neuron"].isin(names)]
    xi = {n: float(i) for i, n in enumerate(names)}

    def ref_lines(table: pd.DataFrame, name: str, dash: str) -> None:
        xs, ys = [], []
        for n, v in zip(table["neuron"], table["activation"]):
            if n in xi:
                xs += [xi[n] - 0.35, xi[n] + 0.35, None]
                ys += [float(v), float(v), None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name,
                                     line={"color": CLEAN_COLOR, "width": 2.5, "dash": dash},
                                     hovertemplate=name + " = %{y:.4g}<extra></extra>"))

    ref_lines(means[means["kind"] == "clean"].drop_duplicates("neuron"), CLEAN_TRACE, "solid")
    ref_lines(first_means[first_means["kind"] == "clean"], "clean, first-copy mean", "dot")
    base = means[means["kind"] == "baseline"]
    if not base.empty:
        fig.add_trace(go.Scatter(x=[xi[n] + 0.2 for n in base["neuron"]], y=_floats(base["activation"]),
                                 mode="markers", name="baseline head sets",
                                 text=[f"{n}: {hs}" for n, hs in zip(base["neuron"], base["head_set"])],
                                 marker={"color": BASELINE_COLOR, "size": 7, "opacity": 0.8},
                                 hovertemplate="%{text}<br>%{y:.4g}<extra></extra>"))
    ind = means[means["kind"] == "induction"]
    sets = list(pd.unique(ind["head_set"]))
    for j, hs in enumerate(sets):
        shift = -0.25 + 0.2 * j / max(len(sets) - 1, 1)
        rows = ind[ind["head_set"] == hs]
        fig.add_trace(go.Scatter(x=[xi[n] + shift for n in rows["neuron"]], y=_floats(rows["activation"]),
                                 mode="markers", name=f"induction: {hs}",
                                 marker={"color": INDUCTION_PALETTE[j % len(INDUCTION_PALETTE)], "size": 9,
                                         "line": {"color": "#333333", "width": 0.5}},
                                 hovertemplate=f"induction {hs}<br>%{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(tickvals=list(xi.values()), ticktext=names, range=[-0.6, len(names) - 0.4])
    return fig


# --------------------------------------------------------------------------- Fig. 14


def _component_order(labels: Sequence[str]) -> tuple[list[int], int, int]:
    """Indices of ``labels`` with heads (by layer, head) first, then MLPs (by layer), then the rest."""
    heads, mlps, rest = [], [], []
    for i, lab in enumerate(labels):
        if m := _HEAD_RE.match(lab):
            heads.append((int(m.group(1)), int(m.group(2)), i))
        elif m := _MLP_RE.match(lab):
            mlps.append((int(m.group(1)), i))
        else:
            rest.append(i)
    rank = {"embed": 0, "pos_embed": 1, "bias": 3}
    rest = sorted(rest, key=lambda i: rank.get(labels[i], 2))  # embeddings, others, bias (stable)
    order = [i for *_, i in sorted(heads)] + [i for _, i in sorted(mlps)] + rest
    return order, len(heads), len(mlps)


def fig_dfa(labels: Sequence[str], diff: np.ndarray, prefix_by_label: Mapping[str, float], neuron_name: str, *,
            label_top: int = 6) -> go.Figure:
    """Fig. 14: change of each component's direct feature attribution on induction.

    ``labels`` / ``diff`` follow ``direct_feature_attribution``: ``diff[i]`` is component
    i's contribution to the neuron's pre-activation on induction sequences minus on the
    corrupted ones, averaged over the second copy.  The x axis puts attention heads
    first (``"L{l}H{h}"``, by layer and head), then MLPs (``"mlp{l}"``), then the rest
    (embed, pos_embed, bias).  Each component is a lollipop (grey stem, marker): head
    markers are coloured by ``prefix_by_label`` (prefix-matching score; missing ->
    NaN), MLPs orange, the rest grey; a dotted line separates heads from MLPs.  The
    ``label_top`` components of largest |diff| are labelled.
    """
    labels = [str(lab) for lab in labels]
    diff = np.asarray(diff, dtype=float)
    if diff.ndim != 1 or diff.size != len(labels):
        raise ValueError(f"diff must be 1-D with one value per label ({len(labels)}), got shape {diff.shape}; "
                         "average the (n_components, seq_len) attribution over the second copy first")
    order, n_heads, n_mlps = _component_order(labels)
    lab = [labels[i] for i in order]
    y = diff[order]
    x = np.arange(len(order), dtype=float)
    fig = go.Figure()
    _base_layout(
        fig,
        f"Fig. 14 analogue: direct feature attribution to neuron {neuron_name}, induction − corrupted first copy "
        "(mean over the second copy)",
        "component (attention heads, then MLPs)",
        "Δ direct contribution to the pre-activation",
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "prefix-matching score"}}},
        legend={"orientation": "h", "x": 0.0, "y": -0.22},
    )
    fig.update_layout(margin={"b": 140})
    if not labels:
        return _empty(fig)
    stems_x, stems_y = [], []
    for xi, yi in zip(x, y):
        stems_x += [xi, xi, None]
        stems_y += [0.0, yi, None]
    fig.add_trace(go.Scatter(x=stems_x, y=stems_y, mode="lines", name="stems", showlegend=False,
                             line={"color": "rgba(120,120,120,0.7)", "width": 1.5}, hoverinfo="skip"))
    top = set(np.argsort(-np.abs(np.nan_to_num(y, nan=0.0)), kind="stable")[:label_top].tolist())

    def add(sel: np.ndarray, name: str, marker: dict) -> None:
        fig.add_trace(go.Scatter(
            x=x[sel], y=y[sel], mode="markers+text", name=name, marker=marker,
            text=[lab[i] if i in top else "" for i in sel],
            textposition=["top center" if y[i] >= 0 else "bottom center" for i in sel],
            textfont={"size": 10}, customdata=[lab[i] for i in sel],
            hovertemplate="%{customdata}<br>Δ DFA = %{y:.4g}<extra></extra>"))

    h_sel = np.arange(n_heads)
    if n_heads:
        prefix = np.array([prefix_by_label.get(lab[i], np.nan) for i in h_sel], dtype=float)
        finite = prefix[np.isfinite(prefix)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        fig.update_layout(coloraxis={"cmin": min(lo, 0.0), "cmax": hi if hi > min(lo, 0.0) else 1.0})
        add(h_sel, "attention heads (colour: prefix-matching score)",
            {"color": prefix, "coloraxis": "coloraxis", "size": 8, "line": {"color": "#333333", "width": 0.5}})
    if n_mlps:
        add(np.arange(n_heads, n_heads + n_mlps), "MLPs", {"color": MLP_COLOR, "size": 9})
    if len(order) > n_heads + n_mlps:
        add(np.arange(n_heads + n_mlps, len(order)), "embeddings and biases", {"color": MISC_COLOR, "size": 8})
    _zero_line(fig)
    if n_heads and len(order) > n_heads:
        fig.add_shape(type="line", xref="x", yref="paper", x0=n_heads - 0.5, x1=n_heads - 0.5, y0=0, y1=1,
                      line={"color": "#333333", "width": 1.5, "dash": "dot"})
    # ticks: each layer's first head ("L5"), every MLP and the rest by name
    tickvals, ticktext, seen = [], [], set()
    for i in range(n_heads):
        layer = int(_HEAD_RE.match(lab[i]).group(1))
        if layer not in seen:
            seen.add(layer)
            tickvals.append(float(i))
            ticktext.append(f"L{layer}")
    tickvals += [float(i) for i in range(n_heads, len(order))]
    ticktext += lab[n_heads:]
    fig.update_xaxes(tickvals=tickvals, ticktext=ticktext, tickangle=-60, range=[-1, len(order)])
    return fig


# --------------------------------------------------------------------------- Fig. 9


_NAT_COLS = ("seq", "neuron", "occurrence", "label", "offset")


def natural_x_layout(n: int) -> tuple[dict[tuple[str, int], float], list[float], list[str]]:
    """x positions of Fig. 9: first occurrence A0..A{n-1}, B at 0..n, a gap, second A0..A{n-1}, X.

    Returns ({(occurrence, offset): x}, tickvals, ticktext).
    """
    xs: dict[tuple[str, int], float] = {}
    vals, text = [], []
    for occ, base, after in (("first", 0, "B"), ("second", n + 2, "X")):
        for k in range(n + 1):
            xs[(occ, k)] = float(base + k)
            vals.append(float(base + k))
            text.append(f"A{k}" if k < n else after)
    return xs, vals, text


def _natural_groups(effects: pd.DataFrame, names: Sequence[str], func: str) -> tuple[list, list[str], int]:
    _check(effects, _NAT_COLS, func, "effects")
    neurons = list(pd.unique(effects["neuron"]))
    names = [str(n) for n in names]
    if len(names) != len(neurons):
        raise ValueError(f"{func}: names ({len(names)}) must label each neuron of `effects` in order of "
                         f"appearance ({len(neurons)}: {neurons})")
    n = int(pd.to_numeric(effects["offset"]).max()) if len(effects) else 0
    return neurons, names, n


def _natural_layout(fig: go.Figure, n: int, title: str, ytitle: str) -> None:
    _base_layout(fig, title, "position in the repeated n-gram (A0..A5), B / X: the token after it",
                 ytitle, legend={"orientation": "h", "x": 0.0, "y": -0.18})
    fig.update_layout(margin={"b": 120})
    if n:
        _, vals, text = natural_x_layout(n)
        fig.update_xaxes(tickvals=vals, ticktext=text, range=[-0.6, 2 * n + 2.6])
        fig.add_annotation(text="first occurrence", xref="x", yref="paper", x=n / 2, y=1.0, xanchor="center",
                           yanchor="bottom", showarrow=False, font={"size": 11, "color": "#555555"})
        _shade_from(fig, n + 1.5, 2 * n + 2.6, label="second occurrence")


def _natural_line(stats: pd.DataFrame, n: int) -> tuple[list, list, list]:
    """(x, mean, se) over both occurrences, with a break (None) between them."""
    xs, _, _ = natural_x_layout(n)
    x, m, s = [], [], []
    for occ in ("first", "second"):
        part = stats[stats["occurrence"] == occ].sort_values("offset")
        x += [xs[(occ, int(o))] for o in part["offset"]] + [None]
        m += part["mean"].tolist() + [None]
        s += part["se"].tolist() + [None]
    return x[:-1], m[:-1], s[:-1]


def _mean_se_by(df: pd.DataFrame, col: str) -> pd.DataFrame:
    g = df.groupby(["occurrence", "offset"])[col]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["se"] = out["std"] / np.sqrt(out["count"])
    return out


def fig_natural_induction(effects: pd.DataFrame, names: Sequence[str], *, kind: NeuronKind = "entropy"
                          ) -> go.Figure:
    """Fig. 9a: mean activation at A0..A5, B (first occurrence) and A0..A5, X (second).

    ``effects`` is ``natural_induction_effects``' table (one row per sequence, neuron,
    occurrence and label); ``names[k]`` labels the k-th neuron in order of appearance
    (the ``neurons`` passed to it).  One solid line per neuron (mean over sequences,
    broken between the occurrences) with faint mean ± SE lines; the second occurrence
    is shaded.
    """
    neurons, names, n = _natural_groups(effects, names, "fig_natural_induction")
    _check(effects, ("activation",), "fig_natural_induction", "effects")
    palette = _palette(kind)
    fig = go.Figure()
    _natural_layout(fig, n, "Fig. 9a analogue: mean activation at naturally repeated n-grams "
                    f"(n = {effects['seq'].nunique()} sequences)", "mean activation")
    if effects.empty:
        return _empty(fig)
    for k, (neuron, name) in enumerate(zip(neurons, names)):
        color = palette[k % len(palette)]
        x, m, s = _natural_line(_mean_se_by(effects[effects["neuron"] == neuron], "activation"), n)
        mean = np.array([np.nan if v is None else v for v in m], dtype=float)
        se = np.array([np.nan if v is None else v for v in s], dtype=float)
        xf = np.array([np.nan if v is None else v for v in x], dtype=float)
        fig.add_traces(_band(xf, mean, se, color, name))
        fig.add_trace(go.Scatter(x=xf, y=mean, mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color, "width": 2}, marker={"color": color, "size": 6},
                                 hovertemplate=f"{name}<br>activation = %{{y:.4g}}<extra></extra>"))
    return fig


def fig_natural_induction_entropy(effects: pd.DataFrame, names: Sequence[str], *, relative: bool = True,
                                  kind: NeuronKind = "entropy") -> go.Figure:
    """Fig. 9b: change of entropy on clip mean-ablation at A0..A5, B and A0..A5, X.

    With ``relative`` (default) y = 100 · mean ΔH / mean clean H over sequences at each
    label (%, like Fig. 5b); otherwise the mean ΔH in nats with faint mean ± SE
    lines.  Layout as :func:`fig_natural_induction`.
    """
    neurons, names, n = _natural_groups(effects, names, "fig_natural_induction_entropy")
    _check(effects, ("delta_entropy", "entropy"), "fig_natural_induction_entropy", "effects")
    palette = _palette(kind)
    fig = go.Figure()
    ytitle = ("relative change of entropy, 100 · ΔH / H (%)" if relative
              else "mean change of entropy ΔH, ablated − clean (nats)")
    _natural_layout(fig, n, "Fig. 9b analogue: change of entropy on clip mean-ablation at naturally repeated "
                    "n-grams", ytitle)
    if effects.empty:
        return _empty(fig)
    _zero_line(fig)
    for k, (neuron, name) in enumerate(zip(neurons, names)):
        color = palette[k % len(palette)]
        rows = effects[effects["neuron"] == neuron]
        stats = _mean_se_by(rows, "delta_entropy")
        if relative:
            h = rows.groupby(["occurrence", "offset"])["entropy"].mean().rename("h").reset_index()
            stats = stats.merge(h, on=["occurrence", "offset"])
            stats["mean"] = 100 * stats["mean"] / stats["h"]
            stats["se"] = 100 * stats["se"] / stats["h"]
        x, m, s = _natural_line(stats, n)
        xf = np.array([np.nan if v is None else v for v in x], dtype=float)
        mean = np.array([np.nan if v is None else v for v in m], dtype=float)
        se = np.array([np.nan if v is None else v for v in s], dtype=float)
        if not relative:
            fig.add_traces(_band(xf, mean, se, color, name))
        unit = "%" if relative else " nats"
        fig.add_trace(go.Scatter(x=xf, y=mean, mode="lines+markers", name=name, legendgroup=name,
                                 line={"color": color, "width": 2}, marker={"color": color, "size": 6},
                                 hovertemplate=f"{name}<br>ΔH = %{{y:.4g}}{unit}<extra></extra>"))
    return fig
