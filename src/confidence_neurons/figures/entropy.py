"""Plotly figures for the entropy-neuron scan (Stolfo et al. 2024, Fig. 1 and Fig. 2a/c/d/e).

Every function here is pure: it takes data (the per-neuron table produced by the
scan, plus the unembedding spectrum where needed) and returns a
:class:`plotly.graph_objects.Figure`.  Nothing is read or written; see
:mod:`confidence_neurons.figures.export` for saving.

The per-neuron table ``neurons`` has one row per final-layer neuron with the
columns ``layer, neuron, name, w_out_norm, logit_var, rho, mean_activation, TE,
DE, ln_share, abs_delta_entropy, top1_change_frac, is_entropy_neuron``.

Conventions (from :mod:`confidence_neurons.figures.style`; the tests rely on them):

* entropy neurons are drawn in their own trace named :data:`ENTROPY_TRACE`,
  coloured :data:`ENTROPY_COLOR` and labelled by their ``name``;
* all other neurons are in a trace named :data:`OTHER_TRACE` (grey);
* with no entropy neuron flagged the figure still renders and carries the
  annotation :data:`NO_ENTROPY_TEXT`;
* every figure uses the ``plotly_white`` template and a title that names the
  paper figure it mirrors.

Fig. 2a and 2e plot the statistics of the direction written into the residual
(``norm_written``, ``logit_var_written``, ``rho_written``: g ⊙ w_out on models with a
post-MLP norm, see :mod:`confidence_neurons.analysis.weights`) when the table has them, as
the rules do; without them, or when they equal the raw ones, the axes are the paper's.

Fig. 2c's boxes are drawn by :func:`~confidence_neurons.figures.effects.total_vs_direct_boxes`
(shared with Fig. 3c) and re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.effects import total_vs_direct_boxes, total_vs_direct_token_boxes
from confidence_neurons.figures.style import (
    ENTROPY_COLOR,
    ENTROPY_EDGE_COLOR,
    ENTROPY_TRACE,
    NO_ENTROPY_TEXT,
    OTHER_COLOR,
    OTHER_TRACE,
    base_layout,
    check_columns,
    escape_text,
    flag,
    floats,
    hover_data,
    label_positions,
    legend_below,
    note,
)

__all__ = [
    "ENTROPY_COLOR",
    "ENTROPY_TRACE",
    "NO_ENTROPY_TEXT",
    "OTHER_COLOR",
    "OTHER_TRACE",
    "fig_entropy_vs_prediction",
    "fig_norm_vs_logitvar",
    "fig_rho_vs_ln_share",
    "fig_spectrum",
    "fig_total_vs_direct",
    "total_vs_direct_boxes",
]

SPECTRUM_COLOR = "#1f4e9c"  # thick blue line in Fig. 2d
NULL_SPACE_FILL = "rgba(214, 39, 40, 0.10)"
MAX_SPECTRUM_NEURONS = 8

# Distinguishable colours for the per-neuron cosine lines of Fig. 2d.
_LINE_COLORS = (
    "#d62728",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
)

_REQUIRED = {
    "fig_entropy_vs_prediction": ("name", "top1_change_frac", "abs_delta_entropy", "TE", "DE", "rho"),
    "fig_norm_vs_logitvar": ("name", "w_out_norm", "logit_var", "TE", "DE", "rho"),
    "fig_total_vs_direct": ("name", "TE", "DE"),
    "fig_spectrum": ("name", "ln_share"),
    "fig_rho_vs_ln_share": ("name", "rho", "ln_share", "abs_delta_entropy", "TE", "DE"),
}


# --------------------------------------------------------------------------- helpers


def _check(neurons: pd.DataFrame, func: str) -> None:
    check_columns(neurons, (*_REQUIRED[func], "is_entropy_neuron"), func)


def _entropy_mask(neurons: pd.DataFrame) -> np.ndarray:
    return flag(neurons, "is_entropy_neuron")


def _weight_column(neurons: pd.DataFrame, raw: str, written: str) -> tuple[str, bool]:
    """The column to plot (the written one when present) and whether it differs from the raw one."""
    if written not in neurons:
        return raw, False
    differs = not np.array_equal(floats(neurons[written]), floats(neurons[raw]), equal_nan=True)
    return written, differs


def _note_no_entropy(fig: go.Figure) -> None:
    note(fig, NO_ENTROPY_TEXT)


def _scatter_pair(
    neurons: pd.DataFrame,
    xcol: str,
    ycol: str,
) -> list[go.Scatter]:
    """Grey trace of ordinary neurons and red, labelled trace of entropy neurons."""
    mask = _entropy_mask(neurons)
    other, ent = neurons[~mask], neurons[mask]
    traces = []
    custom, hover = hover_data(other)
    traces.append(
        go.Scatter(
            x=floats(other[xcol]),
            y=floats(other[ycol]),
            mode="markers",
            name=OTHER_TRACE,
            marker={"color": OTHER_COLOR, "size": 6, "opacity": 0.6},
            customdata=custom,
            hovertemplate=hover + "<extra></extra>",
        )
    )
    custom, hover = hover_data(ent)
    traces.append(
        go.Scatter(
            x=floats(ent[xcol]),
            y=floats(ent[ycol]),
            mode="markers+text",
            name=ENTROPY_TRACE,
            text=[escape_text(n) for n in ent["name"].astype(str)],
            textposition=label_positions(floats(ent[xcol])),
            textfont={"color": ENTROPY_COLOR, "size": 11},
            marker={"color": ENTROPY_COLOR, "size": 9, "line": {"color": ENTROPY_EDGE_COLOR, "width": 1}},
            customdata=custom,
            hovertemplate=hover + "<extra></extra>",
        )
    )
    return traces


# --------------------------------------------------------------------------- figures


def fig_entropy_vs_prediction(neurons: pd.DataFrame) -> go.Figure:
    """Fig. 1 analogue: effect of mean ablation on entropy vs on the top-1 prediction.

    x = ``top1_change_frac`` (share of tokens whose argmax changes),
    y = ``abs_delta_entropy`` (mean |ΔH| in nats). Entropy neurons sit high and
    to the left: they move the entropy a lot while barely changing the prediction.
    """
    _check(neurons, "fig_entropy_vs_prediction")
    fig = go.Figure(_scatter_pair(neurons, "top1_change_frac", "abs_delta_entropy"))
    base_layout(
        fig,
        "Fig. 1 analogue: entropy vs prediction change under mean ablation (final-layer neurons)",
        "share of tokens whose top-1 prediction changes (fraction, 0–1)",
        "mean |ΔH| of the output distribution (nats)",
    )
    if not _entropy_mask(neurons).any():
        _note_no_entropy(fig)
    return fig


def fig_norm_vs_logitvar(neurons: pd.DataFrame) -> go.Figure:
    """Fig. 2a analogue: ‖w_out‖ vs variance of the neuron's logit attribution (log y).

    Entropy neurons have a large output-weight norm but a small, nearly constant
    direct effect on the logits (low ``logit_var``).
    """
    _check(neurons, "fig_norm_vs_logitvar")
    xcol, x_written = _weight_column(neurons, "w_out_norm", "norm_written")
    ycol, y_written = _weight_column(neurons, "logit_var", "logit_var_written")
    fig = go.Figure(_scatter_pair(neurons, xcol, ycol))
    base_layout(
        fig,
        "Fig. 2a analogue: output-weight norm vs logit-attribution variance"
        + (" (direction written through the post-MLP norm)" if x_written or y_written else ""),
        "‖g ⊙ w_out‖ (direction written into the residual through the post-MLP norm)"
        if x_written
        else "‖w_out‖ (L2 norm of the neuron's output weights)",
        "Var over vocabulary of W_U·(g ⊙ w_out) (logit variance, log scale)"
        if y_written
        else "Var over vocabulary of W_U·w_out (logit variance, log scale)",
    )
    fig.update_yaxes(type="log")
    if not _entropy_mask(neurons).any():
        _note_no_entropy(fig)
    return fig


def fig_total_vs_direct(
    neurons: pd.DataFrame, n_random: int = 100, seed: int = 0, tokens: pd.DataFrame | None = None
) -> go.Figure:
    """Fig. 2c analogue: total vs direct effect for entropy neurons and a random baseline.

    With ``tokens`` (``analysis.boxes.box_token_effects``) as the authors draw it: one box per entropy
    neuron and one for the random neurons pooled, of the per-token |change of loss|, TE and DE
    (``effects.total_vs_direct_token_boxes``). Without (runs made before it, or the toolkit's summary):
    two box traces (named ``"TE (total effect)"`` and ``"DE (direct effect)"``) of the per-neuron means,
    grouped by ``"entropy neurons"`` (all flagged neurons) and ``"random neurons"`` (``n_random``
    non-entropy neurons drawn without replacement with ``numpy.random.default_rng(seed)``; all of them
    if fewer exist). The gap between TE and DE is the LayerNorm-mediated effect.
    """
    _check(neurons, "fig_total_vs_direct")
    if tokens is not None:
        return total_vs_direct_token_boxes(
            neurons,
            _entropy_mask(neurons),
            tokens,
            direct_col="abs_DE",
            direct_label="|DE| per token (direct effect)",
            title="Fig. 2c analogue: per-token total vs direct effect of mean ablation on the loss (authors' boxes)",
            no_group_text=NO_ENTROPY_TEXT,
        )
    return total_vs_direct_boxes(
        neurons,
        _entropy_mask(neurons),
        group="entropy neurons",
        direct_col="DE",
        direct_label="DE (direct effect)",
        title="Fig. 2c analogue: total vs direct effect of mean ablation on the loss, per-neuron means (toolkit)",
        no_group_text=NO_ENTROPY_TEXT,
        n_random=n_random,
        seed=seed,
    )


def fig_spectrum(
    singular_values: np.ndarray | Sequence[float],
    cos_sv: np.ndarray,
    neurons: pd.DataFrame,
    k: int,
) -> go.Figure:
    """Fig. 2d analogue: spectrum of W_U and where entropy neurons write.

    Thick line (left axis): singular values of W_U by index (descending).  Thin
    lines (right axis): |cos(w_out, v_j)| for up to eight entropy neurons, those
    with the largest ``ln_share`` first.  The bottom-``k`` singular directions (the
    effective null space used for ρ) are shaded.  ``cos_sv`` rows follow the row
    order of ``neurons``; its columns follow ``singular_values``.
    """
    _check(neurons, "fig_spectrum")
    sv = np.asarray(singular_values, dtype=float).reshape(-1)
    cos = np.asarray(cos_sv, dtype=float)
    d_model = sv.shape[0]
    if cos.ndim != 2 or cos.shape != (len(neurons), d_model):
        raise ValueError(f"cos_sv must have shape (n_neurons, d_model) = ({len(neurons)}, {d_model}); got {cos.shape}")
    if not 0 <= int(k) <= d_model:
        raise ValueError(f"k must be in [0, {d_model}], got {k}")
    k = int(k)
    idx = np.arange(d_model)

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=idx,
            y=sv,
            mode="lines",
            name="singular values of W_U",
            line={"color": SPECTRUM_COLOR, "width": 4},
            hovertemplate="index %{x}<br>σ = %{y:.4g}<extra></extra>",
        )
    )

    mask = _entropy_mask(neurons)
    positions = np.flatnonzero(mask)
    if len(positions):
        share = floats(neurons["ln_share"])[positions]
        # Largest ln_share first, NaN last; stable so ties keep table order.
        order = np.argsort(np.where(np.isnan(share), -np.inf, -share), kind="stable")
        positions = positions[order][:MAX_SPECTRUM_NEURONS]
    names = neurons["name"].astype(str).to_numpy()
    for j, pos in enumerate(positions):
        color = _LINE_COLORS[j % len(_LINE_COLORS)]
        fig.add_trace(
            go.Scatter(
                x=idx,
                y=np.abs(cos[pos]),
                mode="lines",
                name=f"|cos| {escape_text(names[pos])}",
                legendgroup=ENTROPY_TRACE,
                line={"color": color, "width": 1},
                yaxis="y2",
                hovertemplate=f"{escape_text(names[pos])}<br>index %{{x}}<br>|cos| = %{{y:.3f}}<extra></extra>",
            )
        )

    if k > 0:
        fig.add_shape(
            type="rect",
            xref="x",
            yref="paper",
            x0=d_model - k - 0.5,
            x1=d_model - 0.5,
            y0=0,
            y1=1,
            fillcolor=NULL_SPACE_FILL,
            line={"width": 0},
            layer="below",
        )
        fig.add_annotation(
            text=f"null space (bottom k={k})",
            xref="x",
            yref="paper",
            x=d_model - k - 0.5,
            y=1.0,
            xanchor="right",
            yanchor="bottom",
            showarrow=False,
            font={"size": 11, "color": ENTROPY_COLOR},
        )

    base_layout(
        fig,
        "Fig. 2d analogue: singular values of W_U and |cos| of entropy neurons' w_out with its singular vectors",
        "singular vector index (descending singular value)",
        "singular value of W_U",
        yaxis2={
            "title": {"text": "|cos(w_out, singular vector)|"},
            "overlaying": "y",
            "side": "right",
            "range": [0, 1.05],
            "tickmode": "linear",  # own ticks, not synced to the left axis' grid
            "tick0": 0,
            "dtick": 0.2,
            "showgrid": False,
        },
        legend=legend_below(),
    )
    fig.update_layout(margin={"r": 80, "b": 110})
    if not mask.any():
        _note_no_entropy(fig)
    return fig


def norm_name(norm: str | None) -> str:
    """The final norm in words by its type (``FinalLayer.norm``): LayerNorm, RMSNorm, or norm when unknown."""
    return {"LN": "LayerNorm", "RMS": "RMSNorm"}.get(norm or "", "norm")


def fig_rho_vs_ln_share(neurons: pd.DataFrame, k: int, norm: str | None = None) -> go.Figure:
    """Fig. 2e analogue: null-space projection ρ vs the share of the effect mediated by the final norm.

    x = ``rho`` (fraction of ‖w_out‖ in the bottom-``k`` singular directions of W_U),
    y = ``ln_share`` = 1 − DE/TE, colour = ``abs_delta_entropy``.  Both traces share
    one colour axis; entropy neurons are outlined in red and labelled. ``norm`` ("LN", "RMS" or
    None) names the final norm in the titles.
    """
    _check(neurons, "fig_rho_vs_ln_share")
    rho_col, rho_written = _weight_column(neurons, "rho", "rho_written")
    mask = _entropy_mask(neurons)
    other, ent = neurons[~mask], neurons[mask]
    colour = floats(neurons["abs_delta_entropy"])
    finite = colour[np.isfinite(colour)]
    cmin = float(finite.min()) if finite.size else 0.0
    cmax = float(finite.max()) if finite.size else 1.0
    if cmax <= cmin:
        cmax = cmin + 1.0

    fig = go.Figure()
    custom, hover = hover_data(other)
    fig.add_trace(
        go.Scatter(
            x=floats(other[rho_col]),
            y=floats(other["ln_share"]),
            mode="markers",
            name=OTHER_TRACE,
            marker={
                "color": floats(other["abs_delta_entropy"]),
                "coloraxis": "coloraxis",
                "size": 7,
                "opacity": 0.8,
                "line": {"color": "rgba(0,0,0,0.25)", "width": 0.5},
            },
            customdata=custom,
            hovertemplate=hover + "<br>|ΔH| = %{marker.color:.4g}<extra></extra>",
        )
    )
    custom, hover = hover_data(ent)
    fig.add_trace(
        go.Scatter(
            x=floats(ent[rho_col]),
            y=floats(ent["ln_share"]),
            mode="markers+text",
            name=ENTROPY_TRACE,
            text=[escape_text(n) for n in ent["name"].astype(str)],
            textposition=label_positions(floats(ent[rho_col])),
            textfont={"color": ENTROPY_COLOR, "size": 11},
            marker={
                "color": floats(ent["abs_delta_entropy"]),
                "coloraxis": "coloraxis",
                "size": 11,
                "line": {"color": ENTROPY_COLOR, "width": 2.5},
            },
            customdata=custom,
            hovertemplate=hover + "<br>|ΔH| = %{marker.color:.4g}<extra></extra>",
        )
    )
    base_layout(
        fig,
        f"Fig. 2e analogue: null-space projection ρ (k={int(k)}) vs {norm_name(norm)}-mediated effect",
        f"ρ = ‖V₀ᵀ w‖ / ‖w‖ with w = g ⊙ w_out, the direction written through the post-MLP norm "
        f"(fraction in bottom-{int(k)} singular directions of W_U)"
        if rho_written
        else f"ρ = ‖V₀ᵀ w_out‖ / ‖w_out‖ (fraction of norm in bottom-{int(k)} singular directions of W_U)",
        f"1 − DE/TE (share of the effect mediated by the final {norm_name(norm)})",
        coloraxis={
            "colorscale": "Viridis",
            "cmin": cmin,
            "cmax": cmax,
            "colorbar": {"title": {"text": "|ΔH| (nats)"}},
        },
        legend=legend_below(),
    )
    fig.update_layout(margin={"b": 110})
    if not mask.any():
        _note_no_entropy(fig)
    return fig
