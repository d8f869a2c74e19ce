"""Change of every final-layer neuron's activation on induction (Stolfo et al. 2024, App. H Fig. 11).

Entropy neurons stand out in red, sized by how much of their output weight lies in W_U's null
space (ρ).  Pure: arrays in, :class:`plotly.graph_objects.Figure` out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import plotly.graph_objects as go

from confidence_neurons.figures.induction.common import no_data
from confidence_neurons.figures.style import (
    ENTROPY_COLOR,
    ENTROPY_EDGE_COLOR,
    ENTROPY_TRACE,
    NO_ENTROPY_TEXT,
    OTHER_COLOR,
    OTHER_TRACE,
    base_layout,
    escape_text,
    hline,
    label_positions,
    legend_below,
    note,
)

__all__ = ["fig_activation_change"]


def fig_activation_change(
    change: np.ndarray,
    rho: np.ndarray,
    is_entropy: np.ndarray,
    names: Sequence[str],
    *,
    label_top: int = 8,
    setting: Literal["synthetic", "natural"] = "synthetic",
    weighted: bool = False,
) -> go.Figure:
    """Fig. 11: change of mean activation on induction for every final-layer neuron.

    With ``weighted`` the ``change`` given is already multiplied by each neuron's ‖w_out‖, as the
    authors rank Fig. 11's neurons (``weighted_diff`` in case_studies/induction.py and
    natural_induction_true.py); the axis and labels say so.

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
    names = [escape_text(n) for n in names]
    n = change.size
    if not (rho.size == is_entropy.size == len(names) == n):
        raise ValueError(
            f"change ({n}), rho ({rho.size}), is_entropy ({is_entropy.size}) and names ({len(names)}) "
            "must all have one entry per neuron"
        )
    if label_top < 0:
        raise ValueError("label_top must be >= 0")
    idx = np.arange(n)
    delta = "Δ activation × ‖w_out‖" if weighted else "Δ activation"
    what = (
        "second copy − first copy" if setting == "synthetic" else "second occurrence − first occurrence of the n-gram"
    )
    fig = go.Figure()
    other = ~is_entropy
    fig.add_trace(
        go.Scatter(
            x=idx[other],
            y=change[other],
            mode="markers",
            name=OTHER_TRACE,
            marker={"color": OTHER_COLOR, "size": 5, "opacity": 0.6},
            text=[names[i] for i in idx[other]],
            customdata=rho[other],
            hovertemplate="%{text}<br>" + delta + " = %{y:.4g}<br>ρ = %{customdata:.3f}<extra></extra>",
        )
    )
    ent = idx[is_entropy]
    r = np.nan_to_num(np.clip(rho[ent], 0.0, 1.0), nan=0.0)
    top = ent[np.argsort(-np.abs(np.nan_to_num(change[ent], nan=0.0)), kind="stable")[:label_top]]
    top_set = set(top.tolist())
    labels = [f"{names[i]} (ρ={rho[i]:.2f})" if i in top_set else "" for i in ent]
    custom = np.empty((ent.size, 2), dtype=object)
    custom[:, 0] = [names[i] for i in ent]
    custom[:, 1] = rho[ent]
    fig.add_trace(
        go.Scatter(
            x=ent,
            y=change[ent],
            mode="markers+text",
            name=ENTROPY_TRACE,
            text=labels,
            textposition=label_positions(change[ent]) if ent.size else None,
            textfont={"color": ENTROPY_COLOR, "size": 10},
            marker={
                "color": ENTROPY_COLOR,
                "size": (7 + 10 * r).tolist(),
                "line": {"color": ENTROPY_EDGE_COLOR, "width": 1},
            },
            customdata=custom,
            hovertemplate="%{customdata[0]}<br>" + delta + " = %{y:.4g}<br>ρ = %{customdata[1]:.3f}<extra></extra>",
        )
    )
    base_layout(
        fig,
        f"Fig. 11 analogue: change of mean activation{' × ‖w_out‖ (authors’ weighting)' if weighted else ''} "
        f"of final-layer neurons on {setting} induction ({what}); entropy neurons sized by ρ",
        "final-layer neuron index",
        f"Δ mean activation{' × ‖w_out‖' if weighted else ''} ({what})",
        legend=legend_below(-0.15),
    )
    fig.update_layout(margin={"b": 100})
    if n == 0:
        return no_data(fig)
    hline(fig)
    if not is_entropy.any():
        note(fig, NO_ENTROPY_TEXT)
    return fig
