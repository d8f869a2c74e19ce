"""What ``inspect``'s report shows of one neuron: the summary, Fig. 4a and 4c and the passages of Fig. 4b."""

from __future__ import annotations

from plotly.graph_objects import Figure

from confidence_neurons.report.html import ReportSection
from confidence_neurons.report.passages import passages_html
from confidence_neurons.studies.inspect import InspectResult, inspect_summary


def inspect_sections(result: InspectResult, figures: dict[str, Figure]) -> list[ReportSection]:
    """The report's sections: summary, Fig. 4a, 4c and the passages of Fig. 4b."""
    a = result.activity
    return [
        ReportSection("Summary", inspect_summary(result)),
        ReportSection(
            "Change of loss against initial loss (Fig. 4a)",
            "A hedging neuron raises the loss a little on confident right answers (low initial loss) "
            "and cuts loss spikes on confident wrong ones: clipping it does the opposite.",
            figures=[figures["fig4a_loss_change_vs_initial"]],
        ),
        ReportSection(
            "Entropy and distance to P_freq on correct predictions (Fig. 4c)",
            "",
            figures=[figures["fig4c_kl_vs_entropy_change"]],
        ),
        ReportSection(
            "Where the neuron matters most (Fig. 4b)",
            "Tokens coloured by the neuron's activation; the boxed token is where clipping changes the loss most.",
            html=passages_html(result.passages, a.mean_activation, a.name),
        ),
    ]
