"""``confidence-neurons induction``: check, load, run the case study of Sec. 6 and Appendices H and I
(``studies.induction``) and write the run directory.
"""

from __future__ import annotations

from pathlib import Path

from confidence_neurons.commands.checks import load_checked
from confidence_neurons.commands.common import recording
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.report.induction import induction_report_settings, induction_sections, induction_title
from confidence_neurons.report.publish import publish
from confidence_neurons.rundir import RunDir
from confidence_neurons.studies.induction import InductionConfig, InductionResult, chosen_neurons, induction
from confidence_neurons.studies.options import run_name


def write(rd: RunDir, result: InductionResult) -> None:
    """Tables, figures and report of a finished case study."""
    for name, table in result.tables.items():
        rd.table(name, table)
    rd.csv("clipped_summary", result.tables["clipped_summary"])
    figures = result.figures()
    settings, sections = induction_report_settings(result), induction_sections(result, figures)
    publish(rd, figures, title=induction_title(result), settings=settings, sections=sections)


def run(
    config: InductionConfig, out: Path | None = None, *, model: LoadedModel | None = None, progress: bool = True
) -> InductionResult:
    """Load and check, then run the case study and write the run directory."""
    out = Path(out) if out is not None else run_name("induction", config)
    model = load_checked(config, "induction", out, model)
    layer = final_layer(model)
    chosen_neurons(config, layer)  # a scan made on another model fails before anything is written
    with recording(out, "induction", config, model_source=model.source) as rd:
        result = induction(model, config, layer=layer, progress=progress)
        result.run_dir = rd.path
        write(rd, result)
        rd.set_status("complete", settings=result.settings)
    return result


__all__ = ["InductionConfig", "InductionResult", "induction", "run"]
