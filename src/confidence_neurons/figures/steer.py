"""Figures of ``steer``: the neuron dial against temperature scaling (beyond the paper).

Each takes the run's tables (``commands.steer.SteerResult``) and returns a Plotly figure; no I/O.
Neuron dials are red shades, temperature scaling blue (:data:`TEMPERATURE_COLOR`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.style import (
    ENTROPY_COLOR,
    LOSS_EFFECT_COLOR,
    MUTED_TEXT_COLOR,
    OUTLINE_COLOR,
    ZERO_LINE,
    base_layout,
    escape_text,
    legend_below,
    note,
)

TEMPERATURE_COLOR = LOSS_EFFECT_COLOR
#: Colours of the dials in order (the first, the primary dial, is the entropy-neuron red).
DIAL_COLORS = (ENTROPY_COLOR, "#ff7f0e", "#8c564b", "#e377c2", "#bcbd22", "#9467bd", "#17becf")

__all__ = [
    "fig_entropy_accuracy_vs_alpha",
    "fig_implied_histogram",
    "fig_implied_vs_confidence",
    "fig_nll_vs_ece",
    "fig_reliability",
]


def _dial_color(i: int) -> str:
    return DIAL_COLORS[i % len(DIAL_COLORS)]


def fig_nll_vs_ece(table: pd.DataFrame) -> go.Figure:
    """Mean NLL against ECE on the measuring part, for every dial over alpha and for temperature over
    T; fitted settings drawn large. Down and left is better: which dial buys more calibration per nat?
    """
    fig = go.Figure()
    fitted = table[table["fitted"]]
    fig.add_trace(  # white discs with a dark ring, drawn first so that the settings' own markers sit on them
        go.Scatter(
            x=fitted["nll"],
            y=fitted["ece"],
            mode="markers",
            name="fitted on the fitting part",
            marker={"size": 16, "color": "#ffffff", "line": {"color": OUTLINE_COLOR, "width": 2}},
        )
    )
    grid = table[~table["fitted"]]
    for i, (dial, rows) in enumerate(grid[grid["kind"] == "neuron dial"].groupby("dial", sort=False)):
        rows = rows.sort_values("alpha")
        fig.add_trace(
            go.Scatter(
                x=rows["nll"],
                y=rows["ece"],
                mode="lines+markers+text",
                name=f"neuron dial {escape_text(dial)}",
                text=[f"α={a:g}" for a in rows["alpha"]],
                textposition="top center",
                textfont={"size": 10, "color": _dial_color(i)},
                line={"color": _dial_color(i), "width": 2},
                marker={"size": 7, "color": _dial_color(i)},
            )
        )
    temp = grid[grid["kind"] == "temperature"].sort_values("T")
    fig.add_trace(
        go.Scatter(
            x=temp["nll"],
            y=temp["ece"],
            mode="lines+markers+text",
            name="temperature scaling",
            text=[f"T={t:g}" for t in temp["T"]],
            textposition="bottom center",
            textfont={"size": 10, "color": TEMPERATURE_COLOR},
            line={"color": TEMPERATURE_COLOR, "width": 2, "dash": "dash"},
            marker={"size": 7, "color": TEMPERATURE_COLOR},
        )
    )
    # Zoom on the neuron dials: temperatures far from 1 cost whole nats and would squash them.
    near = table[table["kind"] != "temperature"] if (table["kind"] != "temperature").any() else table
    near = pd.concat([near, fitted])
    x0, x1 = float(near["nll"].min()), float(near["nll"].max())
    y0, y1 = float(near["ece"].min()), float(near["ece"].max())
    dx, dy = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    cut = int(((temp["nll"] > x1 + dx) | (temp["ece"] > y1 + dy)).sum())
    if cut:
        note(fig, f"{cut} temperature settings lie beyond the plotted range (see the table)")
    return base_layout(
        fig,
        "Loss against calibration: the neuron dial and temperature scaling (held-out text)",
        "mean NLL (nats)",
        "expected calibration error",
        xaxis={"range": [x0 - 0.3 * dx, x1 + dx]},
        yaxis={"range": [max(0.0, y0 - 0.3 * dy), y1 + dy]},
        legend=legend_below(-0.2),
        margin={"l": 70, "r": 30, "t": 70, "b": 120},
    )


def fig_reliability(reliability: pd.DataFrame, curves: dict[str, str]) -> go.Figure:
    """Reliability diagram (accuracy against confidence per equal-mass bin) of the settings in
    ``curves`` ({trace name: setting label}), with the diagonal of perfect calibration.
    """
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={**ZERO_LINE, "dash": "dot"})
    )
    colors = (MUTED_TEXT_COLOR, ENTROPY_COLOR, "#ff7f0e", TEMPERATURE_COLOR, "#2ca02c", "#9467bd")
    for i, (name, label) in enumerate(curves.items()):
        rows = reliability[reliability["label"] == label].sort_values("bin")
        fig.add_trace(
            go.Scatter(
                x=rows["confidence"],
                y=rows["accuracy"],
                mode="lines+markers",
                name=name,
                line={"color": colors[i % len(colors)], "width": 2, "dash": "dash" if "T=" in label else "solid"},
                marker={"size": 7, "color": colors[i % len(colors)]},
            )
        )
    return base_layout(
        fig,
        "Reliability diagram (equal-mass bins, held-out text)",
        "mean confidence (top-1 probability) in the bin",
        "accuracy in the bin",
        xaxis={"range": [0, 1]},
        yaxis={"range": [0, 1]},
    )


def fig_entropy_accuracy_vs_alpha(table: pd.DataFrame) -> go.Figure:
    """Mean entropy (left axis, solid) and top-1 accuracy (right axis, dotted) against alpha, per dial."""
    fig = go.Figure()
    grid = table[(table["kind"] == "neuron dial") & ~table["fitted"]]
    for i, (dial, rows) in enumerate(grid.groupby("dial", sort=False)):
        rows = rows.sort_values("alpha")
        c = _dial_color(i)
        fig.add_trace(
            go.Scatter(
                x=rows["alpha"],
                y=rows["entropy"],
                mode="lines+markers",
                name=f"entropy, {escape_text(dial)}",
                line={"color": c},
            )
        )
        fig.add_trace(
            go.Scatter(
                x=rows["alpha"],
                y=rows["accuracy"],
                mode="lines+markers",
                name=f"accuracy, {escape_text(dial)}",
                yaxis="y2",
                line={"color": c, "dash": "dot"},
            )
        )
    fig.add_shape(type="line", xref="x", yref="paper", x0=1, x1=1, y0=0, y1=1, line=ZERO_LINE)
    return base_layout(
        fig,
        "Entropy and accuracy against alpha (alpha = 1: clean; 0: mean ablation)",
        "alpha",
        "mean entropy (nats)",
        yaxis2={"title": "top-1 accuracy", "overlaying": "y", "side": "right"},
        legend=legend_below(-0.2),
        margin={"l": 70, "r": 70, "t": 70, "b": 130},
    )


def fig_implied_histogram(implied: pd.DataFrame, bins: int = 40) -> go.Figure:
    """Histogram (share of clipped tokens) of the implied temperature, log2 scale, one step line per dial."""
    fig = go.Figure()
    clipped = implied[implied["clipped"] & np.isfinite(implied["T_implied"])]
    if clipped.empty:
        note(fig, "clipping changed no token: no implied temperatures")
        return base_layout(fig, "Implied temperature of the clipped ablation", "log2 T", "share of tokens")
    logT = np.log2(clipped["T_implied"].to_numpy())
    lo, hi = float(logT.min()), float(logT.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, bins + 1)
    for i, (dial, rows) in enumerate(clipped.groupby("dial", sort=False)):
        counts, _ = np.histogram(np.log2(rows["T_implied"].to_numpy()), bins=edges)
        share = counts / max(counts.sum(), 1)
        x = np.repeat(edges, 2)[1:-1]
        y = np.repeat(share, 2)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=dial, line={"color": _dial_color(i), "width": 2}))
    fig.add_shape(type="line", xref="x", yref="paper", x0=0, x1=0, y0=0, y1=1, line=ZERO_LINE)
    return base_layout(
        fig,
        "Implied temperature of the clipped ablation (T < 1: removing the neuron sharpens the output)",
        "log2 T_implied",
        "share of clipped tokens",
        legend=legend_below(-0.18),
        margin={"l": 70, "r": 30, "t": 70, "b": 110},
    )


def fig_implied_vs_confidence(implied: pd.DataFrame, dial: str, n_bins: int = 10) -> go.Figure:
    """T_implied of one dial's clipped tokens in equal-mass bins of the clean confidence (boxes)."""
    fig = go.Figure()
    rows = implied[(implied["dial"] == dial) & implied["clipped"] & np.isfinite(implied["T_implied"])]
    title = f"Implied temperature against clean confidence ({escape_text(dial)}, clipped tokens)"
    if len(rows) < n_bins:
        note(fig, "too few clipped tokens to bin")
        return base_layout(fig, title, "clean confidence", "T_implied")
    rows = rows.sort_values("clean_confidence", kind="stable")
    names = []
    for part in np.array_split(np.arange(len(rows)), n_bins):
        sub = rows.iloc[part]
        name = f"{sub['clean_confidence'].iloc[0]:.2f}-{sub['clean_confidence'].iloc[-1]:.2f}"
        names.append(name)
        fig.add_trace(
            go.Box(
                x=[name] * len(sub),
                y=sub["T_implied"],
                name=name,
                boxpoints=False,
                marker={"color": ENTROPY_COLOR},
                line={"color": ENTROPY_COLOR},
                showlegend=False,
            )
        )
    fig.add_shape(type="line", xref="paper", yref="y", x0=0, x1=1, y0=1, y1=1, line=ZERO_LINE)
    return base_layout(
        fig,
        title,
        "clean top-1 probability (equal-mass bins)",
        "T_implied",
        xaxis={"categoryorder": "array", "categoryarray": names},
    )
