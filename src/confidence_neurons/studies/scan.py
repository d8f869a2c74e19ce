"""The scan: the entropy and token frequency neurons of a model's final layer
(Sec. 3 and 4): weight statistics, TE/DE/DE_freq of every neuron in closed form, the rules,
and the figures (Fig. 1, 2a, 2c-e, 3a-c).
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

from confidence_neurons.analysis.boxes import box_token_effects
from confidence_neurons.analysis.effects import FREQ_SERIES_TOL
from confidence_neurons.analysis.forward import (
    ablation_mean,
    authors_newline_id,
    run_forward,
    special_ids,
    sweep_device,
)
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import describe_backend
from confidence_neurons.analysis.selection import EntropyNeuronRule, TokenFrequencyNeuronRule
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.analysis.table import neuron_table, top_neurons
from confidence_neurons.analysis.weights import check_k, default_k, weight_stats
from confidence_neurons.data.corpus import TokenSample
from confidence_neurons.data.unigrams import UnigramCounts, count_sparsity
from confidence_neurons.errors import ConfigError
from confidence_neurons.figures.entropy import (
    fig_entropy_vs_prediction,
    fig_norm_vs_logitvar,
    fig_rho_vs_ln_share,
    fig_spectrum,
    fig_total_vs_direct,
)
from confidence_neurons.figures.frequency import fig_freq_share_vs_dkl, fig_kl_vs_entropy, fig_total_vs_freq_direct
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.rundir import ActivationStore, CheckpointStore, RunDir
from confidence_neurons.studies.inputs import analysed_mask, sample_tokens, unigram_distribution
from confidence_neurons.studies.options import (
    KernelOptions,
    SourceOptions,
    TokenOptions,
    UnigramOptions,
    option,
)

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
    revision: str | None = option(
        None,
        "the model's revision: a hub branch, tag or commit (Pythia's step143000), or a subfolder of a local "
        "model directory; recorded in every label as MODEL@REVISION",
    )
    ray: bool = option(
        False,
        "cut the ablation sweep into neuron chunks over Ray workers (one per GPU, else per CPU) that read the "
        "run's memory-mapped activations; same numbers as one process",
        volatile=True,
    )
    ray_workers: int | None = option(
        None, "with --ray: how many workers (default: the cluster's GPUs, else CPUs)", volatile=True, minimum=1
    )
    ray_address: str | None = option(
        None, "with --ray: the Ray cluster to join (auto, ray://HOST:10001); default: a local Ray", volatile=True
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ray:  # refused before anything loads where Ray is not installed
            from confidence_neurons.study.engine import require_ray

            require_ray("--ray")
        for name in ("ray_workers", "ray_address"):
            if getattr(self, name) is not None and not self.ray:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} only applies to a sharded sweep; add --ray or drop {flag}", field=name)

    def fingerprint(self) -> dict:
        """As ``Options.fingerprint``, without an unset revision, so runs made before --revision existed resume."""
        out = super().fingerprint()
        if out.get("revision") is None:
            out.pop("revision", None)
        return out


@dataclass
class ScanResult:
    """``neurons``: one row per final-layer neuron (``analysis.table.NEURON_COLUMNS``);
    ``singular_values`` (d_model,) of W_U; ``cos_sv`` (d_mlp, d_model), cosine of w_out with each
    singular vector; ``token_metrics``: per analysed token seq, pos, loss, entropy, kl
    (KL(P_freq || P_model)); ``effect_tokens``: the per-token effects Fig. 2c/3c box
    (``analysis.boxes.box_token_effects``); ``settings``: what config.json records of the run.
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
    effect_tokens: pd.DataFrame | None = None  # per-token |TE|, |DE| for Fig. 2c/3c (analysis.boxes); None: older run

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
            effect_tokens=rd.read_table("effect_tokens") if rd.has("effect_tokens.parquet") else None,
            run_dir=rd.path,
        )


def _sharded(layer, cache, selected, freq, mean_act, config, checkpoints, store, device, progress) -> dict | None:
    """With ``--ray``: every sweep chunk computed into ``checkpoints`` by Ray workers (``study.sharded``),
    for the plain sweep to read back; None without it.
    """
    if not config.ray:
        return None
    from confidence_neurons.study.sharded import shard_cache_prefix, sharded_sweep

    if checkpoints is None or store is None:
        raise ConfigError(
            "--ray needs the scan's run directory (the workers read its activation store); run the scan "
            "through `confidence-neurons scan` or commands.scan.run",
            field="ray",
        )
    record = sharded_sweep(
        layer,
        store.folder,
        shard_cache_prefix(selected),
        cache.seq_len,
        checkpoints,
        freq=freq,
        neuron_chunk=config.neuron_chunk,
        token_chunk=config.token_chunk,
        backend=config.backend,
        mean_act=mean_act,
        cache_digest=cache.content_digest(),
        gpu=str(device).startswith("cuda"),
        workers=config.ray_workers,
        address=config.ray_address,
        progress=progress,
    )
    return record


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
    keep = analysed_mask(model, tokens.tokens, config)
    special = special_ids(model, tokens.tokens, config.token_filter)
    mean_act = ablation_mean(full, keep, config.ablation_mean)
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
    shards = _sharded(
        layer, cache, cache is not full, freq, mean_act, config, checkpoints, store, sweep_device(model), progress
    )
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
        mean_act=mean_act,
    )
    t_sweep = time.perf_counter() - t0
    if shards is not None:
        from confidence_neurons.study.sharded import sharded_record_check

        sharded_record_check(shards, effects.chunks_reused)
        shards["merge_reused"] = effects.chunks_reused  # all of them, unless a worker read other data
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
        "token_filter_special_ids": sorted(special),
        "authors_newline": authors_newline_id(model.name, model.tokenizer)[1],
        "ablation_mean": config.ablation_mean,
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
        "sweep_chunks_reused": effects.chunks_reused if shards is None else shards["chunks_reused"],
        "revision": config.revision,
    }
    if shards is not None:
        settings["sweep_shards"] = shards
    if freq is not None:
        settings["de_freq"] = {
            "method": "in the TE pass: series in D with error bound below tol, else exact exponentials",
            "tol_nats": FREQ_SERIES_TOL,
            "exact_share": round(float(effects.de_freq_exact_share.mean()), 6),
        }
    neurons = neuron_table(layer, ws, effects, config.rule, freq, config.tf_rule, counts_reliable=sparsity.reliable)
    effect_tokens = box_token_effects(layer, cache, neurons, mean_act, freq, seed=config.seed, backend=config.backend)
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
        neurons=neurons,
        singular_values=ws.singular_values.numpy(),
        cos_sv=ws.cos_sv.numpy(),
        k=k,
        settings=settings,
        token_metrics=token_metrics,
        unigrams=counts,
        effect_tokens=effect_tokens,
    )


def scan_figures(result: ScanResult) -> dict[str, Figure]:
    """Every figure of a scan, by file stem."""
    neurons, k = result.neurons, result.k
    unreliable = not result.settings.get("token_frequency_reliable", True)
    tokens = result.effect_tokens  # None for runs made before the authors' per-token boxes
    figs = {
        "fig1_entropy_vs_prediction": fig_entropy_vs_prediction(neurons),
        "fig2a_norm_vs_logitvar": fig_norm_vs_logitvar(neurons),
        "fig2c_total_vs_direct": fig_total_vs_direct(neurons, seed=result.config.seed, tokens=tokens),
        "fig2d_spectrum": fig_spectrum(result.singular_values, result.cos_sv, neurons, k),
        "fig2e_rho_vs_ln_share": fig_rho_vs_ln_share(neurons, k, result.settings.get("final_norm")),
        "fig3a_kl_vs_entropy": fig_kl_vs_entropy(
            result.token_metrics["entropy"].to_numpy(), result.token_metrics["kl"].to_numpy(), unreliable=unreliable
        ),
        "fig3b_freq_share_vs_dkl": fig_freq_share_vs_dkl(neurons, unreliable=unreliable),
        "fig3c_total_vs_freq_direct": fig_total_vs_freq_direct(
            neurons, seed=result.config.seed, unreliable=unreliable, tokens=tokens
        ),
    }
    if tokens is not None:  # the toolkit's summary beside the authors' boxes: per-neuron means
        figs["fig2c_total_vs_direct_neuron_means"] = fig_total_vs_direct(neurons, seed=result.config.seed)
        figs["fig3c_total_vs_freq_direct_neuron_means"] = fig_total_vs_freq_direct(
            neurons, seed=result.config.seed, unreliable=unreliable
        )
    return figs
