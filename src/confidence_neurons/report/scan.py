"""What a scan shows: its figures (Fig. 1, 2a, 2c-e, 3a-c) and the sections of its report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plotly.graph_objects import Figure

from confidence_neurons.analysis.selection import BORDERLINE_SHORTFALL, borderline_neurons
from confidence_neurons.analysis.table import FREQ_COLUMNS, top_neurons, top_token_frequency_neurons
from confidence_neurons.figures.entropy import (
    fig_entropy_vs_prediction,
    fig_norm_vs_logitvar,
    fig_rho_vs_ln_share,
    fig_spectrum,
    fig_total_vs_direct,
)
from confidence_neurons.figures.frequency import fig_freq_share_vs_dkl, fig_kl_vs_entropy, fig_total_vs_freq_direct
from confidence_neurons.report.html import ReportSection
from confidence_neurons.report.paper import paper_sections

if TYPE_CHECKING:
    from confidence_neurons.commands.scan import ScanResult


def scan_figures(result: ScanResult) -> dict[str, Figure]:
    """Every figure of a scan, by file stem."""
    neurons, k = result.neurons, result.k
    unreliable = not result.settings.get("token_frequency_reliable", True)
    return {
        "fig1_entropy_vs_prediction": fig_entropy_vs_prediction(neurons),
        "fig2a_norm_vs_logitvar": fig_norm_vs_logitvar(neurons),
        "fig2c_total_vs_direct": fig_total_vs_direct(neurons, seed=result.config.seed),
        "fig2d_spectrum": fig_spectrum(result.singular_values, result.cos_sv, neurons, k),
        "fig2e_rho_vs_ln_share": fig_rho_vs_ln_share(neurons, k, result.settings.get("final_norm")),
        "fig3a_kl_vs_entropy": fig_kl_vs_entropy(
            result.token_metrics["entropy"].to_numpy(), result.token_metrics["kl"].to_numpy(), unreliable=unreliable
        ),
        "fig3b_freq_share_vs_dkl": fig_freq_share_vs_dkl(neurons, unreliable=unreliable),
        "fig3c_total_vs_freq_direct": fig_total_vs_freq_direct(neurons, seed=result.config.seed, unreliable=unreliable),
    }


def scan_title(result: ScanResult) -> str:
    """The report's title."""
    return f"Confidence-regulation neurons of {result.settings['model']}: entropy and token frequency neurons"


def scan_report_settings(result: ScanResult) -> dict:
    """The settings shown at the top of the report (the corpus without its per-sequence record)."""
    s = result.settings
    settings = {k: v for k, v in s.items() if k not in ("corpus", "model_source")}
    settings["corpus"] = {k: v for k, v in s["corpus"].items() if k not in ("starts", "files")}
    return settings


def scan_sections(result: ScanResult, figures: dict[str, Figure]) -> list[ReportSection]:
    """The report's sections, in the paper's order."""
    neurons, s, k = result.neurons, result.settings, result.k
    n_flagged = int(neurons["is_entropy_neuron"].sum())
    unigrams = s.get("unigrams", {})
    reliable = s.get("token_frequency_reliable", True)
    caveat = "" if reliable else f"UNRELIABLE: {UNRELIABLE_REASON}\n\n"
    tf_table = top_token_frequency_neurons(neurons)
    if not reliable:
        tf_table = tf_table.rename(columns={c: f"{c} (unreliable)" for c in FREQ_COLUMNS})
    return [
        ReportSection(
            "Entropy neurons",
            f"{n_flagged} of {len(neurons)} neurons in layer {s['final_layer']} meet the rule "
            f"({s['entropy_neuron_rule']}). The table lists them first, then the strongest other candidates.",
            table=top_neurons(neurons),
        ),
        ReportSection(
            "Entropy against prediction (Fig. 1)",
            "Mean |change of entropy| against the share of tokens whose top-1 prediction changes when the "
            "neuron is mean-ablated. Entropy neurons move confidence without moving the prediction.",
            figures=[figures["fig1_entropy_vs_prediction"]],
        ),
        ReportSection(
            "Weight norm and LogitVar (Fig. 2a)",
            "Entropy neurons have a large output-weight norm and a low variance of their direct logit effect.",
            figures=[figures["fig2a_norm_vs_logitvar"]],
        ),
        ReportSection(
            "Total and direct effect (Fig. 2c)",
            "TE lets the final norm's scale respond to the ablation (Eq. 5); DE freezes it (Eq. 6). "
            "For entropy neurons DE is a small part of TE.",
            figures=[figures["fig2c_total_vs_direct"]],
        ),
        ReportSection(
            "The unembedding's null space (Fig. 2d)",
            f"Singular values of W_U and |cos| of entropy neurons' w_out with each singular vector; "
            f"rho uses the bottom k = {k}.",
            figures=[figures["fig2d_spectrum"]],
        ),
        ReportSection(
            "rho against the norm-mediated share (Fig. 2e)",
            "Neurons that write into the null space act through the final norm's scale.",
            figures=[figures["fig2e_rho_vs_ln_share"]],
        ),
        ReportSection(
            "Token frequency neurons (Sec. 4)",
            caveat + f"{int(neurons['is_token_frequency_neuron'].sum())} neurons meet the rule "
            f"({s['token_frequency_neuron_rule']}). P_freq: {unigrams.get('source')}, "
            f"{unigrams.get('n_tokens', 0):,} tokens. v_freq_proj < 0 means the neuron's output "
            "pushes away from frequent tokens.",
            table=tf_table,
        ),
        ReportSection(
            "Distance to the unigram distribution against entropy (Fig. 3a)",
            caveat + "Per token: the more uncertain the model, the closer its output to P_freq.",
            figures=[figures["fig3a_kl_vs_entropy"]],
        ),
        ReportSection(
            "Token-frequency-mediated effect (Fig. 3b)",
            caveat + "1 - DE_freq/TE against the mean |change of KL(P_freq || P_model)| on mean ablation; DE_freq "
            "holds the ablated logits' component along v_freq at its clean value (Eq. 7-8).",
            figures=[figures["fig3b_freq_share_vs_dkl"]],
        ),
        ReportSection(
            "Total and frequency-direct effect (Fig. 3c)", caveat, figures=[figures["fig3c_total_vs_freq_direct"]]
        ),
        _borderline_section(result),
        *paper_sections(result),
    ]


UNRELIABLE_REASON = (
    "P_freq was estimated from unigram counts too sparse for a log-frequency (see unigram_counts in the "
    "settings), so v_freq is mostly flat and the Sec. 4 columns and figures say little; no token frequency "
    "neuron is flagged unless --flag-token-frequency is given. Pass --unigrams with a published count file."
)


def _borderline_section(result: ScanResult) -> ReportSection:
    """Neurons just below a rule's threshold (``selection.borderline_neurons``) and what kept them out."""
    s = result.settings
    reliable = s.get("token_frequency_reliable", True)
    table = borderline_neurons(result.neurons, result.config.rule, result.config.tf_rule, reliable)
    text = (
        f"Neurons that meet every criterion of a rule but one and miss it by less than "
        f"{BORDERLINE_SHORTFALL:.0%} of its threshold; 'value' is what kept each out, 'shortfall' how far "
        f"below the threshold it is, as a share of the threshold."
    )
    if table.empty:
        text += " None this run."
    if not reliable and not result.config.tf_rule.flag_sparse_counts:
        text += " Token frequency neurons are not listed: the unigram counts are too sparse."
    return ReportSection("Borderline neurons", text, table=table if not table.empty else None)
