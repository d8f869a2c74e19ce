"""``confidence-neurons scan``: the entropy and token frequency neurons of a model's final layer
(Sec. 3 and 4): weight statistics, TE/DE/DE_freq of every neuron in closed form, the rules,
figures and report.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from plotly.graph_objects import Figure

from confidence_neurons.analysis.effects import FREQ_SERIES_TOL
from confidence_neurons.analysis.forward import analysed_tokens, run_forward, special_ids, sweep_device
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import describe_backend
from confidence_neurons.analysis.selection import EntropyNeuronRule, TokenFrequencyNeuronRule
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.analysis.table import neuron_table, top_neurons
from confidence_neurons.analysis.weights import check_k, default_k, weight_stats
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
from confidence_neurons.data.unigrams import UnigramCounts, count_sparsity
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.report.scan import scan_figures, scan_report_settings, scan_sections, scan_title
from confidence_neurons.rundir import ActivationStore, CheckpointStore, RunDir

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ScanConfig(KernelOptions, UnigramOptions, TokenOptions, SourceOptions):
    """Settings of a scan; defaults follow the paper (App. D)."""

    k: int | None = option(
        None,
        "null-space size for rho (default: the paper's: 12 for GPT-2 Small, else floor(1%% of d_model), at least 1)",
    )
    rule: EntropyNeuronRule = option(default_factory=EntropyNeuronRule, prefix="")
    tf_rule: TokenFrequencyNeuronRule = option(default_factory=TokenFrequencyNeuronRule, prefix="tf-")
    neuron_chunk: int = option(128, "neurons per sweep chunk (also the checkpoint unit)", volatile=True, minimum=1)
    token_chunk: int = option(256, "tokens per sweep chunk", volatile=True, minimum=1)


@dataclass
class ScanResult:
    """``neurons``: one row per final-layer neuron (``analysis.table.NEURON_COLUMNS``);
    ``singular_values`` (d_model,) of W_U; ``cos_sv`` (d_mlp, d_model), cosine of w_out with each
    singular vector; ``token_metrics``: per analysed token seq, pos, loss, entropy, kl
    (KL(P_freq || P_model)); ``settings``: what config.json records of the run.
    """

    config: ScanConfig
    neurons: pd.DataFrame
    singular_values: np.ndarray
    cos_sv: np.ndarray
    k: int
    settings: dict
    token_metrics: pd.DataFrame
    unigrams: UnigramCounts | None = None
    run_dir: Path | None = None

    @property
    def entropy_neurons(self) -> pd.DataFrame:
        return self.neurons[self.neurons["is_entropy_neuron"]].sort_values("TE", ascending=False)

    @property
    def token_frequency_neurons(self) -> pd.DataFrame:
        return self.neurons[self.neurons["is_token_frequency_neuron"]].sort_values("TE", ascending=False)

    def figures(self) -> dict[str, Figure]:
        return scan_figures(self)

    def _repr_html_(self) -> str:
        s = self.settings
        head = (
            f"<p><b>Scan of {html.escape(str(s['model']))}</b>: layer {s['final_layer']}, "
            f"{s['n_tokens_analysed']:,} tokens; "
            f"{len(self.entropy_neurons)} entropy and {len(self.token_frequency_neurons)} token frequency "
            f"neurons{f' (run: {html.escape(str(self.run_dir))})' if self.run_dir else ''}</p>"
        )
        return head + top_neurons(self.neurons, 5).to_html(index=False, float_format=lambda v: f"{v:.4g}")

    @classmethod
    def load(cls, rd: RunDir) -> ScanResult:
        """The result a finished scan wrote into ``rd``."""
        record = rd.read_config()
        spectrum = rd.read_csv("spectrum")
        unigrams = None
        if rd.has("unigrams.npy"):
            unigrams = UnigramCounts(counts=rd.read_array("unigrams"), meta=record["settings"]["unigrams"])
        return cls(
            config=ScanConfig.from_dict(record["config"]),
            neurons=rd.read_table("neurons"),
            singular_values=spectrum["singular_value"].to_numpy(),
            cos_sv=rd.read_array("cos_sv"),
            k=int(record["settings"]["k"]),
            settings=record["settings"],
            token_metrics=rd.read_table("token_metrics"),
            unigrams=unigrams,
            run_dir=rd.path,
        )


def scan(
    model: LoadedModel,
    config: ScanConfig = ScanConfig(),
    *,
    tokens: TokenSample | None = None,
    unigrams: tuple[UnigramCounts, FreqDirection] | None = None,
    layer: FinalLayer | None = None,
    checkpoints: CheckpointStore | None = None,
    store: ActivationStore | None = None,
    progress: bool = True,
) -> ScanResult:
    """Weight statistics, closed-form TE/DE/DE_freq of every final-layer neuron, and the two rules.

    With ``store`` the forward pass is kept (or read back) memory-mapped there (``run_forward``).
    """
    layer = layer if layer is not None else final_layer(model)
    k = config.k if config.k is not None else default_k(layer.d_model, config.model)
    check_k(k, layer.d_model)
    tokens = tokens if tokens is not None else sample_tokens(model, config)
    t0 = time.perf_counter()
    full = run_forward(model, layer, tokens.tokens, batch_size=config.batch_size, progress=progress, store=store)
    t_forward = time.perf_counter() - t0
    keep = analysed_tokens(tokens.tokens, config.token_filter, special=special_ids(model, tokens.tokens))
    if not bool(keep.any()):
        raise ConfigError(
            f"--token-filter {config.token_filter} leaves no token to analyse in sequences of {config.seq_len} "
            "tokens; use longer sequences or --token-filter all",
            field="token_filter",
        )
    cache = full.select(keep, store=store)
    ws = weight_stats(layer, k)
    counts, freq = unigrams if unigrams is not None else unigram_distribution(model, layer, config, progress=progress)
    if layer.softcap:
        log.warning(
            "%s soft-caps its logits: DE_freq and the KL to P_freq need logits linear in the residual, "
            "so the token frequency analysis (Sec. 4) is skipped",
            model.name,
        )
        freq = None
    t0 = time.perf_counter()
    effects = sweep(
        layer,
        cache,
        freq=freq,
        neuron_chunk=config.neuron_chunk,
        token_chunk=config.token_chunk,
        backend=config.backend,
        progress=progress,
        checkpoints=checkpoints,
        device=sweep_device(model),
    )
    t_sweep = time.perf_counter() - t0
    sparsity = count_sparsity(counts)
    settings = {
        "model": model.name,
        "model_source": model.source,
        "architecture": model.source.get("architecture"),
        "d_model": layer.d_model,
        "d_mlp": layer.d_mlp,
        "d_vocab": layer.d_vocab,
        "final_layer": layer.layer,
        "final_norm": layer.norm,
        "post_mlp_norm": layer.post_mlp_norm is not None,
        "logit_softcap": layer.softcap,
        "token_frequency_analysis": freq is not None,
        "n_tokens_analysed": cache.n_tokens,
        "n_tokens_cached": full.n_tokens,
        "token_filter": config.token_filter,
        "forward_from_store": full.from_store,
        "placement": model.placement_record(),
        "k": k,
        "entropy_neuron_rule": config.rule.describe(),
        "token_frequency_neuron_rule": config.tf_rule.describe(),
        "unigrams": counts.meta,
        "unigram_padding": config.padding,
        "unigram_counts": sparsity.to_dict(),
        "token_frequency_reliable": sparsity.reliable,
        "corpus": tokens.source,
        "closed_form_logits_max_abs_err": cache.logits_check,
        "kernel": describe_backend(config.backend, sweep_device(model)),
        "timings_s": {"forward": round(t_forward, 2), "sweep": round(t_sweep, 2)},
        "sweep_chunks_reused": effects.chunks_reused,
    }
    if freq is not None:
        settings["de_freq"] = {
            "method": "in the TE pass: series in D with error bound below tol, else exact exponentials",
            "tol_nats": FREQ_SERIES_TOL,
            "exact_share": round(float(effects.de_freq_exact_share.mean()), 6),
        }
    rows = cache.flat_rows.numpy()
    token_metrics = pd.DataFrame(
        {
            "seq": rows // (cache.seq_len - 1),
            "pos": rows % (cache.seq_len - 1),
            "loss": effects.clean.loss.numpy(),
            "entropy": effects.clean.entropy.numpy(),
            "kl": effects.clean.kl.numpy() if effects.clean.kl is not None else np.nan,
        }
    )
    return ScanResult(
        config=config,
        neurons=neuron_table(layer, ws, effects, config.rule, freq, config.tf_rule, counts_reliable=sparsity.reliable),
        singular_values=ws.singular_values.numpy(),
        cos_sv=ws.cos_sv.numpy(),
        k=k,
        settings=settings,
        token_metrics=token_metrics,
        unigrams=counts,
    )


def write(rd: RunDir, result: ScanResult) -> None:
    """Every file of a finished scan: tables, spectrum, figures and report."""
    rd.table("neurons", result.neurons, csv=True)
    rd.csv(
        "spectrum",
        pd.DataFrame({"index": np.arange(len(result.singular_values)), "singular_value": result.singular_values}),
    )
    rd.array("cos_sv", result.cos_sv)
    rd.table("token_metrics", result.token_metrics)
    if result.unigrams is not None and result.unigrams.meta.get("source") == "counted":
        rd.array("unigrams", result.unigrams.counts.astype(np.int64))
        rd.json("unigrams", {"n_entries": int(len(result.unigrams.counts)), **result.unigrams.meta})
    figures = result.figures()
    rd.figures(figures)
    rd.report(title=scan_title(result), settings=scan_report_settings(result), sections=scan_sections(result, figures))


def run(
    config: ScanConfig, out: Path | None = None, *, model: LoadedModel | None = None, progress: bool = True
) -> ScanResult:
    """Load and check everything, then scan and write the run directory (resuming one in ``out``)."""
    out = Path(out) if out is not None else run_name("scan", config)
    model = load_checked(config, "scan", out, model)
    layer = final_layer(model)
    tokens = sample_tokens(model, config)
    unigrams = unigram_distribution(model, layer, config, progress=progress)
    with recording(out, "scan", config, model_source=model.source, corpus=tokens.source) as rd:
        rd.array("tokens", tokens.tokens.numpy())
        result = scan(
            model,
            config,
            tokens=tokens,
            unigrams=unigrams,
            layer=layer,
            checkpoints=rd.checkpoints,
            store=rd.activations,
            progress=progress,
        )
        result.run_dir = rd.path
        write(rd, result)
        rd.set_status("complete", settings=result.settings)
    return result
