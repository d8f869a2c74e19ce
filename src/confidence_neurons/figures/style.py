"""The shared look of every figure: colours, trace names, template, layout and small helpers.

Every figure module (:mod:`~confidence_neurons.figures.entropy` for Fig. 1-2,
:mod:`~confidence_neurons.figures.frequency` for Fig. 3, :mod:`~confidence_neurons.figures.activity`
for Fig. 4, :mod:`~confidence_neurons.figures.induction` for Fig. 5 and 9-14) takes its colours,
names and layout from here, so one meaning has one name and one value:

* entropy neurons: trace :data:`ENTROPY_TRACE`, red :data:`ENTROPY_COLOR`, labelled;
* token frequency neurons: green :data:`FREQ_COLOR`;
* every other neuron: trace :data:`OTHER_TRACE`, grey :data:`OTHER_COLOR`;
* the random-neuron baseline: :data:`RANDOM_TRACE` (group and trace label), grey :data:`RANDOM_COLOR`;
* the ``plotly_white`` template (:data:`TEMPLATE`), a left-aligned title naming the paper figure
  and a 900 x 560 canvas (:func:`base_layout`);
* dashed grey reference lines at zero or at a threshold (:data:`ZERO_LINE`, :func:`hline`, :func:`vline`);
* a boxed note at the top when a figure has nothing to highlight (:func:`note`).

Figures use only the Plotly subset that :mod:`confidence_neurons.figures.png` can draw.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

__all__ = [
    "DIRECT_EFFECT_COLOR",
    "ENTROPY_COLOR",
    "ENTROPY_EDGE_COLOR",
    "ENTROPY_TRACE",
    "FREQ_COLOR",
    "LOSS_EFFECT_COLOR",
    "MUTED_TEXT_COLOR",
    "NO_ENTROPY_TEXT",
    "OTHER_COLOR",
    "OTHER_TRACE",
    "OUTLINE_COLOR",
    "RANDOM_COLOR",
    "RANDOM_TRACE",
    "TEMPLATE",
    "ZERO_LINE",
    "base_layout",
    "check_columns",
    "escape_text",
    "flag",
    "floats",
    "hline",
    "hover_data",
    "label_positions",
    "legend_below",
    "note",
    "vline",
]

TEMPLATE = "plotly_white"

ENTROPY_COLOR = "#d62728"  # red
ENTROPY_EDGE_COLOR = "#7f0000"  # dark red outline of entropy-neuron markers
FREQ_COLOR = "#2ca02c"  # green
OTHER_COLOR = "#9e9e9e"  # grey
RANDOM_COLOR = "#7f7f7f"  # darker grey: the random-neuron baseline
LOSS_EFFECT_COLOR = "#4c72b0"  # boxes of an ablation's effect on the loss (TE in Fig. 2c/3c, Δ loss in Fig. 5b)
DIRECT_EFFECT_COLOR = "#dd8452"  # boxes of the direct effect (DE in Fig. 2c, DE_freq in Fig. 3c)
OUTLINE_COLOR = "#333333"  # outline of highlighted markers, separator lines
MUTED_TEXT_COLOR = "#555555"  # notes and secondary annotations

ENTROPY_TRACE = "entropy neurons"
OTHER_TRACE = "other neurons"
RANDOM_TRACE = "random neurons"
NO_ENTROPY_TEXT = "no entropy neurons under the current rule"

ZERO_LINE = {"color": "rgba(60,60,60,0.6)", "width": 1.2, "dash": "dash"}


# --------------------------------------------------------------------------- data


def floats(series: pd.Series) -> np.ndarray:
    """A column as a float array (non-numeric values -> NaN)."""
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def flag(df: pd.DataFrame, col: str) -> np.ndarray:
    """Boolean mask from a flag column; a missing column or missing values count as False."""
    if col not in df.columns:
        return np.zeros(len(df), dtype=bool)
    return df[col].fillna(False).to_numpy(dtype=bool)


def check_columns(df: pd.DataFrame, cols: Sequence[str], func: str, arg: str = "neurons") -> None:
    """Raise KeyError naming ``func``, its argument ``arg`` and the missing columns."""
    missing = sorted(set(cols) - set(df.columns))
    if missing:
        raise KeyError(f"{func}: `{arg}` lacks column(s) {missing}")


def escape_text(text: object) -> str:
    """User text (labels, model and corpus names, neuron labels, token strings) made inert for both
    Plotly's pseudo-HTML (titles, legends, hover text, annotations) and HTML: ``<``, ``>``, ``&`` and
    quotes become entities, so ``<a href=...>`` or ``<b>`` shows as typed and is never a live tag, and
    ``%`` becomes ``&#37;`` so a ``%{...}`` in a label is not a hover-template field. Plotly draws the
    entities as the characters they stand for. Apply it once, where the text enters a figure.
    """
    return html.escape("" if text is None else str(text), quote=True).replace("%", "&#37;")


def hover_data(
    df: pd.DataFrame, fields: tuple[tuple[str, str], ...] = (("TE", "TE"), ("DE", "DE"), ("rho", "ρ"))
) -> tuple[np.ndarray, str]:
    """Customdata (name, then each (column, label) of ``fields``) and a matching hover template;
    a missing column shows as NaN.
    """
    custom = np.empty((len(df), 1 + len(fields)), dtype=object)
    custom[:, 0] = [escape_text(n) for n in df["name"].astype(str)]
    for j, (col, _) in enumerate(fields, start=1):
        custom[:, j] = floats(df[col]) if col in df else np.full(len(df), np.nan)
    template = "<b>%{customdata[0]}</b>" + "".join(
        f"<br>{label} = %{{customdata[{j}]:.4g}}" for j, (_, label) in enumerate(fields, start=1)
    )
    return custom, template


def label_positions(x: np.ndarray) -> list[str]:
    """Alternate labels above/below the points, in x order, so neighbours overlap less."""
    order = np.argsort(np.nan_to_num(x, nan=np.inf), kind="stable")
    pos = [""] * len(x)
    for rank, i in enumerate(order):
        pos[i] = "top center" if rank % 2 == 0 else "bottom center"
    return pos


# --------------------------------------------------------------------------- layout


def legend_below(y: float = -0.18) -> dict:
    """A horizontal legend under the plot (leave room with a larger bottom margin)."""
    return {"orientation": "h", "x": 0.0, "y": y}


def base_layout(fig: go.Figure, title: str, xtitle: str, ytitle: str, **extra) -> go.Figure:
    """Template, left-aligned title, axis titles, vertical legend, margins and 900 x 560 size; ``extra``
    overrides or adds layout settings.
    """
    settings = {
        "template": TEMPLATE,
        "title": {"text": title, "x": 0.02, "xanchor": "left"},
        "xaxis_title": xtitle,
        "yaxis_title": ytitle,
        "legend": {"orientation": "v"},
        "margin": {"l": 70, "r": 30, "t": 70, "b": 60},
        "width": 900,
        "height": 560,
    }
    settings.update(extra)
    fig.update_layout(**settings)
    return fig


def note(fig: go.Figure, text: str) -> None:
    """A boxed note at the top centre of the plot (e.g. "no ... neurons under the current rule")."""
    fig.add_annotation(
        text=text,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.98,
        xanchor="center",
        yanchor="top",
        showarrow=False,
        font={"size": 13, "color": MUTED_TEXT_COLOR},
        bgcolor="rgba(255,255,255,0.85)",
        bordercolor="#bbbbbb",
        borderwidth=1,
    )


def hline(fig: go.Figure, y: float = 0) -> None:
    """A dashed grey horizontal line across the plot at ``y``."""
    fig.add_shape(type="line", xref="paper", yref="y", x0=0, x1=1, y0=y, y1=y, line=ZERO_LINE)


def vline(fig: go.Figure, x: float = 0) -> None:
    """A dashed grey vertical line over the full height at ``x``."""
    fig.add_shape(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=ZERO_LINE)
