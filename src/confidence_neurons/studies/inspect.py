"""Inspect: one final-layer neuron token by token (Sec. 5, Fig. 4):
clipped mean-ablation, its per-token effects, the passages where it matters most, and the figures.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from plotly.graph_objects import Figure

from confidence_neurons.analysis.activity import NeuronActivity, neuron_activity, parse_neuron, passages
from confidence_neurons.analysis.forward import ablation_mean, run_forward
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.data.corpus import TokenSample
from confidence_neurons.data.unigrams import UnigramCounts
from confidence_neurons.figures.activity import fig_kl_vs_entropy_change, fig_loss_change_vs_initial
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.rundir import ActivationStore, RunDir
from confidence_neurons.studies.inputs import analysed_mask, sample_tokens, unigram_distribution
from confidence_neurons.studies.options import (
    KernelOptions,
    SourceOptions,
    TokenOptions,
    UnigramOptions,
    option,
)


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

    def neuron_specs(self) -> list[tuple[str, str]]:
        return [(self.neuron, "neuron")]

    def sequence_lengths(self) -> dict[str, int]:
        return {} if self.scan_dir is not None else super().sequence_lengths()  # --scan: the scan's tokens


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
    analysed = analysed_mask(model, tokens.tokens, config)
    activity = neuron_activity(
        layer,
        cache,
        tokens.tokens,
        neuron,
        freq,
        model.tokenizer,
        backend=config.backend,
        analysed=analysed,
        mean_act=ablation_mean(cache, analysed, config.ablation_mean),
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
        "ablation_mean": config.ablation_mean,
        "n_tokens_analysed": int(analysed.sum()),
        "forward_from_store": cache.from_store,
        "placement": model.placement_record(),
        "corpus": {k: v for k, v in tokens.source.items() if k not in ("starts", "files")},
    }
    return InspectResult(config=config, activity=activity, passages=found, settings=settings)


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
