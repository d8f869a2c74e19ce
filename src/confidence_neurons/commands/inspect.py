"""``confidence-neurons inspect``: check, load, inspect one neuron (``studies.inspect``) and write the run
directory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from confidence_neurons.commands.checks import load_checked
from confidence_neurons.commands.common import recording
from confidence_neurons.data.corpus import TokenSample
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.report.inspect import inspect_sections
from confidence_neurons.report.publish import publish
from confidence_neurons.rundir import ActivationStore, RunDir
from confidence_neurons.studies.inputs import sample_tokens, unigram_distribution
from confidence_neurons.studies.inspect import InspectConfig, InspectResult, inspect_neuron
from confidence_neurons.studies.options import run_name


def write(rd: RunDir, result: InspectResult) -> None:
    """Per-token effects, passages, figures and report of an inspected neuron."""
    rd.table("token_effects", result.activity.tokens)
    rd.json("passages", result.passages)
    figures = result.figures()
    title = f"Neuron {result.activity.name} of {result.settings['model']}"
    publish(rd, figures, title=title, settings=result.settings, sections=inspect_sections(result, figures))


def run(
    config: InspectConfig, out: Path | None = None, *, model: LoadedModel | None = None, progress: bool = True
) -> InspectResult:
    """Load and check, then inspect the neuron and write the run directory."""
    out = Path(out) if out is not None else run_name("inspect", config, config.neuron)
    model = load_checked(config, "inspect", out, model)
    layer = final_layer(model)
    tokens, store = _tokens_and_store(model, config)
    unigrams = unigram_distribution(model, layer, config, progress=progress)
    with recording(out, "inspect", config, model_source=model.source, corpus=tokens.source) as rd:
        rd.array("tokens", tokens.tokens.numpy())
        result = inspect_neuron(
            model,
            config,
            tokens=tokens,
            unigrams=unigrams,
            layer=layer,
            store=store if store is not None else rd.activations,
            progress=progress,
        )
        result.run_dir = result.activity.run_dir = rd.path
        write(rd, result)
        rd.set_status("complete", settings=result.settings)
    return result


def _tokens_and_store(model: LoadedModel, config: InspectConfig) -> tuple[TokenSample, ActivationStore | None]:
    """The run's text; with ``--scan``, the scan's tokens and its stored forward pass."""
    if config.scan_dir is None:
        return sample_tokens(model, config), None
    scan_rd = RunDir(Path(config.scan_dir))
    record = scan_rd.read_config()
    if record.get("kind") != "scan" or not scan_rd.has("tokens.npy"):
        raise ConfigError(f"--scan {config.scan_dir} is not a scan's run directory", field="scan_dir")
    if record.get("config", {}).get("model") != config.model:
        raise ConfigError(
            f"--scan {config.scan_dir} scanned {record['config'].get('model') or 'the embedded model'}, not "
            f"{config.model or 'the embedded model'}; give the same --model",
            field="scan_dir",
        )
    tokens = torch.from_numpy(scan_rd.read_array("tokens"))
    return TokenSample(tokens=tokens, source=record.get("corpus", {})), scan_rd.activations
