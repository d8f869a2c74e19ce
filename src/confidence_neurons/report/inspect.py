"""What ``inspect`` shows of one neuron: Fig. 4a and 4c and the passages of Fig. 4b."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plotly.graph_objects import Figure

from confidence_neurons.figures.activity import fig_kl_vs_entropy_change, fig_loss_change_vs_initial
from confidence_neurons.report.html import ReportSection
from confidence_neurons.report.passages import passages_html

if TYPE_CHECKING:
    from confidence_neurons.commands.inspect import InspectResult


def inspect_figures(result: InspectResult) -> dict[str, Figure]:
    """Fig. 4a and 4c of the inspected neuron, by file stem."""
    a = result.activity
    return {
        "fig4a_loss_change_vs_initial": fig_loss_change_vs_initial(a.tokens, a.name),
        "fig4c_kl_vs_entropy_change": fig_kl_vs_entropy_change(a.tokens, a.name),
    }


def inspect_summary(result: InspectResult) -> str:
    """One paragraph: where the neuron was clipped and what that did on average."""
    a = result.activity
    t = a.tokens
    clipped = t[t["clipped"]]
    return (
        f"Neuron {a.name}: mean activation {a.mean_activation:.4g}; clipped at "
        f"{len(clipped)} of {len(t)} tokens. Over those tokens: mean change of loss "
        f"{clipped['delta_loss'].mean():+.4f}, of entropy {clipped['delta_entropy'].mean():+.4f}, of "
        f"KL(P_freq || P_model) {clipped['delta_kl'].mean():+.4f} (ablated minus clean)."
    )


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
