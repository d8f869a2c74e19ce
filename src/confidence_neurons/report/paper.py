"""The scan report's section on the paper's own neurons, for a scan of one of the paper's models."""

from __future__ import annotations

from confidence_neurons.analysis.paper_models import found_counts, paper_neuron_table
from confidence_neurons.paper import resolve_paper_model
from confidence_neurons.report.html import ReportSection
from confidence_neurons.studies.scan import ScanResult

PAPER_SECTION_TITLE = "The paper's neurons"


def paper_sections(result: ScanResult) -> list[ReportSection]:
    """One section listing each neuron the paper names for this model and whether this scan flags
    it; none when the scan's model is not one of the paper's (``analysis.paper_models``).
    """
    paper = resolve_paper_model(result.config.model)
    if paper is None:
        return []
    s = result.settings
    unigrams = s.get("unigrams") or {}
    k_text = (
        f"k = {result.k} is the paper's ({paper.k_source})"
        if result.k == paper.k
        else f"k = {result.k} was set for this scan; the paper's is {paper.k} ({paper.k_source})"
    )
    if unigrams.get("paper_model") == paper.key:
        freq_text = f"P_freq comes from the counts the authors published ({unigrams.get('file')}, sha256 checked)."
    elif paper.unigrams is not None:
        freq_text = f"P_freq comes from {unigrams.get('source')}, not the published {paper.unigrams.file}."
    else:
        freq_text = "The authors published no unigram counts for this model; P_freq is counted over the run's corpus."
    text = [f"This scan's model is the paper's {paper.key} ({paper.hub_id}). {k_text}. {freq_text}"]
    if paper.neurons:
        table = paper_neuron_table(paper, result.neurons)
        counts = found_counts(table)
        found = "; ".join(
            f"{kind} neurons: this scan flags {f} of the {n} the paper names" for kind, (f, n) in counts.items()
        )
        text.append(
            f"{found}. A neuron is found when the rule of its kind flags it here; the rules and the corpus "
            "of this scan, not the paper's hand-picked examples, decide that."
        )
    else:
        table = None
        text.append("The paper names no individual neuron of this model.")
    if paper.ln_share:
        flagged = result.neurons[result.neurons["is_entropy_neuron"]]
        measured = (
            f"the median over this scan's {len(flagged)} entropy neurons is {flagged['ln_share'].median():.3g}"
            if len(flagged)
            else "this scan flags no entropy neuron"
        )
        text.append(
            f"The paper reports 1 - DE/TE {paper.ln_share} for this model's entropy neurons (App. F); {measured}."
        )
    return [ReportSection(PAPER_SECTION_TITLE, "\n\n".join(text), table=table)]
