"""``confidence-neurons steer``: check, load, steer (``studies.steer``) and write the run directory."""

from __future__ import annotations

from pathlib import Path

from confidence_neurons.commands.checks import load_checked
from confidence_neurons.commands.common import recording
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.report.publish import publish
from confidence_neurons.report.steer import steer_sections, steer_title
from confidence_neurons.rundir import RunDir
from confidence_neurons.studies.inputs import sample_tokens
from confidence_neurons.studies.options import run_name
from confidence_neurons.studies.steer import SteerConfig, SteerResult, chosen_dials, steer


def write(rd: RunDir, result: SteerResult) -> None:
    """Tables, figures and report of a finished steer run."""
    rd.table("steering", result.table, csv=True)
    rd.table("reliability", result.reliability)
    rd.table("implied_temperature", result.implied)
    rd.table("fit_points", result.fit_points)
    figures = result.figures()
    publish(rd, figures, title=steer_title(result), settings=result.settings, sections=steer_sections(result, figures))


def run(
    config: SteerConfig, out: Path | None = None, *, model: LoadedModel | None = None, progress: bool = True
) -> SteerResult:
    """Load and check, then steer and write the run directory."""
    config.check_neurons()
    config.check_ece_bins()
    out = Path(out) if out is not None else run_name("steer", config)
    model = load_checked(config, "steer", out, model)
    layer = final_layer(model)
    chosen_dials(config, layer)  # a scan of another model or an unknown neuron fails before anything is written
    tokens = sample_tokens(model, config)
    with recording(out, "steer", config, model_source=model.source, corpus=tokens.source) as rd:
        rd.array("tokens", tokens.tokens.numpy())
        result = steer(model, config, tokens=tokens, layer=layer, progress=progress)
        result.run_dir = rd.path
        write(rd, result)
        rd.set_status("complete", settings=result.settings)
    return result
