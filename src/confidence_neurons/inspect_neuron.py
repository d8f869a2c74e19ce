"""``confidence-neurons inspect``: one neuron token by token (Sec. 5, Fig. 4)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from confidence_neurons.analysis.activity import NeuronActivity, neuron_activity, parse_neuron, passages
from confidence_neurons.analysis.mediation import run_forward
from confidence_neurons.figures.activity import fig_kl_vs_entropy_change, fig_loss_change_vs_initial
from confidence_neurons.figures.export import save_figure
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import load_model
from confidence_neurons.report.html import ReportSection, write_report
from confidence_neurons.report.passages import passages_html
from confidence_neurons.rundir import atomic_write_parquet, prepare_run_dir, write_config
from confidence_neurons.scan import ScanConfig, _versions, sample_tokens, unigram_distribution

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InspectConfig:
    neuron: str  # "LAYER.INDEX" in the final layer
    data: ScanConfig = field(default_factory=ScanConfig)  # model, text, unigrams (rules and k unused)
    n_passages: int = 3

    def fingerprint(self) -> dict:
        return {"neuron": self.neuron, "n_passages": self.n_passages, **self.data.fingerprint()}


def default_inspect_dir(config: InspectConfig) -> Path:
    name = Path(config.data.model).stem if config.data.model else "smollm2-135m-instruct"
    digest = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / f"inspect-{name.replace('/', '_')}-{config.neuron}-{digest}"


def run_inspect(config: InspectConfig, out: Path | None = None, *, progress: bool = True) -> NeuronActivity:
    model = load_model(config.data.model)
    layer = final_layer(model)
    neuron = parse_neuron(config.neuron, layer)
    tokens = sample_tokens(model, config.data)
    counts, freq = unigram_distribution(model, layer, config.data, progress=progress)
    out = Path(out) if out is not None else default_inspect_dir(config)
    prepare_run_dir(out, config.fingerprint())
    base = {"fingerprint": config.fingerprint(), "status": "running", "versions": _versions(),
            "model_source": model.source, "corpus": tokens.source, "unigrams": counts.meta}
    write_config(out, base)
    np.save(out / "tokens.npy", tokens.tokens.numpy())

    cache = run_forward(model, layer, tokens.tokens, batch_size=config.data.batch_size, progress=progress)
    activity = neuron_activity(layer, cache, tokens.tokens, neuron, freq, model.tokenizer, backend=config.data.backend)
    found = passages(activity, layer, cache, tokens.tokens, model.tokenizer, n=config.n_passages)
    atomic_write_parquet(out / "token_effects.parquet", activity.tokens)

    figs = {"fig4a_loss_change_vs_initial": fig_loss_change_vs_initial(activity.tokens, activity.name),
            "fig4c_kl_vs_entropy_change": fig_kl_vs_entropy_change(activity.tokens, activity.name)}
    for stem, fig in figs.items():
        save_figure(fig, out / "figures", stem)
    t = activity.tokens
    clipped = t[t["clipped"]]
    summary = (f"Neuron {activity.name}: mean activation {activity.mean_activation:.4g}; clipped at "
               f"{len(clipped)} of {len(t)} tokens. Over those tokens: mean change of loss "
               f"{clipped['delta_loss'].mean():+.4f}, of entropy {clipped['delta_entropy'].mean():+.4f}, of "
               f"KL(P_freq || P_model) {clipped['delta_kl'].mean():+.4f} (ablated minus clean).")
    sections = [
        ReportSection("Summary", summary),
        ReportSection("Change of loss against initial loss (Fig. 4a)",
                      "A hedging neuron raises the loss a little on confident right answers (low initial loss) "
                      "and cuts loss spikes on confident wrong ones: clipping it does the opposite.",
                      figures=[figs["fig4a_loss_change_vs_initial"]]),
        ReportSection("Entropy and distance to P_freq on correct predictions (Fig. 4c)", "",
                      figures=[figs["fig4c_kl_vs_entropy_change"]]),
        ReportSection("Where the neuron matters most (Fig. 4b)",
                      "Tokens coloured by the neuron's activation; the boxed token is where clipping changes the "
                      "loss most.", html=passages_html(found, activity.mean_activation, activity.name)),
    ]
    settings = {"model": model.name, "neuron": activity.name, "tokens": len(t), "seq_len": config.data.seq_len,
                "n_seqs": config.data.n_seqs, "unigrams": counts.meta.get("source"),
                "corpus": {k: v for k, v in tokens.source.items() if k not in ("starts", "files")}}
    write_report(out, title=f"Neuron {activity.name} of {model.name}", settings=settings, sections=sections)
    write_config(out, {**base, "status": "complete", "settings": settings})
    activity.run_dir = out
    return activity
