"""What a comparison of scans shows: its figures (Fig. 6, 7, 8) and the sections of its report."""

from __future__ import annotations

from plotly.graph_objects import Figure

from confidence_neurons.report.html import ReportSection
from confidence_neurons.studies.compare import FIG6, FIG6_RAW, CompareResult


def compare_title(result: CompareResult) -> str:
    """The report's title."""
    return f"Entropy and token frequency neurons compared across {len(result.table)} scans"


def compare_report_settings(result: CompareResult) -> dict:
    """The settings shown at the top of the report."""
    return {"runs": result.settings["runs"]}


def _differences(result: CompareResult) -> str:
    """A sentence on settings that differ between the scans and so limit the comparison."""
    runs = result.settings["runs"]
    notes = []
    for key, what in (
        ("entropy_neuron_rule", "entropy-neuron rules"),
        ("token_frequency_neuron_rule", "token-frequency-neuron rules"),
    ):
        if len({r[key] for r in runs}) > 1:
            notes.append(f"The scans use different {what}, so their neuron counts are not like for like.")
    sources = {str(r["unigrams"]).split(":")[0] for r in runs}
    if len(sources) > 1:
        notes.append("P_freq comes from published counts for some scans and from counting for others.")
    return " ".join(notes)


def compare_sections(result: CompareResult, figures: dict[str, Figure]) -> list[ReportSection]:
    """The report's sections, in the paper's order (App. E, F, G)."""
    table = result.table.drop(columns=["run_dir"])
    panels7 = [f for stem, f in figures.items() if stem.startswith("fig7_")]
    panels8 = [f for stem, f in figures.items() if stem.startswith("fig8_")]
    sections = [
        ReportSection(
            "Models",
            "One row per scan. sv_drop is the median of W_U's bottom k singular values over the median of "
            "all of them: small where W_U has an effective null space (App. E). The top entropy neuron is the "
            "flagged one with the largest TE (else the strongest candidate by TE x 1-DE/TE, flagged False); "
            "norm_pct and logit_var_pct place it among its layer's neurons (100 = largest): entropy neurons "
            "have a high norm and a low LogitVar (Sec. 3.1). The top token frequency neuron is chosen the "
            "same way by 1-DE_freq/TE (Sec. 4). " + _differences(result),
            table=table,
        ),
        ReportSection(
            "W_U singular values (Fig. 6)",
            "Singular values divided by each model's median, against index / d_model, so models of every "
            "width share one axis. The paper uses this plot for Pythia 160M trained with and without dropout "
            "(App. E): the one trained with dropout has the deeper drop in its last ~10 values. On LayerNorm "
            "models the last value is exactly 0 (folding the norm's centring removes the all-ones direction). "
            "The second plot shows the raw singular values: the median division hides App. E's observation that "
            "the dropout model's singular values are generally lower.",
            figures=[figures[FIG6], figures[FIG6_RAW]],
        ),
        ReportSection(
            "ρ against 1 - DE/TE, a panel per model (Fig. 7)",
            "Fig. 2e for each scan (App. F): the share of each neuron's norm in W_U's bottom-k singular "
            "directions against the share of its effect mediated by the final norm's scale; colour is the "
            "mean |change of entropy|. Every panel has the same axes and colour scale. The paper finds "
            "1 - DE/TE about 0.8 for the entropy neurons of GPT-2 Small, LLaMA2 7B and Phi-2, and about "
            "0.3-0.4 in Pythia and Gemma.",
            figures=panels7,
        ),
        ReportSection(
            "1 - DE_freq/TE against |ΔKL|, a panel per model (Fig. 8)",
            "Fig. 3b for each scan (App. G): the share of each neuron's effect mediated by the token "
            "frequency direction against the mean |change of KL(P_freq || P_model)| on mean ablation. "
            "Same axes in every panel; the paper finds token frequency neurons at about 0.6.",
            figures=panels8,
        ),
    ]
    if len(result.paper_neurons) and "verdict" in result.paper_neurons.columns:
        sections.append(
            ReportSection(
                "The paper's neurons",
                "For scans of the paper's own models: each neuron the paper names, its values in that scan, "
                "and whether that scan's rule of the neuron's kind flags it.",
                table=result.paper_neurons,
            )
        )
    return sections
