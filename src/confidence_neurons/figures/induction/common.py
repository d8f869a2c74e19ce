"""What the induction figures (Stolfo et al. 2024, Fig. 5, 9-14) share: palettes, the second copy, SE bands.

Positions follow :mod:`confidence_neurons.figures.induction`: a synthetic sequence is
``[BOS] t_1..t_T t_1..t_T`` and :func:`second_copy_start` finds where the second copy starts.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import plotly.graph_objects as go

from confidence_neurons.figures.style import note

__all__ = [
    "BAND_OPACITY",
    "ENTROPY_PALETTE",
    "FREQ_PALETTE",
    "NO_DATA_TEXT",
    "NeuronKind",
    "SECOND_COPY_COLOR",
    "SECOND_COPY_FILL",
    "band",
    "neuron_palette",
    "no_data",
    "second_copy_start",
    "shade_from",
]

NeuronKind = Literal["entropy", "frequency"]

NO_DATA_TEXT = "no data to show"
SECOND_COPY_COLOR = "#1f77b4"  # label of the second copy (and its fill, below, at 8%)
SECOND_COPY_FILL = "rgba(31, 119, 180, 0.08)"
ENTROPY_PALETTE = ("#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#7f0000", "#bcbd22", "#ff9896", "#9467bd")
FREQ_PALETTE = ("#2ca02c", "#17becf", "#006400", "#bcbd22", "#98df8a", "#9467bd", "#8c564b", "#e377c2")
BAND_OPACITY = 0.35


def second_copy_start(seq_len: int, half_len: int) -> int:
    """Token index where the second copy starts in a sequence of ``seq_len`` tokens (BOS counted)."""
    if half_len < 1:
        raise ValueError(f"half_len must be >= 1, got {half_len}")
    offset = int(seq_len) - 2 * int(half_len)
    if offset not in (0, 1):
        raise ValueError(
            f"a sequence of {seq_len} tokens is not two copies of {half_len} tokens "
            "(with or without a BOS token); pass the half_len the sequences were built with"
        )
    return offset + int(half_len)


def neuron_palette(kind: str) -> tuple[str, ...]:
    """:data:`ENTROPY_PALETTE` for ``"entropy"``, :data:`FREQ_PALETTE` for ``"frequency"``."""
    if kind not in ("entropy", "frequency"):
        raise ValueError(f"kind must be 'entropy' or 'frequency', got {kind!r}")
    return ENTROPY_PALETTE if kind == "entropy" else FREQ_PALETTE


def shade_from(fig: go.Figure, x0: float, x1: float, label: str = "second copy") -> None:
    """Shade x0..x1 (data x, full height) and label it at the top."""
    fig.add_shape(
        type="rect",
        xref="x",
        yref="paper",
        x0=x0,
        x1=x1,
        y0=0,
        y1=1,
        fillcolor=SECOND_COPY_FILL,
        line={"width": 0},
        layer="below",
    )
    fig.add_annotation(
        text=label,
        xref="x",
        yref="paper",
        x=x0,
        y=1.0,
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
        font={"size": 11, "color": SECOND_COPY_COLOR},
    )


def band(x: np.ndarray, mean: np.ndarray, se: np.ndarray, color: str, group: str, yaxis: str = "y") -> list[go.Scatter]:
    """Two faint lines at mean ± SE (nothing where SE is all NaN, e.g. a single sequence)."""
    se = np.asarray(se, dtype=float)
    if not np.isfinite(se).any():
        return []
    return [
        go.Scatter(
            x=x,
            y=mean + sign * se,
            mode="lines",
            name=f"{group} ± SE",
            legendgroup=group,
            showlegend=False,
            opacity=BAND_OPACITY,
            line={"color": color, "width": 1},
            yaxis=yaxis,
            hoverinfo="skip",
        )
        for sign in (1.0, -1.0)
    ]


def no_data(fig: go.Figure, text: str = NO_DATA_TEXT) -> go.Figure:
    """``fig`` with a note that there is nothing to show."""
    note(fig, text)
    return fig
