"""Files of a scan's run directory: tables, spectrum, figures (HTML + PNG) and report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from confidence_neurons.figures.entropy import (
    fig_entropy_vs_prediction,
    fig_norm_vs_logitvar,
    fig_rho_vs_ln_share,
    fig_spectrum,
    fig_total_vs_direct,
)
from confidence_neurons.figures.export import save_figure
from confidence_neurons.figures.frequency import fig_freq_share_vs_dkl, fig_kl_vs_entropy, fig_total_vs_freq_direct
from confidence_neurons.report.html import ReportSection, write_report
from confidence_neurons.data.unigrams import save_counts
from confidence_neurons.rundir import atomic_write_parquet, atomic_write_text

TOP_COLUMNS = ["name", "TE", "DE", "ln_share", "rho", "w_out_norm", "logit_var", "abs_delta_entropy", "top1_change_frac"]


def top_neurons(neurons: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """Entropy neurons first (by TE), then the strongest candidates by TE x 1-DE/TE."""
    flagged = neurons[neurons["is_entropy_neuron"]].sort_values("TE", ascending=False)
    if len(flagged) >= n:
        return flagged.head(n)[TOP_COLUMNS + ["is_entropy_neuron"]]
    rest = neurons[~neurons["is_entropy_neuron"]].assign(_score=lambda d: d["TE"] * d["ln_share"].clip(lower=0))
    rest = rest.sort_values("_score", ascending=False).head(n - len(flagged)).drop(columns="_score")
    return pd.concat([flagged, rest])[TOP_COLUMNS + ["is_entropy_neuron"]]


TF_COLUMNS = ["name", "TE", "DE_freq", "freq_share", "abs_delta_kl", "v_freq_proj", "v_freq_cos", "rho"]


def top_token_frequency_neurons(neurons: pd.DataFrame, n: int = 15) -> pd.DataFrame:
    """Token frequency neurons first (by TE), then the strongest candidates by TE x 1-DE_freq/TE."""
    flagged = neurons[neurons["is_token_frequency_neuron"]].sort_values("TE", ascending=False)
    rest = neurons[~neurons["is_token_frequency_neuron"]].assign(_s=lambda d: d["TE"] * d["freq_share"].clip(lower=0))
    rest = rest.sort_values("_s", ascending=False).head(max(0, n - len(flagged))).drop(columns="_s")
    return pd.concat([flagged.head(n), rest])[TF_COLUMNS + ["is_token_frequency_neuron"]]


def write_scan_outputs(result, run_dir: Path) -> Path:
    """Write every file of the scan into ``run_dir``; return the report's path."""
    neurons = result.neurons
    atomic_write_parquet(run_dir / "neurons.parquet", neurons)
    atomic_write_text(run_dir / "neurons.csv", neurons.to_csv(index=False))
    spectrum = pd.DataFrame({"index": np.arange(len(result.singular_values)), "singular_value": result.singular_values})
    atomic_write_text(run_dir / "spectrum.csv", spectrum.to_csv(index=False))
    np.save(run_dir / "cos_sv.npy", result.cos_sv)
    atomic_write_parquet(run_dir / "token_metrics.parquet", result.token_metrics)
    if result.unigrams.meta.get("source") == "counted":
        save_counts(result.unigrams, run_dir / "unigrams.npy")

    k = result.k
    figures = {
        "fig1_entropy_vs_prediction": fig_entropy_vs_prediction(neurons),
        "fig2a_norm_vs_logitvar": fig_norm_vs_logitvar(neurons),
        "fig2c_total_vs_direct": fig_total_vs_direct(neurons, seed=result.config.seed),
        "fig2d_spectrum": fig_spectrum(result.singular_values, result.cos_sv, neurons, k),
        "fig2e_rho_vs_ln_share": fig_rho_vs_ln_share(neurons, k),
        "fig3a_kl_vs_entropy": fig_kl_vs_entropy(result.token_metrics["entropy"].to_numpy(),
                                                 result.token_metrics["kl"].to_numpy()),
        "fig3b_freq_share_vs_dkl": fig_freq_share_vs_dkl(neurons),
        "fig3c_total_vs_freq_direct": fig_total_vs_freq_direct(neurons, seed=result.config.seed),
    }
    fig_dir = run_dir / "figures"
    for stem, fig in figures.items():
        save_figure(fig, fig_dir, stem)

    s = result.settings
    n_flagged = int(neurons["is_entropy_neuron"].sum())
    sections = [
        ReportSection(
            "Entropy neurons",
            f"{n_flagged} of {len(neurons)} neurons in layer {s['final_layer']} meet the rule "
            f"({s['entropy_neuron_rule']}). The table lists them first, then the strongest other candidates.",
            table=top_neurons(neurons),
        ),
        ReportSection("Entropy against prediction (Fig. 1)",
                      "Mean |change of entropy| against the share of tokens whose top-1 prediction changes when the "
                      "neuron is mean-ablated. Entropy neurons move confidence without moving the prediction.",
                      figures=[figures["fig1_entropy_vs_prediction"]]),
        ReportSection("Weight norm and LogitVar (Fig. 2a)",
                      "Entropy neurons have a large output-weight norm and a low variance of their direct logit effect.",
                      figures=[figures["fig2a_norm_vs_logitvar"]]),
        ReportSection("Total and direct effect (Fig. 2c)",
                      "TE lets the final norm's scale respond to the ablation (Eq. 5); DE freezes it (Eq. 6). "
                      "For entropy neurons DE is a small part of TE.",
                      figures=[figures["fig2c_total_vs_direct"]]),
        ReportSection("The unembedding's null space (Fig. 2d)",
                      f"Singular values of W_U and |cos| of entropy neurons' w_out with each singular vector; "
                      f"rho uses the bottom k = {k}.",
                      figures=[figures["fig2d_spectrum"]]),
        ReportSection("rho against the norm-mediated share (Fig. 2e)",
                      "Neurons that write into the null space act through the final norm's scale.",
                      figures=[figures["fig2e_rho_vs_ln_share"]]),
        ReportSection(
            "Token frequency neurons (Sec. 4)",
            f"{int(neurons['is_token_frequency_neuron'].sum())} neurons meet the rule "
            f"({s['token_frequency_neuron_rule']}). P_freq: {result.unigrams.meta.get('source')}, "
            f"{result.unigrams.meta.get('n_tokens', 0):,} tokens. v_freq_proj < 0 means the neuron's output "
            "pushes away from frequent tokens.",
            table=top_token_frequency_neurons(neurons),
        ),
        ReportSection("Distance to the unigram distribution against entropy (Fig. 3a)",
                      "Per token: the more uncertain the model, the closer its output to P_freq.",
                      figures=[figures["fig3a_kl_vs_entropy"]]),
        ReportSection("Token-frequency-mediated effect (Fig. 3b)",
                      "1 - DE_freq/TE against the mean |change of KL(P_freq || P_model)| on mean ablation; DE_freq "
                      "holds the ablated logits' component along v_freq at its clean value (Eq. 7-8).",
                      figures=[figures["fig3b_freq_share_vs_dkl"]]),
        ReportSection("Total and frequency-direct effect (Fig. 3c)", "",
                      figures=[figures["fig3c_total_vs_freq_direct"]]),
    ]
    settings = {k_: v for k_, v in s.items() if k_ not in ("corpus", "model_source")}
    settings["corpus"] = {k_: v for k_, v in s["corpus"].items() if k_ not in ("starts", "files")}
    title = f"Confidence-regulation neurons of {s['model']}: entropy and token frequency neurons"
    return write_report(run_dir, title=title, settings=settings, sections=sections)
