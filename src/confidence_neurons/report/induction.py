"""What the induction case study shows (Sec. 6, App. H, I): Fig. 5a-c, 9a-c, 10c, 11 (synthetic and
natural), 12, 13, 14 and head scores, and the sections of its report. Head-ablation figures name the
variant (per-position or all-positions) in their titles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from plotly.graph_objects import Figure

from confidence_neurons.figures import induction as F
from confidence_neurons.figures.activity import fig_loss_change_vs_initial
from confidence_neurons.report.html import ReportSection

if TYPE_CHECKING:
    from confidence_neurons.induction.study import InductionResult


HEAD_ABLATION_TEXT = {
    "per-position": "heads ablated only at the position read (the paper's)",
    "all-positions": "heads ablated at every position at once",
}


def head_ablation_variant(result: InductionResult) -> str:
    """Which head-ablation variant the run used (runs from before the option: all-positions)."""
    return str(result.settings.get("head_ablation", "all-positions"))


def ablation_half_len(result: InductionResult) -> int:
    """Tokens per copy of the head-ablation and DFA sequences (runs from before the option: half_len)."""
    return int(result.settings["sizes"].get("ablation_half_len", result.half_len))


def induction_figures(result: InductionResult) -> dict[str, Figure]:
    """Every figure of the case study, by file stem."""
    variant = HEAD_ABLATION_TEXT[head_ablation_variant(result)]
    bos_kind = f"BOS ablation, {variant}"
    z_kind = f"Mean attention-output ablation, {variant}"
    summary = result.tables["clipped_summary"]
    T, TA, names = result.half_len, ablation_half_len(result), result.names
    index_names = dict(zip(result.neurons, names))
    change = result.tables["activation_change"]
    is_flagged = change["family"].isin(["entropy", "chosen", "candidate"]).to_numpy()
    prefix_by_label = {
        F.head_label((l, h)): float(result.prefix[l, h])
        for l in range(result.prefix.shape[0])
        for h in range(result.prefix.shape[1])
    }
    kind = "frequency" if set(result.family.values()) == {"token frequency"} else "entropy"  # Fig. 10a/b vs 5a/b
    figs: dict[str, object] = {
        "fig5a_induction_curves": F.fig_induction_curves(result.curves, names, T, kind=kind),
        "fig5b_clipped_ablation": F.fig_clipped_ablation(
            result.tables["clipped_per_position"], summary, T, names=index_names, kind=kind
        ),
        "fig5b_clipped_summary": F.fig_clipped_summary(summary, names=index_names, kind=kind),
        "fig11_activation_change": F.fig_activation_change(
            change["change"].to_numpy(), change["rho"].to_numpy(), is_flagged, [f"{n}" for n in change["neuron"]]
        ),
        "head_scores": F.fig_head_scores(result.prefix, result.bos, result.induction_heads, result.baseline_heads),
        "fig12_bos_ablation_summary": F.fig_head_ablation_summary(
            result.tables["bos_ablation"], names, TA, title_kind=f"{bos_kind} (Fig. 12 analogue)"
        ),
        "fig13_mean_z_ablation_summary": F.fig_head_ablation_summary(
            result.tables["mean_z_ablation"], names, TA, title_kind=f"{z_kind} (Fig. 13 analogue)"
        ),
    }
    if "natural_activation_change" in result.tables:  # Fig. 11, natural-text panel (App. H.3)
        nat = result.tables["natural_activation_change"].merge(change[["neuron", "rho", "family"]], on="neuron")
        figs["fig11_natural_activation_change"] = F.fig_activation_change(
            nat["change"].to_numpy(),
            nat["rho"].to_numpy(),
            nat["family"].isin(["entropy", "chosen", "candidate"]).to_numpy(),
            [f"{n}" for n in nat["neuron"]],
            setting="natural",
        )
    token_effects = result.tables["second_copy_token_effects"]
    for i, name in zip(result.neurons, names):
        slug = name.replace(".", "_")
        fig = fig_loss_change_vs_initial(token_effects[token_effects["neuron"] == i], name)
        fig.update_layout(
            title_text=f"Fig. 10c analogue: change of loss on clipping {name} in the second copy vs initial loss"
        )
        figs[f"fig10c_second_copy_loss_{slug}"] = fig
        figs[f"fig5c_bos_ablation_{slug}"] = F.fig_head_ablation(
            result.tables["bos_ablation"], name, TA, title_kind=f"{bos_kind} (Fig. 5c analogue)"
        )
        figs[f"fig13_mean_z_ablation_{slug}"] = F.fig_head_ablation(
            result.tables["mean_z_ablation"], name, TA, title_kind=f"{z_kind} (Fig. 13 analogue)"
        )
        if "natural_effects" in result.tables:
            figs[f"fig9c_natural_loss_{slug}"] = F.fig_natural_loss_change(result.tables["natural_effects"], i, name)
        if name in result.dfa:
            labels, diff = result.dfa[name]
            figs[f"fig14_dfa_{slug}"] = F.fig_dfa(labels, np.asarray(diff), prefix_by_label, name)
    if "natural_effects" in result.tables:
        figs["fig9a_natural_activation"] = F.fig_natural_induction(result.tables["natural_effects"], names)
        figs["fig9b_natural_entropy"] = F.fig_natural_induction_entropy(result.tables["natural_effects"], names)
    return figs


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
            f"Prefix-matching score on repeated random tokens and mean attention to BOS on natural text. "
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
