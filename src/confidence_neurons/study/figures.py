"""Figures of a study's matched neurons: the top neurons' rho and 1 - DE/TE across the runs of one
architecture (over training steps where the revisions name them). One pair of axes per figure, as
the PNG export draws; pure functions: data in, ``Figure`` out.
"""

from __future__ import annotations

import plotly.graph_objects as go

from confidence_neurons.figures.style import base_layout, floats
from confidence_neurons.study.matched import MatchedNeurons

COLORS = ("#1f4e9c", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
TITLES = {"rho": "ρ (share of |w_out| in W_U's null space)", "ln_share": "1 - DE/TE (share through the final norm)"}


def fig_over_runs(m: MatchedNeurons, field: str) -> go.Figure:
    """``field`` (rho or ln_share) of each of ``m.top`` across the group's runs, one line per neuron;
    x is the training step where every run names one, else the runs in order. A filled marker:
    the entropy rule flags the neuron in that run.
    """
    t = m.neurons
    by_step = t["step"].notna().all()
    fig = go.Figure()
    for i, name in enumerate(m.top):
        rows = t[t["name"] == name].sort_values("order")
        x = rows["step"].astype(int).tolist() if by_step else rows["label"].tolist()
        flagged = rows["is_entropy_neuron"].astype(bool).to_numpy()
        color = COLORS[i % len(COLORS)]
        y = floats(rows[field])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=name,
                line={"color": color},
                marker={"size": 9, "color": "white", "line": {"color": color, "width": 2}},
                customdata=rows["label"].to_numpy(),
                hovertemplate=f"<b>{name}</b> %{{customdata}}<br>{field} = %{{y:.4g}}<extra></extra>",
            )
        )
        if flagged.any():  # filled where the rule flags it (a second trace: the PNG export takes one colour)
            fig.add_trace(
                go.Scatter(
                    x=[v for v, f in zip(x, flagged) if f],
                    y=y[flagged],
                    mode="markers",
                    marker={"size": 9, "color": color},
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
    xtitle = "training step" if by_step else "run"
    return base_layout(fig, f"{m.group}: top neurons' {TITLES[field]}", xtitle, TITLES[field])
