"""What the induction case study's report shows (Sec. 6, App. H, I): its title, settings and sections
(the figures are the study's).
"""

from __future__ import annotations

from plotly.graph_objects import Figure

from confidence_neurons.report.html import ReportSection
from confidence_neurons.studies.induction import InductionResult, ablation_half_len, head_ablation_variant


def induction_title(result: InductionResult) -> str:
    """The report's title."""
    return f"Induction case study on {result.settings['model']}"


def induction_report_settings(result: InductionResult) -> dict:
    """The settings shown at the top of the report (without the per-sequence records)."""
    return {k: v for k, v in result.settings.items() if k not in ("synthetic", "natural")}


def induction_sections(result: InductionResult, figs: dict[str, Figure]) -> list[ReportSection]:
    """The report's sections, in the paper's order."""
    summary = result.tables["clipped_summary"]
    T, names = result.half_len, result.names
    index_names = dict(zip(result.neurons, names))
    sel = summary[summary["group"] == "selected"]
    lines = [
        f"{index_names[int(r.neuron)]}: entropy {r.rel_delta_entropy_pct:+.1f}% over the second copy "
        f"(per position down to {r.min_rel_delta_entropy_pct:+.1f}%), loss {r.delta_loss:+.4f} nats"
        for r in sel.itertuples()
    ]
    rnd = summary[summary["group"] == "random"]["rel_delta_entropy_pct"]
    s = result.settings
    pick = lambda prefix: [f for k, f in figs.items() if k.startswith(prefix)]  # noqa: E731
    ablation_where = (
        "only at the query position whose activation is read, as the paper (Sec. 6.2), computed exactly "
        "from one clean and one mixed forward per head set (--head-ablation per-position)."
        if head_ablation_variant(result) == "per-position"
        else "at every query position at once (--head-ablation all-positions); positions before the one "
        "read are ablated too, unlike the paper's per-position ablation."
    )
    n_rand = len(s.get("random_neurons", []))
    sections = [
        ReportSection(
            "Entropy neurons on repeated text (Fig. 5a)",
            f"{s['sizes']['n_seqs']} sequences of {T} corpus tokens repeated once. Activations of the "
            "chosen neurons with entropy and loss per position.",
            figures=pick("fig5a"),
        ),
        ReportSection(
            "Clipped ablation in the second copy (Fig. 5b)",
            "Each neuron is clipped to its mean over the first copy, in the second copy only. "
            + " ".join(lines)
            + (
                f" Baseline: {n_rand} random final-layer neurons (App. H.2), each clipped on its own: median "
                f"{rnd.median():+.1f}% (range {rnd.min():+.1f}% to {rnd.max():+.1f}%)."
                if len(rnd)
                else ""
            ),
            figures=pick("fig5b") + pick("fig10c"),
            table=sel,
        ),
        ReportSection(
            "Which final-layer neurons change most (Fig. 11)",
            "Change of every final-layer neuron's mean activation: synthetic (second copy minus first) and, "
            "where natural induction ran, natural (second occurrence of the n-gram minus first, App. H.3).",
            figures=pick("fig11"),
        ),
        ReportSection(
            "Induction heads (Sec. 6.2)",
            f"Prefix-matching score on repeated random tokens and mean attention to BOS on "
            f"{s['sizes']['n_bos_seqs']} windows of plain text ({s['sizes']['natural_seq_len']} tokens each). "
            f"Induction heads: {', '.join(s['induction_heads'])}; baseline heads (BOS attention > 0.6, "
            f"prefix score < 0.1): {', '.join(s['baseline_heads']) or 'none qualified'}.",
            figures=pick("head_scores"),
        ),
        ReportSection(
            "BOS ablation (Fig. 5c, 12)",
            f"{s['sizes']['n_ablation_seqs']} sequences of BOS + {ablation_half_len(result)} + "
            f"{ablation_half_len(result)} corpus tokens. Each head set is made to attend only to the first "
            "position, " + ablation_where,
            figures=pick("fig12") + pick("fig5c"),
        ),
        ReportSection(
            "Mean attention-output ablation (Fig. 13)",
            "Each induction head's z vectors are replaced by their mean over the second copy, " + ablation_where,
            figures=pick("fig13"),
        ),
        ReportSection(
            "Direct feature attribution (Fig. 14)",
            "Direct contribution of every head and MLP to the neuron's pre-activation, induction minus "
            "corrupted sequences (first copy replaced by other text), mean over the second copy.",
            figures=pick("fig14"),
        ),
        ReportSection(
            "Natural induction (Fig. 9)",
            f"Corpus sequences with a repeated {s['sizes']['ngram']}-gram (occurring exactly twice, distinct "
            "tokens, at least one token between the occurrences, no newline, partial UTF-8 or special token); "
            "neurons clipped to their mean on non-repeated text (the first copy of the synthetic sequences). "
            "Fig. 9c: per-token change of loss at the second occurrence against the initial loss."
            if "natural_effects" in result.tables
            else f"Skipped: {s['natural'].get('skipped', '')}",
            figures=pick("fig9"),
        ),
    ]
    return sections
