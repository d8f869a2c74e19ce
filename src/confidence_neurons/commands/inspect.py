"""``confidence-neurons inspect``: one final-layer neuron token by token (Sec. 5, Fig. 4):
clipped mean-ablation, its per-token effects and the passages where it matters most.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import torch
from plotly.graph_objects import Figure

from confidence_neurons.analysis.activity import NeuronActivity, neuron_activity, parse_neuron, passages
from confidence_neurons.analysis.forward import analysed_tokens, run_forward, special_ids
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.commands.checks import load_checked
from confidence_neurons.commands.common import recording, sample_tokens, unigram_distribution
from confidence_neurons.commands.options import (
    KernelOptions,
    SourceOptions,
    TokenOptions,
    UnigramOptions,
    option,
    run_name,
)
from confidence_neurons.data.corpus import TokenSample
from confidence_neurons.data.unigrams import UnigramCounts
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.report.inspect import inspect_figures, inspect_sections, inspect_summary
from confidence_neurons.rundir import ActivationStore, RunDir


@dataclass(frozen=True, kw_only=True)
class InspectConfig(KernelOptions, UnigramOptions, TokenOptions, SourceOptions):
    """Which neuron, on which text."""

    neuron: str = option(help="LAYER.INDEX of a final-layer neuron, e.g. 29.830")
    n_passages: int = option(3, "text passages to show (Fig. 4b)", minimum=0)
    scan_dir: str | None = option(
        None,
        "a finished scan of the same model: its tokens and stored forward pass are used, so the model is not "
        "run again (the token settings here are then ignored)",
        flag="--scan",
    )


@dataclass
class InspectResult:
    """``activity``: per-token effects of clipping the neuron; ``passages``: the contexts of Fig. 4b."""

    config: InspectConfig
    activity: NeuronActivity
    passages: list[dict]
    settings: dict
    run_dir: Path | None = None

    def figures(self) -> dict[str, Figure]:
        return inspect_figures(self)

    def _repr_html_(self) -> str:
        return f"<p><b>{html.escape(inspect_summary(self))}</b></p>"

    @classmethod
    def load(cls, rd: RunDir) -> InspectResult:
        record = rd.read_config()
        s = record["settings"]
        neuron = int(s["neuron"].split(".")[1])
        activity = NeuronActivity(
            neuron, s["neuron"], float(s["mean_activation"]), rd.read_table("token_effects"), run_dir=rd.path
        )
        return cls(
            config=InspectConfig.from_dict(record["config"]),
            activity=activity,
            passages=rd.read_json("passages"),
            settings=s,
            run_dir=rd.path,
        )


def inspect_neuron(
    model: LoadedModel,
    config: InspectConfig,
    *,
    tokens: TokenSample | None = None,
    unigrams: tuple[UnigramCounts, FreqDirection] | None = None,
    layer: FinalLayer | None = None,
    store: ActivationStore | None = None,
    progress: bool = True,
) -> InspectResult:
    """Clip-mean-ablate ``config.neuron`` on the run's text; its effect on every token and its top passages."""
    layer = layer if layer is not None else final_layer(model)
    neuron = parse_neuron(config.neuron, layer)
    tokens = tokens if tokens is not None else sample_tokens(model, config)
    counts, freq = unigrams if unigrams is not None else unigram_distribution(model, layer, config, progress=progress)
    cache = run_forward(model, layer, tokens.tokens, batch_size=config.batch_size, progress=progress, store=store)
    analysed = analysed_tokens(tokens.tokens, config.token_filter, special=special_ids(model, tokens.tokens))
    activity = neuron_activity(
        layer, cache, tokens.tokens, neuron, freq, model.tokenizer, backend=config.backend, analysed=analysed
    )
    found = passages(activity, layer, cache, tokens.tokens, model.tokenizer, n=config.n_passages)
    settings = {
        "model": model.name,
        "neuron": activity.name,
        "mean_activation": activity.mean_activation,
        "tokens": len(activity.tokens),
        "seq_len": config.seq_len,
        "n_seqs": config.n_seqs,
        "unigrams": counts.meta.get("source"),
        "token_filter": config.token_filter,
        "n_tokens_analysed": int(analysed.sum()),
        "forward_from_store": cache.from_store,
        "placement": model.placement_record(),
        "corpus": {k: v for k, v in tokens.source.items() if k not in ("starts", "files")},
    }
    return InspectResult(config=config, activity=activity, passages=found, settings=settings)


def write(rd: RunDir, result: InspectResult) -> None:
    """Per-token effects, passages, figures and report of an inspected neuron."""
    rd.table("token_effects", result.activity.tokens)
    rd.json("passages", result.passages)
    figures = result.figures()
    rd.figures(figures)
    rd.report(
        title=f"Neuron {result.activity.name} of {result.settings['model']}",
        settings=result.settings,
        sections=inspect_sections(result, figures),
    )


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
