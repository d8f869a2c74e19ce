"""Figures comparing scans (App. E-G): W_U spectra on one normalised axis (Fig. 6), and one panel
per model, all on the same axes, of rho against 1 - DE/TE (Fig. 7) and of 1 - DE_freq/TE against
|dKL| (Fig. 8).

A panel is one figure (the PNG export draws one pair of axes per figure, and the paper's Fig. 7 and
8 are separate panels too); panels of one figure number share their x and y ranges and colour scale,
so they read as one figure. Pure functions: data in, ``Figure`` out. Labels are user text (``--labels``
or model folder names) and enter every title, legend and hover text through ``style.escape_text``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.entropy import fig_rho_vs_ln_share
from confidence_neurons.figures.frequency import XTITLE_3B, fig_freq_share_vs_dkl
from confidence_neurons.figures.style import (
    base_layout,
    check_columns,
    escape_text,
    flag,
    floats,
    legend_below,
    note,
)

__all__ = ["fig6_spectra", "fig7_panels", "fig8_panels", "panel_stem", "shared_range"]

#: One colour per model in Fig. 6 (cycled beyond ten).
MODEL_COLORS = (
    "#1f4e9c",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
NO_FREQ_ANALYSIS_TEXT = "no token frequency analysis in this scan"


def panel_stem(prefix: str, i: int, label: str) -> str:
    """A figure file stem for panel ``i`` (1-based) of ``label``: letters, digits, '-' and '_' only."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")[:40]
    return f"{prefix}_{i}_{slug}" if slug else f"{prefix}_{i}"


def shared_range(values: np.ndarray, keep: np.ndarray, *, low_q: float = 0.01, pad: float = 0.05) -> list[float]:
    """[lo, hi] covering every finite value from the ``low_q`` quantile up, and every ``keep`` value.

    1 - DE/TE and 1 - DE_freq/TE explode downwards where TE is near 0; those few points lie below
    the range rather than squeezing every panel.
    """
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return [0.0, 1.0]
    lo = float(np.quantile(finite, low_q))
    kept = v[np.asarray(keep, dtype=bool) & np.isfinite(v)]
    if kept.size:
        lo = min(lo, float(kept.min()))
    hi = float(finite.max())
    span = max(hi - lo, 1e-9)
    return [lo - pad * span, hi + pad * span]


def fig6_spectra(spectra: pd.DataFrame, *, normalised: bool = True) -> go.Figure:
    """Fig. 6 analogue: each model's W_U singular values against the index divided by d_model, so
    models of any width share one axis; ``normalised`` divides them by their median (the shapes
    compare), else they are drawn raw (App. E's "generally lower" singular values of a model show).
    """
    check_columns(spectra, ["label", "index", "singular_value", "rel_index", "rel_value"], "fig6_spectra", "spectra")
    fig = go.Figure()
    ycol = "rel_value" if normalised else "singular_value"
    for i, (label, group) in enumerate(spectra.groupby("label", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=floats(group["rel_index"]),
                y=floats(group[ycol]),
                mode="lines",
                name=escape_text(label),
                line={"color": MODEL_COLORS[i % len(MODEL_COLORS)], "width": 2.5},
                customdata=np.stack([floats(group["index"]), floats(group["singular_value"])], axis=-1),
                hovertemplate=f"<b>{escape_text(label)}</b><br>index %{{customdata[0]:.0f}}"
                "<br>σ = %{customdata[1]:.4g}"
                + ("<br>σ / median = %{y:.4g}" if normalised else "")
                + "<extra></extra>",
            )
        )
    base_layout(
        fig,
        "Fig. 6 analogue: singular values of W_U, every model on one normalised axis"
        if normalised
        else "Fig. 6 analogue: raw singular values of W_U (not normalised), every model on one index axis",
        "singular value index / d_model (descending order)",
        "singular value / median singular value" if normalised else "singular value σ",
        legend=legend_below(),
    )
    fig.update_layout(margin={"b": 110})
    return fig


def _panel_title(fig_no: str, what: str, label: str, i: int, n: int) -> str:
    return f"Fig. {fig_no} analogue ({i}/{n}): {what}, {escape_text(label)}"


def fig7_panels(neurons: pd.DataFrame, table: pd.DataFrame) -> dict[str, go.Figure]:
    """Fig. 7 analogue: Fig. 2e (rho against 1 - DE/TE, colour |dH|) for each model, same axes and scale."""
    check_columns(neurons, ["label", "rho", "ln_share", "abs_delta_entropy", "is_entropy_neuron"], "fig7_panels")
    ent = flag(neurons, "is_entropy_neuron")
    rho_hi = float(np.nanmax(floats(neurons["rho"]))) if len(neurons) else 1.0
    x_range = [0.0, max(rho_hi, 1e-9) * 1.05]
    y_range = shared_range(floats(neurons["ln_share"]), ent)
    dh = floats(neurons["abs_delta_entropy"])
    dh = dh[np.isfinite(dh)]
    cmin, cmax = (float(dh.min()), float(dh.max())) if dh.size else (0.0, 1.0)
    k_of = dict(zip(table["label"], table["k"]))
    labels = list(table["label"])
    out = {}
    for i, label in enumerate(labels, start=1):
        panel = neurons[neurons["label"] == label]
        fig = fig_rho_vs_ln_share(panel, int(k_of[label]))
        fig.update_layout(
            title={"text": _panel_title("7", f"ρ (k={int(k_of[label])}) against 1 − DE/TE", label, i, len(labels))},
            coloraxis={"cmin": cmin, "cmax": max(cmax, cmin + 1e-9)},
        )
        fig.update_xaxes(range=x_range)
        fig.update_yaxes(range=y_range)
        out[panel_stem("fig7_rho_vs_ln_share", i, label)] = fig
    return out


def fig8_panels(neurons: pd.DataFrame, labels: list[str]) -> dict[str, go.Figure]:
    """Fig. 8 analogue: Fig. 3b (1 - DE_freq/TE against mean |dKL(P_freq || P_model)|) for each model,
    same axes.
    """
    check_columns(neurons, ["label", "freq_share", "abs_delta_kl"], "fig8_panels")
    flagged = flag(neurons, "is_token_frequency_neuron") | flag(neurons, "is_entropy_neuron")
    x_range = shared_range(floats(neurons["freq_share"]), flagged)
    x_range[1] = max(x_range[1], 0.05)
    kl = floats(neurons["abs_delta_kl"])
    kl = kl[np.isfinite(kl)]
    y_range = [0.0, (float(kl.max()) if kl.size else 1.0) * 1.05 or 1.0]
    out = {}
    for i, label in enumerate(labels, start=1):
        panel = neurons[neurons["label"] == label]
        fig = fig_freq_share_vs_dkl(panel)
        x = floats(panel["freq_share"])
        hidden = int((np.isfinite(x) & (x < x_range[0])).sum())
        xtitle = XTITLE_3B + (f"<br>({hidden} neuron(s) lie left of the axis, typically TE ≈ 0)" if hidden else "")
        fig.update_layout(title={"text": _panel_title("8", "1 − DE_freq/TE against |ΔKL|", label, i, len(labels))})
        fig.update_xaxes(range=x_range, title_text=xtitle)
        fig.update_yaxes(range=y_range)
        if not np.isfinite(x).any():
            note(fig, NO_FREQ_ANALYSIS_TEXT)
        out[panel_stem("fig8_freq_share_vs_dkl", i, label)] = fig
    return out
