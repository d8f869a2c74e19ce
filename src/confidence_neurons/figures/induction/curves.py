"""Induction curves by position (Stolfo et al. 2024, Fig. 5a/5b and their token frequency twins Fig. 10a/10b).

* :func:`fig_induction_curves` (Fig. 5a / 10a): the clean pass on duplicated random tokens, neuron
  activations against entropy and loss by position;
* :func:`fig_clipped_ablation` (Fig. 5b / 10b): relative change of entropy by position when the chosen
  neurons are clipped to their first-copy mean in the second copy, against random neurons;
* :func:`fig_clipped_summary` (Fig. 5b / 10b summary): the overall change of entropy and loss as boxes.

Pure: data in, :class:`plotly.graph_objects.Figure` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.induction.common import (
    NO_DATA_TEXT,
    SECOND_COPY_COLOR,
    NeuronKind,
    band,
    neuron_palette,
    no_data,
    second_copy_start,
    shade_from,
)
from confidence_neurons.figures.style import (
    ENTROPY_COLOR,
    FREQ_COLOR,
    LOSS_EFFECT_COLOR,
    RANDOM_COLOR,
    RANDOM_TRACE,
    base_layout,
    check_columns,
    escape_text,
    floats,
    hline,
    legend_below,
    note,
)

__all__ = ["H_COLOR", "LOSS_COLOR", "fig_clipped_ablation", "fig_clipped_summary", "fig_induction_curves"]

H_COLOR = "#1f3a93"  # entropy of the output (navy)
LOSS_COLOR = "#111111"  # loss (near black)
_START_LINE = {"color": "rgba(31,119,180,0.9)", "width": 1.5, "dash": "dot"}


def _start_line(fig: go.Figure, x: float, label: str = "second copy starts") -> None:
    fig.add_shape(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=_START_LINE)
    fig.add_annotation(
        text=label,
        xref="x",
        yref="paper",
        x=x,
        y=1.0,
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
        font={"size": 11, "color": SECOND_COPY_COLOR},
    )


def _neuron_label(names: Mapping[int, str] | None, neuron: int) -> str:
    if names is not None and int(neuron) in names:
        return escape_text(names[int(neuron)])
    return f"neuron {int(neuron)}"


def _copy_title(kind: str, a: str, b: str) -> str:
    return a if kind == "entropy" else b


# --------------------------------------------------------------------------- Fig. 5a / 10a


def fig_induction_curves(curves, names: Sequence[str], half_len: int, *, kind: NeuronKind = "entropy") -> go.Figure:
    """Fig. 5a (``kind="entropy"``) / Fig. 10a (``kind="frequency"``): the clean pass by position.

    ``curves`` is a :class:`~confidence_neurons.induction.neurons.PositionCurves`;
    ``names[k]`` labels ``curves.neurons[k]`` (row k of ``activation_mean``).  Each
    neuron's mean activation is a dotted line on the left axis; the mean entropy (navy)
    and loss (black) of the next-token distribution are solid lines on the right
    axis (nats).  Faint lines mark mean ± SE over sequences.  The second copy
    (positions >= offset + ``half_len``) is shaded.
    """
    palette = neuron_palette(kind)
    names = [escape_text(n) for n in names]
    act_mean = np.atleast_2d(np.asarray(curves.activation_mean, dtype=float))
    act_se = np.atleast_2d(np.asarray(curves.activation_se, dtype=float))
    if len(names) != len(curves.neurons) or act_mean.shape[0] != len(names):
        raise ValueError(
            f"names ({len(names)}) must label each of the curves' {len(curves.neurons)} neurons "
            f"(activation rows: {act_mean.shape[0]})"
        )
    x = np.asarray(curves.positions, dtype=float)
    fig = go.Figure()
    which = _copy_title(kind, "entropy neurons", "token frequency neurons")
    title = (
        f"{_copy_title(kind, 'Fig. 5a', 'Fig. 10a')} analogue: {which}' activations, entropy and loss "
        f"by position on duplicated sequences (n = {int(curves.n_seqs)} sequences, T = {int(half_len)})"
    )
    base_layout(
        fig,
        title,
        "token position p (predicting token p + 1)",
        "mean activation (dotted lines)",
        yaxis2={
            "title": {"text": "entropy and loss (nats, solid lines)"},
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
        },
        legend=legend_below(),
    )
    fig.update_layout(margin={"r": 80, "b": 120})
    if x.size == 0:
        return no_data(fig)

    for k, name in enumerate(names):
        color = palette[k % len(palette)]
        fig.add_traces(band(x, act_mean[k], act_se[k], color, name))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=act_mean[k],
                mode="lines",
                name=name,
                legendgroup=name,
                line={"color": color, "width": 2, "dash": "dot"},
                hovertemplate=f"{name}<br>p = %{{x}}<br>activation = %{{y:.4g}}<extra></extra>",
            )
        )
    for label, mean, se, color in (
        ("entropy", curves.entropy_mean, curves.entropy_se, H_COLOR),
        ("loss", curves.loss_mean, curves.loss_se, LOSS_COLOR),
    ):
        mean = np.asarray(mean, dtype=float)
        fig.add_traces(band(x, mean, np.asarray(se, dtype=float), color, label, yaxis="y2"))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=mean,
                mode="lines",
                name=label,
                legendgroup=label,
                yaxis="y2",
                line={"color": color, "width": 2.5},
                hovertemplate=f"{label}<br>p = %{{x}}<br>%{{y:.4g}} nats<extra></extra>",
            )
        )
    start = second_copy_start(x.size + 1, half_len)
    shade_from(fig, start - 0.5, float(x.max()) + 0.5)
    return fig


# --------------------------------------------------------------------------- Fig. 5b / 10b


_PP_COLS = ("group", "draw", "neuron", "position", "copy", "rel_delta_entropy_pct")
_SUMMARY_COLS = ("group", "draw", "neuron", "delta_entropy", "delta_loss", "rel_delta_entropy_pct")


def _clip_words(summary: pd.DataFrame) -> str:
    """How the summary's neurons were clipped: the authors' two-sided clipping names itself (Fig. 5b)."""
    if "clip" not in summary.columns or not (summary["clip"] == "authors").any():  # the toolkit's; older runs
        return "to their first-copy mean"
    if (summary["clip_from"] == "below").any():
        return "to their first-half mean (authors': from below for neurons that fall)"
    return "to their first-half mean (authors')"


def fig_clipped_ablation(
    per_position: pd.DataFrame,
    summary: pd.DataFrame,
    half_len: int,
    *,
    names: Mapping[int, str] | None = None,
    kind: NeuronKind = "entropy",
) -> go.Figure:
    """Fig. 5b / 10b: relative change of entropy (%) by position when clipping in the second copy.

    ``per_position`` and ``summary`` are ``clipped_ablation_curves(...)["per_position"]`` /
    ``["summary"]``.  One line per chosen neuron (``group == "selected"``, in table
    order; ``names`` maps neuron index -> label, default ``"neuron i"``) of
    ``rel_delta_entropy_pct`` = 100 · mean ΔH / mean clean H at each second-copy
    position; its legend entry adds the overall change over the second copy from
    ``summary``.  The random baseline (``group == "random"``, every neuron of every
    draw) is the grey dashed mean over those neurons with thin grey lines at mean ± SD.
    """
    check_columns(per_position, _PP_COLS, "fig_clipped_ablation", "per_position")
    check_columns(summary, _SUMMARY_COLS, "fig_clipped_ablation", "summary")
    palette = neuron_palette(kind)
    fig = go.Figure()
    which = _copy_title(kind, "entropy neurons", "token frequency neurons")
    base_layout(
        fig,
        f"{_copy_title(kind, 'Fig. 5b', 'Fig. 10b')} analogue: change of entropy when clipping {which} "
        f"{_clip_words(summary)} in the second copy",
        "token position p in the second copy (predicting token p + 1)",
        "relative change of entropy, 100 · ΔH / H (%)",
        legend=legend_below(),
    )
    fig.update_layout(margin={"b": 120})
    second = per_position[per_position["copy"].astype(str) == "second"]
    if second.empty:
        return no_data(fig)
    n_positions = int(pd.to_numeric(per_position["position"]).max()) + 1
    start = second_copy_start(n_positions + 1, half_len)
    hline(fig)

    rand = second[second["group"] == "random"]
    if not rand.empty:
        stats = rand.groupby("position")["rel_delta_entropy_pct"].agg(["mean", "std", "count"]).sort_index()
        x = stats.index.to_numpy(dtype=float)
        mean, sd = stats["mean"].to_numpy(float), stats["std"].to_numpy(float)
        n_rand = int(len(rand[["draw", "neuron"]].drop_duplicates()))
        label = f"{RANDOM_TRACE}: mean ± SD (n={n_rand})"
        for sign in (1.0, -1.0):
            if np.isfinite(sd).any():
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=mean + sign * sd,
                        mode="lines",
                        name=f"{label} band",
                        legendgroup=RANDOM_TRACE,
                        showlegend=False,
                        opacity=0.6,
                        line={"color": RANDOM_COLOR, "width": 1},
                        hoverinfo="skip",
                    )
                )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=mean,
                mode="lines",
                name=label,
                legendgroup=RANDOM_TRACE,
                line={"color": RANDOM_COLOR, "width": 2, "dash": "dash"},
                hovertemplate="random neurons<br>p = %{x}<br>mean ΔH/H = %{y:.3g}%<extra></extra>",
            )
        )

    sel = second[second["group"] == "selected"]
    sel_summary = summary[summary["group"] == "selected"].set_index("neuron")
    for k, neuron in enumerate(pd.unique(sel["neuron"])):
        rows = sel[sel["neuron"] == neuron].sort_values("position")
        label = _neuron_label(names, neuron)
        if neuron in sel_summary.index:
            overall = float(np.asarray(sel_summary.loc[neuron, "rel_delta_entropy_pct"]).reshape(-1)[0])
            label = f"{label} (overall {overall:+.3g}%)"
        color = palette[k % len(palette)]
        fig.add_trace(
            go.Scatter(
                x=floats(rows["position"]),
                y=floats(rows["rel_delta_entropy_pct"]),
                mode="lines",
                name=label,
                line={"color": color, "width": 2},
                hovertemplate=f"{label}<br>p = %{{x}}<br>ΔH/H = %{{y:.3g}}%<extra></extra>",
            )
        )
    _start_line(fig, start - 0.5)
    return fig


def fig_clipped_summary(
    summary: pd.DataFrame, *, kind: NeuronKind = "entropy", names: Mapping[int, str] | None = None
) -> go.Figure:
    """Fig. 5b / 10b summary: overall change of entropy and of loss, chosen vs random neurons.

    Two box traces, ``"ΔH (entropy)"`` and ``"Δ loss"``, of ``summary``'s
    ``delta_entropy`` / ``delta_loss`` (mean over the second copy, nats) grouped by
    ``"<chosen> (n=...)"`` (``group == "selected"``) and ``"random neurons (n=...)"``
    (every neuron of every random draw), all points shown.
    """
    check_columns(summary, _SUMMARY_COLS, "fig_clipped_summary", "summary")
    which = _copy_title(kind, "entropy neurons", "token frequency neurons")
    sel = summary[summary["group"] == "selected"]
    rand = summary[summary["group"] == "random"]
    sel_label = f"chosen {which} (n={len(sel)})"
    rand_label = f"{RANDOM_TRACE} (n={len(rand)})"
    x = [sel_label] * len(sel) + [rand_label] * len(rand)
    hover = [_neuron_label(names, i) for i in sel["neuron"]] + [
        f"{_neuron_label(names, i)} (draw {d})" for d, i in zip(rand["draw"], rand["neuron"])
    ]
    fig = go.Figure()
    for col, color, label in (
        ("delta_entropy", ENTROPY_COLOR if kind == "entropy" else FREQ_COLOR, "ΔH (entropy)"),
        ("delta_loss", LOSS_EFFECT_COLOR, "Δ loss"),
    ):
        y = np.concatenate([floats(sel[col]), floats(rand[col])])
        fig.add_trace(
            go.Box(
                x=x,
                y=y,
                name=label,
                marker={"color": color, "size": 5},
                line={"color": color},
                boxpoints="all",
                jitter=0.35,
                pointpos=0,
                text=hover,
                hovertemplate="%{text}<br>" + col + " = %{y:.4g}<extra></extra>",
            )
        )
    base_layout(
        fig,
        f"{_copy_title(kind, 'Fig. 5b', 'Fig. 10b')} analogue: mean change of entropy and loss over the second copy "
        f"on clip mean-ablation {_clip_words(summary)}, {which} vs random neurons",
        "neuron group",
        "mean change over the second copy, ablated − clean (nats)",
        boxmode="group",
    )
    fig.update_xaxes(categoryorder="array", categoryarray=[sel_label, rand_label])
    if summary.empty:
        note(fig, NO_DATA_TEXT)
    else:
        hline(fig)
    return fig
