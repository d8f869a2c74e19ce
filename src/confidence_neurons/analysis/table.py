"""The neuron table: one row per final-layer neuron with every statistic of Sec. 3 and 4."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from confidence_neurons.analysis.frequency import FreqDirection, v_freq_projection
from confidence_neurons.analysis.selection import (
    EntropyNeuronRule,
    TokenFrequencyNeuronRule,
    percentile_rank,
    select_entropy_neurons,
    select_token_frequency_neurons,
)
from confidence_neurons.analysis.sweep import NeuronEffects
from confidence_neurons.analysis.weights import WeightStats
from confidence_neurons.models.final_layer import FinalLayer

NEURON_COLUMNS = {
    "layer": "final layer index",
    "neuron": "neuron index",
    "name": "layer.neuron",
    "w_out_norm": "|w_out|",
    "logit_var": "LogitVar (Eq. 3)",
    "rho": "share of |w_out| in the bottom-k singular directions of W_U",
    "norm_written": "|g * w_out|, the direction written into the residual (= w_out_norm without a post-MLP norm)",
    "logit_var_written": "LogitVar (Eq. 3) of the written direction (= logit_var without a post-MLP norm)",
    "rho_written": "rho of the written direction (= rho without a post-MLP norm); the rules use it",
    "norm_pct": "percentile of norm_written among the layer's neurons (100 = largest)",
    "logit_var_pct": "percentile of logit_var_written among the layer's neurons (100 = largest)",
    "mean_activation": "mean activation over the run's tokens (the mean-ablation value)",
    "TE": "total effect: mean |change of loss| on mean ablation (Eq. 5)",
    "DE": "direct effect: same with the final norm's scale frozen (Eq. 6)",
    "ln_share": "1 - DE/TE: share of the effect mediated by the norm's scale",
    "mean_delta_loss": "mean signed change of loss on mean ablation",
    "abs_delta_entropy": "mean |change of entropy| on mean ablation",
    "abs_delta_entropy_DE": "mean |change of entropy| with the scale frozen",
    "top1_change_frac": "share of tokens whose top-1 prediction changes on mean ablation",
    "is_entropy_neuron": "flagged by the entropy-neuron rule",
    "DE_freq": "effect with the logits' component along v_freq held at its clean value (Eq. 7-8)",
    "freq_share": "1 - DE_freq/TE: share of the effect mediated by the token frequency direction",
    "abs_delta_kl": "mean |change of KL(P_freq || P_model)| on mean ablation",
    "abs_delta_kl_pct": "percentile of abs_delta_kl among the layer's neurons (100 = largest)",
    "v_freq_proj": "projection of W_U w_out on v_freq / |v_freq| (< 0: pushes away from frequent tokens)",
    "v_freq_cos": "cosine of W_U w_out with v_freq",
    "is_token_frequency_neuron": "flagged by the token-frequency-neuron rule",
}
FREQ_COLUMNS = ("DE_freq", "freq_share", "abs_delta_kl", "abs_delta_kl_pct", "v_freq_proj", "v_freq_cos")


def mediated_share(te: torch.Tensor, direct: torch.Tensor) -> torch.Tensor:
    """1 - direct/TE (1 - DE/TE, 1 - DE_freq/TE), NaN where TE is 0."""
    return torch.where(te > 0, 1 - direct / te.clamp_min(1e-30), torch.full_like(te, float("nan")))


def neuron_table(
    layer: FinalLayer,
    ws: WeightStats,
    effects: NeuronEffects,
    rule: EntropyNeuronRule,
    freq: FreqDirection | None,
    tf_rule: TokenFrequencyNeuronRule,
    *,
    counts_reliable: bool = True,
) -> pd.DataFrame:
    """One row per final-layer neuron (``NEURON_COLUMNS``, in that order); the Sec. 4 columns are NaN
    without ``freq``. With ``counts_reliable`` False (P_freq from sparse counts) the Sec. 4 columns are
    still computed but no token frequency neuron is flagged unless ``tf_rule.flag_sparse_counts``.
    """
    te, de = effects.TE.double(), effects.DE.double()
    idx = np.arange(layer.d_mlp)
    table = pd.DataFrame(
        {
            "layer": layer.layer,
            "neuron": idx,
            "name": [f"{layer.layer}.{i}" for i in idx],
            "w_out_norm": ws.w_out_norm.numpy(),
            "logit_var": ws.logit_var.numpy(),
            "rho": ws.rho.numpy(),
            "norm_written": ws.norm_written.numpy(),
            "logit_var_written": ws.logit_var_written.numpy(),
            "rho_written": ws.rho_written.numpy(),
            "norm_pct": percentile_rank(ws.norm_written.numpy()).to_numpy(),
            "logit_var_pct": percentile_rank(ws.logit_var_written.numpy()).to_numpy(),
            "mean_activation": effects.mean_activation.numpy(),
            "TE": te.numpy(),
            "DE": de.numpy(),
            "ln_share": mediated_share(te, de).numpy(),
            "mean_delta_loss": effects.mean_delta_loss.numpy(),
            "abs_delta_entropy": effects.abs_delta_entropy.numpy(),
            "abs_delta_entropy_DE": effects.abs_delta_entropy_DE.numpy(),
            "top1_change_frac": effects.top1_change_frac.numpy(),
        }
    )
    table["is_entropy_neuron"] = select_entropy_neurons(table, rule)
    if freq is None:
        for col in FREQ_COLUMNS:
            table[col] = np.nan
        table["is_token_frequency_neuron"] = False
        return table[list(NEURON_COLUMNS)]
    proj, cos = v_freq_projection(layer, freq)
    table["DE_freq"] = effects.DE_freq.numpy()
    table["freq_share"] = mediated_share(te, effects.DE_freq.double()).numpy()
    table["abs_delta_kl"] = effects.abs_delta_kl.numpy()
    table["abs_delta_kl_pct"] = percentile_rank(effects.abs_delta_kl.numpy()).to_numpy()
    table["v_freq_proj"] = proj.numpy()
    table["v_freq_cos"] = cos.numpy()
    table["is_token_frequency_neuron"] = select_token_frequency_neurons(table, tf_rule, counts_reliable)
    return table[list(NEURON_COLUMNS)]


TOP_COLUMNS = [
    "name",
    "TE",
    "DE",
    "ln_share",
    "rho_written",
    "norm_pct",
    "logit_var_pct",
    "abs_delta_entropy",
    "top1_change_frac",
]
TF_COLUMNS = [
    "name",
    "TE",
    "DE_freq",
    "freq_share",
    "abs_delta_kl",
    "abs_delta_kl_pct",
    "v_freq_proj",
    "v_freq_cos",
    "rho_written",
]


def _shown(neurons: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns a table of an older run has (one without the written-direction columns shows rho)."""
    out = [c for c in columns if c in neurons]
    if "rho_written" in columns and "rho_written" not in neurons and "rho" in neurons:
        out.insert(columns.index("rho_written"), "rho")
    return out


def top_neurons(neurons: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """Entropy neurons first (by TE), then the strongest candidates by TE x 1-DE/TE."""
    cols = _shown(neurons, TOP_COLUMNS) + ["is_entropy_neuron"]
    flagged = neurons[neurons["is_entropy_neuron"]].sort_values("TE", ascending=False)
    if len(flagged) >= n:
        return flagged.head(n)[cols]
    rest = neurons[~neurons["is_entropy_neuron"]].assign(_score=lambda d: d["TE"] * d["ln_share"].clip(lower=0))
    rest = rest.sort_values("_score", ascending=False).head(n - len(flagged)).drop(columns="_score")
    return pd.concat([flagged, rest])[cols]


def top_token_frequency_neurons(neurons: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """Token frequency neurons first (by TE), then the strongest candidates by TE x 1-DE_freq/TE."""
    flagged = neurons[neurons["is_token_frequency_neuron"]].sort_values("TE", ascending=False)
    rest = neurons[~neurons["is_token_frequency_neuron"]].assign(_s=lambda d: d["TE"] * d["freq_share"].clip(lower=0))
    rest = rest.sort_values("_s", ascending=False).head(max(0, n - len(flagged))).drop(columns="_s")
    return pd.concat([flagged.head(n), rest])[_shown(neurons, TF_COLUMNS) + ["is_token_frequency_neuron"]]
