"""Direct feature attribution of an entropy neuron on induction (Stolfo et al. 2024, App. I Fig. 14).

Which components (attention heads, then MLPs, embeddings and biases) write the change of the
neuron's pre-activation between induction and corrupted sequences.  Pure: arrays in,
:class:`plotly.graph_objects.Figure` out; bars are lollipops (a stem line and a marker).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from confidence_neurons.figures.induction.common import no_data
from confidence_neurons.figures.style import OUTLINE_COLOR, base_layout, escape_text, hline, legend_below

__all__ = ["MISC_COLOR", "MLP_COLOR", "fig_dfa"]

MLP_COLOR = "#ff7f0e"
MISC_COLOR = "#7f7f7f"  # embeddings and biases
_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
_MLP_RE = re.compile(r"^mlp(\d+)$")


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


def fig_dfa(
    labels: Sequence[str],
    diff: np.ndarray,
    prefix_by_label: Mapping[str, float],
    neuron_name: str,
    *,
    label_top: int = 6,
) -> go.Figure:
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
        raise ValueError(
            f"diff must be 1-D with one value per label ({len(labels)}), got shape {diff.shape}; "
            "average the (n_components, seq_len) attribution over the second copy first"
        )
    order, n_heads, n_mlps = _component_order(labels)
    lab = [labels[i] for i in order]
    y = diff[order]
    x = np.arange(len(order), dtype=float)
    fig = go.Figure()
    base_layout(
        fig,
        f"Fig. 14 analogue: direct feature attribution to neuron {escape_text(neuron_name)}, "
        "induction − corrupted first copy (mean over the second copy)",
        "component (attention heads, then MLPs)",
        "Δ direct contribution to the pre-activation",
        coloraxis={"colorscale": "Viridis", "colorbar": {"title": {"text": "prefix-matching score"}}},
        legend=legend_below(-0.22),
    )
    fig.update_layout(margin={"b": 140})
    if not labels:
        return no_data(fig)
    stems_x, stems_y = [], []
    for xi, yi in zip(x, y):
        stems_x += [xi, xi, None]
        stems_y += [0.0, yi, None]
    fig.add_trace(
        go.Scatter(
            x=stems_x,
            y=stems_y,
            mode="lines",
            name="stems",
            showlegend=False,
            line={"color": "rgba(120,120,120,0.7)", "width": 1.5},
            hoverinfo="skip",
        )
    )
    top = set(np.argsort(-np.abs(np.nan_to_num(y, nan=0.0)), kind="stable")[:label_top].tolist())

    def add(sel: np.ndarray, name: str, marker: dict) -> None:
        fig.add_trace(
            go.Scatter(
                x=x[sel],
                y=y[sel],
                mode="markers+text",
                name=name,
                marker=marker,
                text=[lab[i] if i in top else "" for i in sel],
                textposition=["top center" if y[i] >= 0 else "bottom center" for i in sel],
                textfont={"size": 10},
                customdata=[lab[i] for i in sel],
                hovertemplate="%{customdata}<br>Δ DFA = %{y:.4g}<extra></extra>",
            )
        )

    h_sel = np.arange(n_heads)
    if n_heads:
        prefix = np.array([prefix_by_label.get(lab[i], np.nan) for i in h_sel], dtype=float)
        finite = prefix[np.isfinite(prefix)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        fig.update_layout(coloraxis={"cmin": min(lo, 0.0), "cmax": hi if hi > min(lo, 0.0) else 1.0})
        add(
            h_sel,
            "attention heads (colour: prefix-matching score)",
            {"color": prefix, "coloraxis": "coloraxis", "size": 8, "line": {"color": OUTLINE_COLOR, "width": 0.5}},
        )
    if n_mlps:
        add(np.arange(n_heads, n_heads + n_mlps), "MLPs", {"color": MLP_COLOR, "size": 9})
    if len(order) > n_heads + n_mlps:
        add(np.arange(n_heads + n_mlps, len(order)), "embeddings and biases", {"color": MISC_COLOR, "size": 8})
    hline(fig)
    if n_heads and len(order) > n_heads:
        fig.add_shape(
            type="line",
            xref="x",
            yref="paper",
            x0=n_heads - 0.5,
            x1=n_heads - 0.5,
            y0=0,
            y1=1,
            line={"color": OUTLINE_COLOR, "width": 1.5, "dash": "dot"},
        )
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
