"""Plotly figures for the induction case study (Stolfo et al. 2024, Sec. 6 Fig. 5; App. H Fig. 9-11; App. I Fig. 12-14).

One module per subject, all re-exported here (``from confidence_neurons.figures import induction as F``):

* :mod:`.curves`: Fig. 5a / 10a (clean pass by position) and Fig. 5b / 10b (clipped ablation);
* :mod:`.activation`: Fig. 11 (change of every final-layer neuron's activation);
* :mod:`.heads`: Sec. 6.2 head scores, Fig. 5c / 12 (BOS ablation) and Fig. 13 (mean-z ablation);
* :mod:`.dfa`: Fig. 14 (direct feature attribution);
* :mod:`.natural`: Fig. 9a-c (naturally repeated n-grams);
* :mod:`.common`: palettes, the second-copy shading and the mean ± SE lines they share.

Like the other figure modules every function is pure: plain numpy / pandas (or the
:class:`~confidence_neurons.induction.neurons.PositionCurves` dataclass) in,
:class:`plotly.graph_objects.Figure` out, no I/O.  Only the Plotly subset that
:mod:`confidence_neurons.figures.png` draws is used; bars are drawn as "lollipops"
(a stem line and a marker).

Positions and the second copy
-----------------------------
A synthetic induction sequence is ``[BOS] t_1..t_T t_1..t_T`` (T = ``half_len``), so
with ``seq_len`` tokens the first copy starts at ``offset = seq_len - 2T`` (1 with a
BOS token, 0 without) and the second copy at ``offset + T``.  Per-position data of
the clean forward cache (``PositionCurves``, ``clipped_ablation_curves``) hold
``P = seq_len - 1`` positions (position p predicts token p + 1); head-ablation
activations (``neuron_activations_under``) hold all ``seq_len`` positions.  Every
per-position figure shades the second copy (:data:`SECOND_COPY_FILL`) or, where only
the second copy is drawn, marks its start with a dotted vertical line.

Conventions
-----------
* the shared style of :mod:`confidence_neurons.figures.style`; titles name the paper
  figure (``"Fig. 5a analogue: ..."``);
* neuron lines use :data:`ENTROPY_PALETTE` (red first) for entropy neurons and
  :data:`FREQ_PALETTE` (green first) for token frequency neurons (``kind=``);
* the random-neuron baseline is :data:`RANDOM_TRACE` in :data:`RANDOM_COLOR`;
* standard errors are drawn as thin, faint lines at mean ± SE (not in the legend);
* empty inputs give a figure carrying the annotation :data:`NO_DATA_TEXT`.
"""

from __future__ import annotations

from confidence_neurons.figures.induction.activation import fig_activation_change
from confidence_neurons.figures.induction.common import (
    ENTROPY_PALETTE,
    FREQ_PALETTE,
    NO_DATA_TEXT,
    SECOND_COPY_FILL,
    NeuronKind,
    second_copy_start,
)
from confidence_neurons.figures.induction.curves import (
    H_COLOR,
    LOSS_COLOR,
    fig_clipped_ablation,
    fig_clipped_summary,
    fig_induction_curves,
)
from confidence_neurons.figures.induction.dfa import MISC_COLOR, MLP_COLOR, fig_dfa
from confidence_neurons.figures.induction.heads import (
    BASELINE_COLOR,
    BASELINE_HEADS_TRACE,
    CLEAN_COLOR,
    CLEAN_TRACE,
    INDUCTION_HEAD_COLOR,
    INDUCTION_HEADS_TRACE,
    INDUCTION_PALETTE,
    fig_head_ablation,
    fig_head_ablation_summary,
    fig_head_scores,
    head_label,
)
from confidence_neurons.figures.induction.natural import (
    fig_natural_induction,
    fig_natural_induction_entropy,
    fig_natural_loss_change,
    natural_x_layout,
)
from confidence_neurons.figures.style import (
    ENTROPY_COLOR,
    ENTROPY_TRACE,
    FREQ_COLOR,
    OTHER_COLOR,
    OTHER_TRACE,
    RANDOM_COLOR,
    RANDOM_TRACE,
)

__all__ = [
    "BASELINE_COLOR",
    "BASELINE_HEADS_TRACE",
    "CLEAN_COLOR",
    "CLEAN_TRACE",
    "ENTROPY_COLOR",
    "ENTROPY_PALETTE",
    "ENTROPY_TRACE",
    "FREQ_COLOR",
    "FREQ_PALETTE",
    "H_COLOR",
    "INDUCTION_HEADS_TRACE",
    "INDUCTION_HEAD_COLOR",
    "INDUCTION_PALETTE",
    "LOSS_COLOR",
    "MISC_COLOR",
    "MLP_COLOR",
    "NO_DATA_TEXT",
    "NeuronKind",
    "OTHER_COLOR",
    "OTHER_TRACE",
    "RANDOM_COLOR",
    "RANDOM_TRACE",
    "SECOND_COPY_FILL",
    "fig_activation_change",
    "fig_clipped_ablation",
    "fig_clipped_summary",
    "fig_dfa",
    "fig_head_ablation",
    "fig_head_ablation_summary",
    "fig_head_scores",
    "fig_induction_curves",
    "fig_natural_induction",
    "fig_natural_induction_entropy",
    "fig_natural_loss_change",
    "head_label",
    "natural_x_layout",
    "second_copy_start",
]
