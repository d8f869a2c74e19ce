"""Box plots of an ablation's total vs direct effect on the loss: a flagged group vs random neurons.

Shared by Fig. 2c (entropy neurons, direct effect ``DE`` with the final LayerNorm's scale frozen;
:func:`confidence_neurons.figures.entropy.fig_total_vs_direct`) and Fig. 3c (token frequency
neurons, ``DE_freq`` with the token frequency direction held;
:func:`confidence_neurons.figures.frequency.fig_total_vs_freq_direct`) of Stolfo et al. 2024.
Pure: data in, :class:`plotly.graph_objects.Figure` out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.style import (
    DIRECT_EFFECT_COLOR,
    LOSS_EFFECT_COLOR,
    RANDOM_TRACE,
    base_layout,
    floats,
    note,
)

__all__ = ["drop_outliers", "total_vs_direct_boxes", "total_vs_direct_token_boxes"]


def drop_outliers(values: np.ndarray, whis: float = 1.5) -> np.ndarray:
    """``values`` without those beyond ``whis`` IQR of the quartiles (the authors' ``remove_outliers``)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return values
    q1, q3 = np.quantile(values, [0.25, 0.75])
    iqr = q3 - q1
    return values[(values >= q1 - whis * iqr) & (values <= q3 + whis * iqr)]


def total_vs_direct_token_boxes(
    neurons: pd.DataFrame,
    mask: np.ndarray,
    tokens: pd.DataFrame,
    *,
    direct_col: str,
    direct_label: str,
    title: str,
    no_group_text: str,
    total_col: str = "abs_TE",
    total_label: str = "|TE| per token",
) -> go.Figure:
    """The authors' Fig. 2c / 3c: one box per flagged neuron and one for the random neurons pooled,
    of the per-token |loss change| (``tokens``: ``analysis.boxes.box_token_effects``), total and
    direct, each box without the values beyond 1.5 IQR (as their load_results.py; no points).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (len(neurons),):
        raise ValueError(f"mask must have shape ({len(neurons)},), got {mask.shape}")
    flagged = neurons.index[mask].tolist()
    name_of = dict(zip(neurons.index, neurons["name"].astype(str)))
    rand = tokens[tokens["random"].astype(bool)]
    n_rand = rand["neuron"].nunique()
    rand_label = f"{RANDOM_TRACE} (n={n_rand}, tokens pooled)"
    order = [name_of[i] for i in flagged] + [rand_label]
    fig = go.Figure()
    for col, color, label in (
        (total_col, LOSS_EFFECT_COLOR, total_label),
        (direct_col, DIRECT_EFFECT_COLOR, direct_label),
    ):
        xs, ys = [], []
        for i in flagged:
            y = drop_outliers(floats(tokens.loc[tokens["neuron"] == i, col]))
            xs += [name_of[i]] * len(y)
            ys.append(y)
        y = drop_outliers(floats(rand[col]))
        xs += [rand_label] * len(y)
        ys.append(y)
        fig.add_trace(
            go.Box(
                x=xs,
                y=np.concatenate(ys) if ys else np.zeros(0),
                name=label,
                marker={"color": color, "size": 3},
                line={"color": color},
                boxpoints=False,
            )
        )
    base_layout(fig, title, "neuron", "|change of loss| per token on mean ablation (nats)", boxmode="group")
    fig.update_xaxes(categoryorder="array", categoryarray=order)
    if not mask.any():
        note(fig, no_group_text)
    return fig


def total_vs_direct_boxes(
    neurons: pd.DataFrame,
    mask: np.ndarray,
    *,
    group: str,
    direct_col: str,
    direct_label: str,
    title: str,
    no_group_text: str,
    total_col: str = "TE",
    total_label: str = "TE (total effect)",
    n_random: int = 100,
    seed: int = 0,
) -> go.Figure:
    """Box plots of a total and a direct effect: a flagged group vs a random baseline.

    Shared by Fig. 2c (entropy neurons, ``DE``) and Fig. 3c (token frequency
    neurons, ``DE_freq``).  Two box traces (named ``total_label`` and
    ``direct_label``) grouped by category: ``"<group> (n=...)"`` (all rows where
    ``mask`` is true) and ``"random neurons (n=...)"`` (``n_random`` other rows drawn
    without replacement with ``numpy.random.default_rng(seed)``, kept in table
    order; all of them if fewer exist).  With an empty group the figure carries
    the annotation ``no_group_text``.
    """
    if n_random < 0:
        raise ValueError("n_random must be >= 0")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (len(neurons),):
        raise ValueError(f"mask must have shape ({len(neurons)},), got {mask.shape}")
    flagged = neurons[mask]
    others = np.flatnonzero(~mask)
    rng = np.random.default_rng(seed)
    if len(others) > n_random:
        chosen = np.sort(rng.choice(others, size=n_random, replace=False))
    else:
        chosen = others
    rand = neurons.iloc[chosen]
    group_label = f"{group} (n={len(flagged)})"
    rand_label = f"{RANDOM_TRACE} (n={len(rand)})"

    names = flagged["name"].astype(str).tolist() + rand["name"].astype(str).tolist()
    x = [group_label] * len(flagged) + [rand_label] * len(rand)
    fig = go.Figure()
    for col, color, label in (
        (total_col, LOSS_EFFECT_COLOR, total_label),
        (direct_col, DIRECT_EFFECT_COLOR, direct_label),
    ):
        y = np.concatenate([floats(flagged[col]), floats(rand[col])])
        fig.add_trace(
            go.Box(
                x=x,
                y=y,
                name=label,
                marker={"color": color, "size": 4},
                line={"color": color},
                boxpoints="all",
                jitter=0.35,
                pointpos=0,
                text=names,
                hovertemplate="%{text}<br>" + col + " = %{y:.4g}<extra></extra>",
            )
        )
    base_layout(
        fig,
        title,
        "neuron group",
        "effect of mean ablation on loss (nats)",
        boxmode="group",
    )
    fig.update_xaxes(categoryorder="array", categoryarray=[group_label, rand_label])
    if not mask.any():
        note(fig, no_group_text)
    return fig
