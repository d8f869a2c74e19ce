"""Attention heads behind the entropy neurons' induction response (Stolfo et al. 2024, Sec. 6.2, Fig. 5c, 12, 13).

* :func:`fig_head_scores` (Sec. 6.2): every head's prefix-matching score against its attention to
  BOS, with the chosen induction and baseline heads labelled;
* :func:`fig_head_ablation` (Fig. 5c / 12 with BOS ablation, Fig. 13 with mean attention-output
  ablation): a neuron's activation by position with head sets ablated;
* :func:`fig_head_ablation_summary` (compact Fig. 12 / 13): its mean over the second copy per head set.

Pure: data in, :class:`plotly.graph_objects.Figure` out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.induction.common import no_data, second_copy_start, shade_from
from confidence_neurons.figures.style import (
    OTHER_COLOR,
    OUTLINE_COLOR,
    base_layout,
    check_columns,
    escape_text,
    floats,
    hline,
    label_positions,
    legend_below,
    vline,
)

__all__ = [
    "BASELINE_COLOR",
    "BASELINE_HEADS_TRACE",
    "BASELINE_HEAD_COLOR",
    "CLEAN_COLOR",
    "CLEAN_TRACE",
    "INDUCTION_HEADS_TRACE",
    "INDUCTION_HEAD_COLOR",
    "INDUCTION_PALETTE",
    "fig_head_ablation",
    "fig_head_ablation_summary",
    "fig_head_scores",
    "head_label",
]

CLEAN_COLOR = "#000000"
CLEAN_TRACE = "clean"
BASELINE_COLOR = "#9e9e9e"  # lines and markers of baseline head sets
BASELINE_HEAD_COLOR = "#1f77b4"  # baseline heads in the head-score scatter
INDUCTION_HEAD_COLOR = "#9467bd"
INDUCTION_HEADS_TRACE = "induction heads"
BASELINE_HEADS_TRACE = "baseline heads"
INDUCTION_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def head_label(head: Sequence[int]) -> str:
    """``(5, 1)`` -> ``"L5H1"``."""
    layer, h = head
    return f"L{int(layer)}H{int(h)}"


# --------------------------------------------------------------------------- heads (Sec. 6.2 / App. D)


def fig_head_scores(
    prefix: np.ndarray,
    bos: np.ndarray,
    induction: Sequence[tuple[int, int]],
    baseline: Sequence[tuple[int, int]],
    *,
    min_bos: float | None = 0.6,
    max_prefix: float | None = 0.1,
) -> go.Figure:
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
        trace = {
            "x": x,
            "y": y,
            "name": name,
            "text": labels,
            "hovertemplate": "%{text}<br>BOS attention = %{x:.3f}<br>prefix score = %{y:.3f}<extra></extra>",
        }
        if labelled:
            trace.update(
                mode="markers+text",
                textposition=label_positions(x) if len(heads) else None,
                textfont={"color": color, "size": 11},
                marker={"color": color, "size": size, "line": {"color": OUTLINE_COLOR, "width": 1}},
            )
        else:
            trace.update(mode="markers", marker={"color": color, "size": size, "opacity": 0.6})
        fig.add_trace(go.Scatter(**trace))

    add(others, "other heads", OTHER_COLOR, 6, False)
    add(baseline, BASELINE_HEADS_TRACE, BASELINE_HEAD_COLOR, 10, True)
    add(induction, INDUCTION_HEADS_TRACE, INDUCTION_HEAD_COLOR, 12, True)
    base_layout(
        fig,
        "Sec. 6.2 analogue: prefix-matching score vs mean attention to BOS for every attention head",
        "mean attention to BOS (position 0) over query positions",
        "prefix-matching score on repeated random tokens",
    )
    if prefix.size == 0:
        return no_data(fig)
    if min_bos is not None:
        vline(fig, min_bos)
    if max_prefix is not None:
        hline(fig, max_prefix)
    return fig


# --------------------------------------------------------------------------- Fig. 5c / 12 / 13


_HEAD_COLS = ("head_set", "kind", "position", "activation")


def _head_rows(df: pd.DataFrame, neuron_name: str | None) -> pd.DataFrame:
    if neuron_name is not None and "neuron" in df.columns:
        return df[df["neuron"].astype(str) == str(neuron_name)]
    return df


def fig_head_ablation(
    df: pd.DataFrame, neuron_name: str, half_len: int, *, title_kind: str = "BOS ablation (Fig. 5c analogue)"
) -> go.Figure:
    """Fig. 5c / 12 (BOS ablation) and Fig. 13 (mean attention-output ablation, via ``title_kind``).

    ``df`` columns: ``head_set`` (label such as ``"L5H1+L5H5"``, ``"none"`` for clean),
    ``kind`` (``"clean"`` | ``"induction"`` | ``"baseline"``), ``position`` (token index of
    the full sequence, as ``neuron_activations_under``) and ``activation`` (mean over
    sequences); an optional ``neuron`` column is filtered to ``neuron_name``.  One
    line per head set: clean black (:data:`CLEAN_TRACE`), induction-head sets in
    :data:`INDUCTION_PALETTE`, baseline sets thin grey (one legend entry).  The
    second copy is shaded.
    """
    check_columns(df, _HEAD_COLS, "fig_head_ablation", "df")
    df = _head_rows(df, neuron_name)
    fig = go.Figure()
    base_layout(
        fig,
        f"{title_kind}: activation of neuron {escape_text(neuron_name)} by position with head sets ablated",
        "token position",
        f"mean activation of {escape_text(neuron_name)}",
        legend=legend_below(),
    )
    fig.update_layout(margin={"b": 130})
    if df.empty:
        return no_data(fig)
    kinds = df["kind"].astype(str)
    unknown = sorted(set(kinds) - {"clean", "induction", "baseline"})
    if unknown:
        raise ValueError(f"fig_head_ablation: unknown kind(s) {unknown}; use clean, induction or baseline")

    def line(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        rows = rows.sort_values("position")
        return floats(rows["position"]), floats(rows["activation"])

    base = df[kinds == "baseline"]
    base_sets = list(pd.unique(base["head_set"]))
    for hs in base_sets:
        x, y = line(base[base["head_set"] == hs])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=f"baseline: {hs}",
                legendgroup="baseline",
                showlegend=False,
                opacity=0.7,
                line={"color": BASELINE_COLOR, "width": 1.2},
                hovertemplate=f"baseline {hs}<br>p = %{{x}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    if base_sets:  # one legend entry for all baseline sets
        fig.add_trace(
            go.Scatter(
                x=[np.nan],
                y=[np.nan],
                mode="lines",
                legendgroup="baseline",
                name=f"baseline head sets (n={len(base_sets)})",
                line={"color": BASELINE_COLOR, "width": 1.2},
                hoverinfo="skip",
            )
        )
    ind = df[kinds == "induction"]
    for j, hs in enumerate(pd.unique(ind["head_set"])):
        x, y = line(ind[ind["head_set"] == hs])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=f"induction: {hs}",
                line={"color": INDUCTION_PALETTE[j % len(INDUCTION_PALETTE)], "width": 2},
                hovertemplate=f"induction {hs}<br>p = %{{x}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    clean = df[kinds == "clean"]
    if not clean.empty:
        x, y = line(clean)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                name=CLEAN_TRACE,
                line={"color": CLEAN_COLOR, "width": 3},
                hovertemplate="clean<br>p = %{x}<br>%{y:.4g}<extra></extra>",
            )
        )
    n_positions = int(pd.to_numeric(df["position"]).max()) + 1
    start = second_copy_start(n_positions, half_len)
    shade_from(fig, start - 0.5, n_positions - 0.5)
    return fig


def fig_head_ablation_summary(
    df: pd.DataFrame, neuron_names: Sequence[str], half_len: int, *, title_kind: str = "BOS ablation (Fig. 12 analogue)"
) -> go.Figure:
    """Compact Fig. 12 / 13: mean activation over the second copy per ablated head set, per neuron.

    ``df`` as in :func:`fig_head_ablation` plus a ``neuron`` column matching
    ``neuron_names`` (compared as strings; without it, a single name is allowed and
    every row belongs to it).  x = neuron; markers: one trace per induction head set
    (coloured), one grey trace for all baseline sets; the clean value is a short black
    line (:data:`CLEAN_TRACE`) and the clean first-copy mean a short dotted one.
    """
    check_columns(df, _HEAD_COLS, "fig_head_ablation_summary", "df")
    names = [str(n) for n in neuron_names]
    if "neuron" not in df.columns:
        if len(names) > 1:
            raise KeyError("fig_head_ablation_summary: `df` needs a `neuron` column for several neurons")
        df = df.assign(neuron=names[0] if names else "")
    fig = go.Figure()
    base_layout(
        fig,
        f"{title_kind}: mean activation over the second copy with head sets ablated",
        "neuron",
        "mean activation over the second copy",
        legend=legend_below(),
    )
    fig.update_layout(margin={"b": 130})
    if df.empty or not names:
        return no_data(fig)
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
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    name=name,
                    line={"color": CLEAN_COLOR, "width": 2.5, "dash": dash},
                    hovertemplate=name + " = %{y:.4g}<extra></extra>",
                )
            )

    ref_lines(means[means["kind"] == "clean"].drop_duplicates("neuron"), CLEAN_TRACE, "solid")
    ref_lines(first_means[first_means["kind"] == "clean"], "clean, first-copy mean", "dot")
    base = means[means["kind"] == "baseline"]
    if not base.empty:
        fig.add_trace(
            go.Scatter(
                x=[xi[n] + 0.2 for n in base["neuron"]],
                y=floats(base["activation"]),
                mode="markers",
                name="baseline head sets",
                text=[f"{n}: {hs}" for n, hs in zip(base["neuron"], base["head_set"])],
                marker={"color": BASELINE_COLOR, "size": 7, "opacity": 0.8},
                hovertemplate="%{text}<br>%{y:.4g}<extra></extra>",
            )
        )
    ind = means[means["kind"] == "induction"]
    sets = list(pd.unique(ind["head_set"]))
    for j, hs in enumerate(sets):
        shift = -0.25 + 0.2 * j / max(len(sets) - 1, 1)
        rows = ind[ind["head_set"] == hs]
        fig.add_trace(
            go.Scatter(
                x=[xi[n] + shift for n in rows["neuron"]],
                y=floats(rows["activation"]),
                mode="markers",
                name=f"induction: {hs}",
                marker={
                    "color": INDUCTION_PALETTE[j % len(INDUCTION_PALETTE)],
                    "size": 9,
                    "line": {"color": OUTLINE_COLOR, "width": 0.5},
                },
                hovertemplate=f"induction {hs}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_xaxes(
        tickvals=list(xi.values()), ticktext=[escape_text(n) for n in names], range=[-0.6, len(names) - 0.4]
    )
    return fig
