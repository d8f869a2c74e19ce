"""Plotly figures for token frequency neurons (Stolfo et al. 2024, Sec. 4, Fig. 3 and Fig. 8).

Like :mod:`confidence_neurons.figures.entropy`, every function is pure: data in,
:class:`plotly.graph_objects.Figure` out, no I/O (save with
:meth:`confidence_neurons.rundir.RunDir.figure`).

The per-neuron table ``neurons`` is the scan's table with the token frequency
columns: ``name, TE, DE_freq, freq_share, abs_delta_kl, is_token_frequency_neuron``
and optionally ``is_entropy_neuron`` and ``v_freq_cos`` (missing -> no entropy
neurons / NaN), where

* ``DE_freq`` is the direct effect with the logits' component along ``v_freq``
  held at its clean value (Eq. 7-8),
* ``freq_share`` = 1 - DE_freq/TE, the share of the loss effect mediated by the
  token frequency direction (negative when that direction counteracts the rest
  of the neuron's effect, App. G),
* ``abs_delta_kl`` = mean |change of KL(P_freq || P_model)| on mean ablation.

Conventions (the tests rely on them):

* token frequency neurons are drawn in their own trace :data:`FREQ_TRACE`,
  coloured :data:`FREQ_COLOR` (green) and labelled by ``name``; it holds exactly
  the flagged rows;
* entropy neurons that are not also token frequency neurons are in the red
  :data:`~confidence_neurons.figures.style.ENTROPY_TRACE`, labelled;
* every other neuron is in the grey
  :data:`~confidence_neurons.figures.style.OTHER_TRACE`;
* with no token frequency neuron flagged the figure still renders and carries
  the annotation :data:`NO_FREQ_TEXT`;
* ``plotly_white`` template and a title naming the paper figure;
* with ``unreliable=True`` (P_freq from counts too sparse for a log-frequency,
  ``data.unigrams.CountSparsity``) the title starts with :data:`UNRELIABLE_PREFIX`
  and the plot carries the annotation :data:`UNRELIABLE_TEXT`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.effects import total_vs_direct_boxes, total_vs_direct_token_boxes
from confidence_neurons.figures.style import (
    ENTROPY_COLOR,
    ENTROPY_TRACE,
    FREQ_COLOR,
    OTHER_COLOR,
    OTHER_TRACE,
    OUTLINE_COLOR,
    base_layout,
    check_columns,
    flag,
    floats,
    hover_data,
    label_positions,
    legend_below,
    note,
    vline,
)

__all__ = [
    "FREQ_COLOR",
    "FREQ_TRACE",
    "KL_BINNED_TRACE",
    "KL_TOKENS_TRACE",
    "MAX_SCATTER_POINTS",
    "NO_FREQ_TEXT",
    "UNRELIABLE_PREFIX",
    "UNRELIABLE_TEXT",
    "fig_freq_share_vs_dkl",
    "fig_kl_vs_entropy",
    "fig_total_vs_freq_direct",
    "mark_unreliable",
    "pearson_r",
]

FREQ_TRACE = "token frequency neurons"
NO_FREQ_TEXT = "no token frequency neurons under the current rule"
UNRELIABLE_PREFIX = "UNRELIABLE (sparse unigram counts): "
UNRELIABLE_TEXT = "unreliable: P_freq and v_freq come from unigram counts too sparse for a log-frequency"
KL_TOKENS_TRACE = "tokens"
KL_BINNED_TRACE = "mean KL per entropy bin"
MAX_SCATTER_POINTS = 20_000
_TOKEN_COLOR = "#1f77b4"
_BINNED_COLOR = "#111111"
XTITLE_3B = "1 − DE_freq/TE (share of the loss effect mediated by the token frequency direction)"

_REQUIRED = {
    "fig_freq_share_vs_dkl": ("name", "TE", "DE_freq", "freq_share", "abs_delta_kl"),
    "fig_total_vs_freq_direct": ("name", "TE", "DE_freq"),
}


# --------------------------------------------------------------------------- helpers


def _check(neurons: pd.DataFrame, func: str) -> None:
    check_columns(neurons, (*_REQUIRED[func], "is_token_frequency_neuron"), func)


def _hover(df: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Customdata (name, TE, DE_freq, freq_share, v_freq_cos) and its hover template."""
    return hover_data(
        df,
        (
            ("TE", "TE"),
            ("DE_freq", "DE_freq"),
            ("freq_share", "1 − DE_freq/TE"),
            ("v_freq_cos", "cos(W_U·w_out, v_freq)"),
        ),
    )


def mark_unreliable(fig: go.Figure) -> go.Figure:
    """Prefix the title with :data:`UNRELIABLE_PREFIX` and add the red note :data:`UNRELIABLE_TEXT`."""
    fig.update_layout(title_text=UNRELIABLE_PREFIX + (fig.layout.title.text or ""))
    fig.add_annotation(
        text=UNRELIABLE_TEXT,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.88,
        xanchor="center",
        yanchor="top",
        showarrow=False,
        font={"size": 12, "color": ENTROPY_COLOR},
        bgcolor="rgba(255,255,255,0.85)",
        bordercolor=ENTROPY_COLOR,
        borderwidth=1,
    )
    return fig


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equal-length arrays (NaN if undefined)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


# --------------------------------------------------------------------------- Fig. 3a


def fig_kl_vs_entropy(
    entropy: np.ndarray,
    kl: np.ndarray,
    *,
    max_points: int = MAX_SCATTER_POINTS,
    seed: int = 0,
    n_bins: int = 30,
    unreliable: bool = False,
) -> go.Figure:
    """Fig. 3a analogue: per-token entropy of P_model vs KL(P_freq || P_model), both in nats.

    Pairs with a non-finite value are dropped.  The Pearson ``r`` in the title is
    computed on all remaining tokens (:func:`pearson_r`, i.e. ``numpy.corrcoef``),
    shown to three decimals; the scatter trace :data:`KL_TOKENS_TRACE` holds at
    most ``max_points`` of them, drawn without replacement with
    ``numpy.random.default_rng(seed)`` and kept in input order.  A black line
    (:data:`KL_BINNED_TRACE`) shows the mean KL in ``n_bins`` equal-count entropy
    bins over all tokens.
    """
    h = np.asarray(entropy, dtype=float).reshape(-1)
    d = np.asarray(kl, dtype=float).reshape(-1)
    if h.shape != d.shape:
        raise ValueError(f"entropy and kl must have the same number of values, got {h.size} and {d.size}")
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    ok = np.isfinite(h) & np.isfinite(d)
    h, d = h[ok], d[ok]
    n = h.size
    r = pearson_r(h, d)

    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=h[idx],
            y=d[idx],
            mode="markers",
            name=KL_TOKENS_TRACE if n <= max_points else f"{KL_TOKENS_TRACE} (random {len(idx):,} of {n:,})",
            marker={"color": _TOKEN_COLOR, "size": 3, "opacity": 0.25},
            hovertemplate="H = %{x:.3f} nats<br>KL = %{y:.3f} nats<extra></extra>",
        )
    )
    if n >= 2 and n_bins >= 1:
        order = np.argsort(h, kind="stable")
        chunks = [c for c in np.array_split(order, min(n_bins, n)) if c.size]
        fig.add_trace(
            go.Scatter(
                x=[float(h[c].mean()) for c in chunks],
                y=[float(d[c].mean()) for c in chunks],
                mode="lines+markers",
                name=KL_BINNED_TRACE,
                line={"color": _BINNED_COLOR, "width": 2},
                marker={"color": _BINNED_COLOR, "size": 5},
                hovertemplate="bin mean H = %{x:.3f}<br>mean KL = %{y:.3f}<extra></extra>",
            )
        )
    r_text = "n/a" if np.isnan(r) else f"{r:.3f}"
    base_layout(
        fig,
        f"Fig. 3a analogue: entropy of P_model vs KL(P_freq ‖ P_model) per token "
        f"(Pearson r = {r_text}, n = {n:,} tokens)",
        "entropy H(P_model) of the next-token distribution (nats)",
        "D_KL(P_freq ‖ P_model): distance from the unigram distribution (nats)",
        legend=legend_below(),
    )
    fig.update_layout(margin={"b": 110})
    if n == 0:
        note(fig, "no finite (entropy, KL) pairs")
    return mark_unreliable(fig) if unreliable else fig


# --------------------------------------------------------------------------- Fig. 3b


def fig_freq_share_vs_dkl(neurons: pd.DataFrame, *, outlier_iqr: float = 3.0, unreliable: bool = False) -> go.Figure:
    """Fig. 3b analogue: token-frequency-mediated share vs |ΔKL(P_freq || P_model)|.

    x = ``freq_share`` (1 − DE_freq/TE), y = ``abs_delta_kl``.  Token frequency
    neurons are green and labelled, entropy neurons red and labelled, the rest
    grey; hovering shows name, TE, DE_freq, freq_share and ``v_freq_cos``.  A
    dashed line marks x = 0.  ``freq_share`` is at most 1 but unbounded below
    (it explodes where TE ≈ 0); neurons below Q1 − ``outlier_iqr``·IQR of
    ``freq_share`` (and below every flagged neuron) stay in the traces but lie
    left of the x range, and the x-axis title counts them.
    """
    _check(neurons, "fig_freq_share_vs_dkl")
    freq = flag(neurons, "is_token_frequency_neuron")
    ent = flag(neurons, "is_entropy_neuron") & ~freq
    groups = (
        (neurons[~freq & ~ent], OTHER_TRACE, OTHER_COLOR, False),
        (neurons[ent], ENTROPY_TRACE, ENTROPY_COLOR, True),
        (neurons[freq], FREQ_TRACE, FREQ_COLOR, True),
    )
    fig = go.Figure()
    for df, name, color, labelled in groups:
        custom, hover = _hover(df)
        x = floats(df["freq_share"])
        trace = {
            "x": x,
            "y": floats(df["abs_delta_kl"]),
            "name": name,
            "customdata": custom,
            "hovertemplate": hover + "<br>|ΔKL| = %{y:.4g}<extra></extra>",
        }
        if labelled:
            trace.update(
                mode="markers+text",
                text=df["name"].astype(str).tolist(),
                textposition=label_positions(x),
                textfont={"color": color, "size": 11},
                marker={"color": color, "size": 9, "line": {"color": OUTLINE_COLOR, "width": 1}},
            )
        else:
            trace.update(mode="markers", marker={"color": color, "size": 6, "opacity": 0.6})
        fig.add_trace(go.Scatter(**trace))

    base_layout(
        fig,
        "Fig. 3b analogue: token-frequency-mediated effect vs change in KL(P_freq ‖ P_model) under mean ablation",
        XTITLE_3B,
        "mean |ΔD_KL(P_freq ‖ P_model)| on mean ablation (nats)",
    )
    vline(fig)

    x_all = floats(neurons["freq_share"])
    finite = x_all[np.isfinite(x_all)]
    if finite.size:
        q25, q75 = np.quantile(finite, [0.25, 0.75])
        fence = q25 - outlier_iqr * (q75 - q25)
        flagged_x = x_all[(freq | ent) & np.isfinite(x_all)]
        if flagged_x.size:
            fence = min(fence, float(flagged_x.min()))
        hidden = int((finite < fence).sum())
        if hidden:
            shown = finite[finite >= fence]
            lo, hi = min(float(shown.min()), 0.0), max(float(shown.max()), 0.0)
            pad = 0.05 * max(hi - lo, 1e-9)
            fig.update_xaxes(
                range=[lo - pad, hi + pad],
                title_text=f"{XTITLE_3B}<br>({hidden} neuron(s) with 1 − DE_freq/TE < {lo - pad:.3g}, "
                "typically TE ≈ 0, lie left of the axis)",
            )
    if not freq.any():
        note(fig, NO_FREQ_TEXT)
    return mark_unreliable(fig) if unreliable else fig


# --------------------------------------------------------------------------- Fig. 3c


def fig_total_vs_freq_direct(
    neurons: pd.DataFrame,
    n_random: int = 100,
    seed: int = 0,
    unreliable: bool = False,
    tokens: pd.DataFrame | None = None,
) -> go.Figure:
    """Fig. 3c analogue: TE vs DE_freq for token frequency neurons and a random baseline.

    Two box traces, ``"TE (total effect)"`` and ``"DE_freq (direct effect)"`` (the
    loss effect with the logits' ``v_freq`` component held at its clean value),
    grouped by ``"token frequency neurons (n=...)"`` (all flagged neurons) and
    ``"random neurons (n=...)"`` (``n_random`` unflagged neurons drawn without
    replacement with ``numpy.random.default_rng(seed)``).  The gap between TE and
    DE_freq is the effect mediated by the token frequency direction.  Same
    layout as Fig. 2c (:func:`~confidence_neurons.figures.effects.total_vs_direct_boxes`); with
    ``tokens`` the authors' per-token boxes, as :func:`~confidence_neurons.figures.entropy.fig_total_vs_direct`.
    """
    _check(neurons, "fig_total_vs_freq_direct")
    if tokens is not None:
        fig = total_vs_direct_token_boxes(
            neurons,
            flag(neurons, "is_token_frequency_neuron"),
            tokens,
            direct_col="abs_DE_freq",
            direct_label="|DE_freq| per token (direct effect)",
            title="Fig. 3c analogue: per-token total vs frequency-direct effect of mean ablation on the loss "
            "(authors' boxes)",
            no_group_text=NO_FREQ_TEXT,
        )
        return mark_unreliable(fig) if unreliable else fig
    fig = total_vs_direct_boxes(
        neurons,
        flag(neurons, "is_token_frequency_neuron"),
        group=FREQ_TRACE,
        direct_col="DE_freq",
        direct_label="DE_freq (direct effect)",
        title="Fig. 3c analogue: total vs frequency-direct effect of mean ablation on the loss, per-neuron means "
        "(toolkit)",
        no_group_text=NO_FREQ_TEXT,
        n_random=n_random,
        seed=seed,
    )
    return mark_unreliable(fig) if unreliable else fig
