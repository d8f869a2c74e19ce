"""Entropy neurons on naturally repeated n-grams (Stolfo et al. 2024, App. H Fig. 9a/9b/9c).

The x axis reads A0..A5, B (first occurrence of an n-gram and the token after it), a gap, then
A0..A5, X (the second occurrence); the second occurrence is shaded.  Pure: the table of
``natural_induction_effects`` in, :class:`plotly.graph_objects.Figure` out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.activity import MAX_ACTIVITY_POINTS, fig_loss_change_vs_initial
from confidence_neurons.figures.induction.common import NeuronKind, band, neuron_palette, no_data, shade_from
from confidence_neurons.figures.style import (
    MUTED_TEXT_COLOR,
    base_layout,
    check_columns,
    escape_text,
    hline,
    legend_below,
)

__all__ = ["fig_natural_induction", "fig_natural_induction_entropy", "fig_natural_loss_change", "natural_x_layout"]


_NAT_COLS = ("seq", "neuron", "occurrence", "label", "offset")


def natural_x_layout(n: int) -> tuple[dict[tuple[str, int], float], list[float], list[str]]:
    """X positions of Fig. 9: first occurrence A0..A{n-1}, B at 0..n, a gap, second A0..A{n-1}, X.

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
    check_columns(effects, _NAT_COLS, func, "effects")
    neurons = list(pd.unique(effects["neuron"]))
    names = [escape_text(n) for n in names]
    if len(names) != len(neurons):
        raise ValueError(
            f"{func}: names ({len(names)}) must label each neuron of `effects` in order of "
            f"appearance ({len(neurons)}: {neurons})"
        )
    n = int(pd.to_numeric(effects["offset"]).max()) if len(effects) else 0
    return neurons, names, n


def _natural_layout(fig: go.Figure, n: int, title: str, ytitle: str) -> None:
    base_layout(
        fig, title, "position in the repeated n-gram (A0..A5), B / X: the token after it", ytitle, legend=legend_below()
    )
    fig.update_layout(margin={"b": 120})
    if n:
        _, vals, text = natural_x_layout(n)
        fig.update_xaxes(tickvals=vals, ticktext=text, range=[-0.6, 2 * n + 2.6])
        fig.add_annotation(
            text="first occurrence",
            xref="x",
            yref="paper",
            x=n / 2,
            y=1.0,
            xanchor="center",
            yanchor="bottom",
            showarrow=False,
            font={"size": 11, "color": MUTED_TEXT_COLOR},
        )
        shade_from(fig, n + 1.5, 2 * n + 2.6, label="second occurrence")


def _natural_line(stats: pd.DataFrame, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, se) as float arrays over both occurrences, with a break (NaN) between them."""
    xs, _, _ = natural_x_layout(n)
    x, m, s = [], [], []
    for occ in ("first", "second"):
        part = stats[stats["occurrence"] == occ].sort_values("offset")
        x += [xs[(occ, int(o))] for o in part["offset"]] + [None]
        m += part["mean"].tolist() + [None]
        s += part["se"].tolist() + [None]
    return tuple(np.array([np.nan if v is None else v for v in a[:-1]], dtype=float) for a in (x, m, s))


def _mean_se_by(df: pd.DataFrame, col: str) -> pd.DataFrame:
    g = df.groupby(["occurrence", "offset"])[col]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["se"] = out["std"] / np.sqrt(out["count"])
    return out


def fig_natural_induction(effects: pd.DataFrame, names: Sequence[str], *, kind: NeuronKind = "entropy") -> go.Figure:
    """Fig. 9a: mean activation at A0..A5, B (first occurrence) and A0..A5, X (second).

    ``effects`` is ``natural_induction_effects``' table (one row per sequence, neuron,
    occurrence and label); ``names[k]`` labels the k-th neuron in order of appearance
    (the ``neurons`` passed to it).  One solid line per neuron (mean over sequences,
    broken between the occurrences) with faint mean ± SE lines; the second occurrence
    is shaded.
    """
    neurons, names, n = _natural_groups(effects, names, "fig_natural_induction")
    check_columns(effects, ("activation",), "fig_natural_induction", "effects")
    palette = neuron_palette(kind)
    fig = go.Figure()
    _natural_layout(
        fig,
        n,
        f"Fig. 9a analogue: mean activation at naturally repeated n-grams (n = {effects['seq'].nunique()} sequences)",
        "mean activation",
    )
    if effects.empty:
        return no_data(fig)
    for k, (neuron, name) in enumerate(zip(neurons, names)):
        color = palette[k % len(palette)]
        xf, mean, se = _natural_line(_mean_se_by(effects[effects["neuron"] == neuron], "activation"), n)
        fig.add_traces(band(xf, mean, se, color, name))
        fig.add_trace(
            go.Scatter(
                x=xf,
                y=mean,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": color, "width": 2},
                marker={"color": color, "size": 6},
                hovertemplate=f"{name}<br>activation = %{{y:.4g}}<extra></extra>",
            )
        )
    return fig


#: Figure words for ``natural_induction_effects``' ``ablation``.
NATURAL_ABLATION_WORDS = {
    "authors": "mean-ablation to the plain-text mean (authors')",
    "toolkit": "clip mean-ablation to the first-copy mean (toolkit)",
}


def fig_natural_induction_entropy(
    effects: pd.DataFrame,
    names: Sequence[str],
    *,
    relative: bool = True,
    kind: NeuronKind = "entropy",
    ablation: str = "toolkit",
) -> go.Figure:
    """Fig. 9b: change of entropy on ablation (``ablation``: ``NATURAL_ABLATION_WORDS``) at A0..A5, B and A0..A5, X.

    With ``relative`` (default) y = 100 · mean ΔH / mean clean H over sequences at each
    label (%, like Fig. 5b); otherwise the mean ΔH in nats with faint mean ± SE
    lines.  Layout as :func:`fig_natural_induction`.
    """
    neurons, names, n = _natural_groups(effects, names, "fig_natural_induction_entropy")
    check_columns(effects, ("delta_entropy", "entropy"), "fig_natural_induction_entropy", "effects")
    palette = neuron_palette(kind)
    fig = go.Figure()
    ytitle = (
        "relative change of entropy, 100 · ΔH / H (%)"
        if relative
        else "mean change of entropy ΔH, ablated − clean (nats)"
    )
    _natural_layout(
        fig,
        n,
        f"Fig. 9b analogue: change of entropy on {NATURAL_ABLATION_WORDS[ablation]} at naturally repeated n-grams",
        ytitle,
    )
    if effects.empty:
        return no_data(fig)
    hline(fig)
    for k, (neuron, name) in enumerate(zip(neurons, names)):
        color = palette[k % len(palette)]
        rows = effects[effects["neuron"] == neuron]
        stats = _mean_se_by(rows, "delta_entropy")
        if relative:
            h = rows.groupby(["occurrence", "offset"])["entropy"].mean().rename("h").reset_index()
            stats = stats.merge(h, on=["occurrence", "offset"])
            stats["mean"] = 100 * stats["mean"] / stats["h"]
            stats["se"] = 100 * stats["se"] / stats["h"]
        xf, mean, se = _natural_line(stats, n)
        if not relative:
            fig.add_traces(band(xf, mean, se, color, name))
        unit = "%" if relative else " nats"
        fig.add_trace(
            go.Scatter(
                x=xf,
                y=mean,
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": color, "width": 2},
                marker={"color": color, "size": 6},
                hovertemplate=f"{name}<br>ΔH = %{{y:.4g}}{unit}<extra></extra>",
            )
        )
    return fig


def fig_natural_loss_change(
    effects: pd.DataFrame,
    neuron: int,
    neuron_name: str,
    *,
    occurrence: str = "second",
    max_points: int = MAX_ACTIVITY_POINTS,
    seed: int = 0,
    ablation: str = "toolkit",
) -> go.Figure:
    """Fig. 9c: per token, the change of loss on ablation (``ablation``) of one neuron against the
    initial (clean) loss, coloured by the reciprocal rank of the correct token.

    ``effects`` is ``natural_induction_effects``' table; its rows of ``neuron`` at ``occurrence``
    (``"second"``: A0..A5, X of the second occurrence, where induction predicts, as the synthetic
    Fig. 10c reads the second copy; ``"both"``: every labelled position) are drawn by
    :func:`~confidence_neurons.figures.activity.fig_loss_change_vs_initial` (only clipped tokens
    change, so only they are shown). Hover labels use the ``token`` / ``target`` text when the
    table has it, else the ids, else the label.
    """
    check_columns(
        effects,
        ("seq", "neuron", "occurrence", "label", "position", "loss", "delta_loss", "reciprocal_rank", "clipped"),
        "fig_natural_loss_change",
        "effects",
    )
    if occurrence not in ("second", "both"):
        raise ValueError(f"occurrence must be 'second' or 'both', got {occurrence!r}")
    rows = effects[effects["neuron"] == neuron]
    if occurrence == "second":
        rows = rows[rows["occurrence"] == "second"]

    def text(col: str, fallback: str) -> pd.Series:
        if col in rows.columns:
            return rows[col].astype(str)
        if f"{col}_id" in rows.columns:
            return "#" + rows[f"{col}_id"].astype(str)
        return rows[fallback].astype(str) if fallback in rows.columns else pd.Series("", index=rows.index)

    tokens = pd.DataFrame(
        {
            "seq": rows["seq"],
            "pos": rows["position"],
            "token": text("token", "label"),
            "target": text("target", "label"),
            "initial_loss": rows["loss"],
            "delta_loss": rows["delta_loss"],
            "reciprocal_rank": rows["reciprocal_rank"],
            "clipped": rows["clipped"],
        }
    )
    fig = fig_loss_change_vs_initial(tokens, neuron_name, max_points=max_points, seed=seed)
    where = "the second occurrence (A0..A5, X)" if occurrence == "second" else "both occurrences"
    n_clipped = int(tokens["clipped"].astype(bool).sum())
    count = f"{n_clipped:,} clipped tokens of {len(tokens):,}" if ablation == "toolkit" else f"{len(tokens):,} tokens"
    fig.update_layout(
        title_text=f"Fig. 9c analogue: change of loss on {NATURAL_ABLATION_WORDS[ablation]} of "
        f"{escape_text(neuron_name)} "
        f"vs initial loss, naturally repeated n-grams, {where} ({count})"
    )
    return fig
