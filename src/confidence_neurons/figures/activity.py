"""Plotly figures for examples of neuron activity (Stolfo et al. 2024, Sec. 5, Fig. 4a and 4c).

Pure functions on a per-token table ``tokens`` (one row per scored position of a
clip mean-ablation experiment on one neuron) with the columns

``seq, pos`` (where), ``token`` (the input token, str), ``target`` (the correct
next token, str), ``activation`` (the neuron's clean activation),
``initial_loss`` (clean loss on ``target``), ``delta_loss`` (ablated − clean),
``delta_entropy``, ``delta_kl`` (change of KL(P_freq || P_model), ablated − clean),
``reciprocal_rank`` (1/rank of ``target`` in the clean prediction, in (0, 1]) and
``clipped`` (bool: the activation exceeded the mean, so the ablation changed it).

"Clip mean-ablation" (paper footnote 7) sets the activation to its mean only where
it exceeds the mean; tokens where nothing changed (``clipped`` false) are left
out of both figures.  Figures hold at most ``max_points`` tokens (a seeded random
subset, kept in table order) so the report stays light.  Token text in hover
labels is escaped and its whitespace made visible (:func:`visible_token`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.style import base_layout, check_columns, escape_text, flag, floats, hline, note, vline

__all__ = [
    "ACTIVITY_TRACE",
    "MAX_ACTIVITY_POINTS",
    "NO_TOKENS_TEXT",
    "fig_kl_vs_entropy_change",
    "fig_loss_change_vs_initial",
    "visible_token",
]

ACTIVITY_TRACE = "tokens"
MAX_ACTIVITY_POINTS = 20_000
NO_TOKENS_TEXT = "no tokens to show (no clipped activations)"
_REQUIRED = ("seq", "pos", "token", "target", "clipped")

_WHITESPACE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍", "\u00a0": "⍽"}


def visible_token(text: object) -> str:
    """Token text with whitespace made visible (not escaped).

    Spaces become ``·``, newlines ``↵``, tabs ``⇥``, carriage returns ``␍``,
    non-breaking spaces ``⍽``; the empty token shows as ``∅``.
    """
    s = "" if text is None else str(text)
    if not s:
        return "∅"
    return "".join(_WHITESPACE.get(ch, ch) for ch in s)


def _check(tokens: pd.DataFrame, func: str, cols: tuple[str, ...]) -> None:
    check_columns(tokens, _REQUIRED + cols, func, "tokens")


def _select(tokens: pd.DataFrame, mask: np.ndarray, max_points: int, seed: int) -> pd.DataFrame:
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    rows = np.flatnonzero(mask)
    if rows.size > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_points, replace=False))
    return tokens.iloc[rows]


def _customdata(df: pd.DataFrame, extra: tuple[str, ...]) -> np.ndarray:
    """(token → target label, seq, pos, *extra) per row; token text escaped for Plotly's hover."""
    custom = np.empty((len(df), 3 + len(extra)), dtype=object)
    custom[:, 0] = [
        f"{escape_text(visible_token(t))} → {escape_text(visible_token(g))}"
        for t, g in zip(df["token"].tolist(), df["target"].tolist())
    ]
    custom[:, 1] = df["seq"].to_numpy()
    custom[:, 2] = df["pos"].to_numpy()
    for j, col in enumerate(extra, start=3):
        custom[:, j] = floats(df[col])
    return custom


def _count_text(shown: int, total: int) -> str:
    return f"{total:,} tokens" if shown == total else f"random {shown:,} of {total:,} tokens"


def fig_loss_change_vs_initial(
    tokens: pd.DataFrame,
    neuron_name: str,
    *,
    max_points: int = MAX_ACTIVITY_POINTS,
    seed: int = 0,
) -> go.Figure:
    """Fig. 4a analogue: change in loss on clip mean-ablation vs the clean loss, per token.

    Only ``clipped`` tokens.  x = ``initial_loss``, y = ``delta_loss`` (ablated −
    clean; above 0: the neuron was lowering the loss), colour =
    ``reciprocal_rank`` on a fixed 0–1 Viridis scale.  Hovering shows
    ``token → target``, the position and the values.  An entropy-increasing
    "hedging" neuron shows Δloss > 0 at high initial loss and < 0 at low loss.
    """
    _check(tokens, "fig_loss_change_vs_initial", ("initial_loss", "delta_loss", "reciprocal_rank"))
    mask = flag(tokens, "clipped")
    df = _select(tokens, mask, max_points, seed)
    custom = _customdata(df, ("reciprocal_rank",))
    fig = go.Figure(
        go.Scatter(
            x=floats(df["initial_loss"]),
            y=floats(df["delta_loss"]),
            mode="markers",
            name=ACTIVITY_TRACE,
            marker={
                "color": floats(df["reciprocal_rank"]),
                "colorscale": "Viridis",
                "cmin": 0.0,
                "cmax": 1.0,
                "showscale": True,
                "colorbar": {"title": {"text": "RR of correct token"}},
                "size": 5,
                "opacity": 0.7,
            },
            customdata=custom,
            hovertemplate=(
                "<b>%{customdata[0]}</b><br>seq %{customdata[1]}, pos %{customdata[2]}<br>"
                "initial loss = %{x:.3f}<br>Δloss = %{y:.4f}<br>RR = %{customdata[3]:.3f}<extra></extra>"
            ),
        )
    )
    base_layout(
        fig,
        f"Fig. 4a analogue: change in loss on clip mean-ablation of neuron {escape_text(neuron_name)} "
        f"vs initial loss ({_count_text(len(df), int(mask.sum()))})",
        "initial loss on the correct next token (nats)",
        "Δloss = loss without the neuron (clip mean-ablated) − loss with it (nats)",
    )
    hline(fig)
    if len(df) == 0:
        note(fig, NO_TOKENS_TEXT)
    return fig


def fig_kl_vs_entropy_change(
    tokens: pd.DataFrame,
    neuron_name: str,
    *,
    max_points: int = MAX_ACTIVITY_POINTS,
    seed: int = 0,
) -> go.Figure:
    """Fig. 4c analogue: change in KL(P_freq || P_model) vs change in entropy on correct tokens.

    Only ``clipped`` tokens the model already predicts correctly
    (``reciprocal_rank == 1``).  x = ``delta_kl``, y = ``delta_entropy`` (both
    ablated − clean, nats), colour = ``delta_loss`` on a diverging red–blue scale
    symmetric about 0 (red: the ablation raises the loss).  For a token frequency
    neuron that pushes P_model towards P_freq, ablation raises KL (x > 0) and
    lowers entropy (y < 0).
    """
    _check(tokens, "fig_kl_vs_entropy_change", ("delta_kl", "delta_entropy", "delta_loss", "reciprocal_rank"))
    mask = flag(tokens, "clipped") & (floats(tokens["reciprocal_rank"]) == 1.0)
    df = _select(tokens, mask, max_points, seed)
    colour = floats(df["delta_loss"])
    finite = np.abs(colour[np.isfinite(colour)])
    bound = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    custom = _customdata(df, ("delta_loss",))
    fig = go.Figure(
        go.Scatter(
            x=floats(df["delta_kl"]),
            y=floats(df["delta_entropy"]),
            mode="markers",
            name=ACTIVITY_TRACE,
            marker={
                "color": colour,
                "colorscale": "RdBu_r",
                "cmin": -bound,
                "cmax": bound,
                "showscale": True,
                "colorbar": {"title": {"text": "Δloss (nats)"}},
                "size": 5,
                "opacity": 0.75,
                "line": {"color": "rgba(0,0,0,0.3)", "width": 0.5},
            },
            customdata=custom,
            hovertemplate=(
                "<b>%{customdata[0]}</b><br>seq %{customdata[1]}, pos %{customdata[2]}<br>"
                "ΔKL = %{x:.4f}<br>ΔH = %{y:.4f}<br>Δloss = %{customdata[3]:.4f}<extra></extra>"
            ),
        )
    )
    base_layout(
        fig,
        f"Fig. 4c analogue: change in KL(P_freq ‖ P_model) vs change in entropy on correct tokens (RR = 1) "
        f"after clip mean-ablation of neuron {escape_text(neuron_name)} ({_count_text(len(df), int(mask.sum()))})",
        "ΔD_KL(P_freq ‖ P_model), ablated − clean (nats)",
        "ΔH(P_model), ablated − clean (nats)",
    )
    vline(fig)
    hline(fig)
    if len(df) == 0:
        note(fig, "no clipped tokens with reciprocal rank 1")
    return fig
