"""The entropy-neuron scan of Sec. 3: weight statistics, closed-form mediation, selection.

``scan(model, config)`` computes; ``run_scan(config)`` loads, validates, computes and writes a
run directory (config.json, tokens.npy, neurons.parquet/.csv, spectrum, figures, report.html).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from confidence_neurons.analysis.kernel import Backend, c_kernel_available
from confidence_neurons.analysis.mediation import (
    FREQ_SERIES_TOL,
    ForwardCache,
    FreqDirection,
    SweepResult,
    run_forward,
    sweep,
)
from confidence_neurons.analysis.selection import (
    EntropyNeuronRule,
    TokenFrequencyNeuronRule,
    select_entropy_neurons,
    select_token_frequency_neurons,
)
from confidence_neurons.analysis.weights import WeightStats, check_k, default_k, weight_stats
from confidence_neurons.data.corpus import TokenSample, sample_token_sequences
from confidence_neurons.data.unigrams import UnigramCounts, count_unigrams, load_counts, p_freq, v_freq
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel, load_model
from confidence_neurons.rundir import prepare_run_dir, write_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanConfig:
    model: str | None = None  # hub id, model directory or GGUF file; None: the embedded SmolLM2-135M
    dataset: str | None = None  # hub dataset id, .txt/.jsonl file or folder; None: Python's own docs
    text_field: str = "text"
    split: str = "train"
    n_seqs: int = 100  # paper: 100 sequences for GPT-2 and Pythia-410M (App. D)
    seq_len: int = 256  # paper: 256-token sequences, BOS first
    seed: int = 0
    k: int | None = None  # null-space size for rho; None: 1% of d_model, at least 1
    rule: EntropyNeuronRule = field(default_factory=EntropyNeuronRule)
    unigrams: str | None = None  # a unigram count file (.npy); None: count the run's own corpus
    unigram_max_tokens: int | None = 10_000_000  # cap when counting the run's corpus (None: all of it)
    tf_rule: TokenFrequencyNeuronRule = field(default_factory=TokenFrequencyNeuronRule)
    batch_size: int = 8
    neuron_chunk: int = 128
    token_chunk: int = 256
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        for name in ("n_seqs", "batch_size", "neuron_chunk", "token_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be at least 1")
        if self.seq_len < 2:
            raise ValueError(f"seq_len = {self.seq_len} must be at least 2 (a token and the one it predicts)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rule"] = self.rule.to_dict()
        d["tf_rule"] = self.tf_rule.to_dict()
        return d

    def fingerprint(self) -> dict:
        """What determines the numbers: chunking, batching and backend only change speed."""
        d = self.to_dict()
        for volatile in ("batch_size", "neuron_chunk", "token_chunk", "backend"):
            d.pop(volatile)
        return d


@dataclass
class ScanResult:
    """``neurons``: one row per final-layer neuron (see ``NEURON_COLUMNS``); ``singular_values``
    (d_model,) of W_U; ``cos_sv`` (d_mlp, d_model) cosine of w_out with each singular vector."""

    config: ScanConfig
    neurons: pd.DataFrame
    singular_values: np.ndarray
    cos_sv: np.ndarray
    k: int
    settings: dict
    token_metrics: pd.DataFrame  # per analysed token: seq, pos, loss, entropy, kl (KL(P_freq || P_model))
    unigrams: UnigramCounts
    run_dir: Path | None = None

    @property
    def entropy_neurons(self) -> pd.DataFrame:
        e = self.neurons[self.neurons["is_entropy_neuron"]]
        return e.sort_values("TE", ascending=False)

    @property
    def token_frequency_neurons(self) -> pd.DataFrame:
        t = self.neurons[self.neurons["is_token_frequency_neuron"]]
        return t.sort_values("TE", ascending=False)


NEURON_COLUMNS = {
    "layer": "final layer index", "neuron": "neuron index", "name": "layer.neuron",
    "w_out_norm": "|w_out|", "logit_var": "LogitVar (Eq. 3)", "rho": "share of |w_out| in the bottom-k singular directions of W_U",
    "mean_activation": "mean activation over the run's tokens (the mean-ablation value)",
    "TE": "total effect: mean |change of loss| on mean ablation (Eq. 5)",
    "DE": "direct effect: same with the final norm's scale frozen (Eq. 6)",
    "ln_share": "1 - DE/TE: share of the effect mediated by the norm's scale",
    "mean_delta_loss": "mean signed change of loss on mean ablation",
    "abs_delta_entropy": "mean |change of entropy| on mean ablation",
    "abs_delta_entropy_DE": "mean |change of entropy| with the scale frozen",
    "top1_change_frac": "share of tokens whose top-1 prediction changes on mean ablation",
    "is_entropy_neuron": "flagged by the entropy-neuron rule",
    "DE_freq": "effect with the logits' component along v_freq held at its clean value (Eq. 7-8)",
    "freq_share": "1 - DE_freq/TE: share of the effect mediated by the token frequency direction",
    "abs_delta_kl": "mean |change of KL(P_freq || P_model)| on mean ablation",
    "v_freq_proj": "projection of W_U w_out on v_freq / |v_freq| (< 0: pushes away from frequent tokens)",
    "v_freq_cos": "cosine of W_U w_out with v_freq",
    "is_token_frequency_neuron": "flagged by the token-frequency-neuron rule",
}


def _share(te: torch.Tensor, direct: torch.Tensor) -> torch.Tensor:
    """1 - direct/TE, NaN where TE is 0."""
    return torch.where(te > 0, 1 - direct / te.clamp_min(1e-30), torch.full_like(te, float("nan")))


@torch.no_grad()
def v_freq_projection(layer: FinalLayer, freq: FreqDirection) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron: (W_U w_out) . v_freq / |v_freq| and the cosine of W_U w_out with v_freq."""
    W_U, v = layer.W_U.double(), freq.v.double()
    W = layer.center(layer.W_out.double())
    proj = W @ (W_U @ v) / v.norm()
    norms = ((W @ (W_U @ W_U.T)) * W).sum(-1).clamp_min(0).sqrt()  # |W_U^T w| via the Gram matrix
    return proj.float(), (proj / norms.clamp_min(1e-30)).float()


def neuron_table(layer: FinalLayer, ws: WeightStats, sw: SweepResult, rule: EntropyNeuronRule,
                 freq: FreqDirection | None, tf_rule: TokenFrequencyNeuronRule) -> pd.DataFrame:
    """One row per final-layer neuron (``NEURON_COLUMNS``); the Sec. 4 columns are NaN without ``freq``."""
    te, de = sw.abs_dloss["TE"].double(), sw.abs_dloss["DE"].double()
    ln_share = _share(te, de)
    idx = np.arange(layer.d_mlp)
    table = pd.DataFrame({
        "layer": layer.layer, "neuron": idx, "name": [f"{layer.layer}.{i}" for i in idx],
        "w_out_norm": ws.w_out_norm.numpy(), "logit_var": ws.logit_var.numpy(), "rho": ws.rho.numpy(),
        "mean_activation": sw.mean_act.numpy(), "TE": te.numpy(), "DE": de.numpy(), "ln_share": ln_share.numpy(),
        "mean_delta_loss": sw.dloss["TE"].numpy(), "abs_delta_entropy": sw.abs_dentropy["TE"].numpy(),
        "abs_delta_entropy_DE": sw.abs_dentropy["DE"].numpy(), "top1_change_frac": sw.top1_change["TE"].numpy(),
    })
    table["is_entropy_neuron"] = select_entropy_neurons(table, rule)
    if freq is None:
        for col in ("DE_freq", "freq_share", "abs_delta_kl", "v_freq_proj", "v_freq_cos"):
            table[col] = np.nan
        table["is_token_frequency_neuron"] = False
        return table
    proj, cos = v_freq_projection(layer, freq)
    table["DE_freq"] = sw.abs_dloss["DE_freq"].numpy()
    table["freq_share"] = _share(te, sw.abs_dloss["DE_freq"].double()).numpy()
    table["abs_delta_kl"] = sw.abs_dkl["TE"].numpy()
    table["v_freq_proj"] = proj.numpy()
    table["v_freq_cos"] = cos.numpy()
    table["is_token_frequency_neuron"] = select_token_frequency_neurons(table, tf_rule)
    return table


def unigram_distribution(model: LoadedModel, layer: FinalLayer, config: ScanConfig,
                         progress: bool = True) -> tuple[UnigramCounts, FreqDirection]:
    """P_freq from ``config.unigrams`` or, without one, counted over the run's own corpus."""
    if config.unigrams is not None:
        counts = load_counts(Path(config.unigrams), layer.d_vocab)
    else:
        counts = count_unigrams(model.tokenizer, config.dataset, vocab_size=min(len(model.tokenizer), layer.d_vocab),
                                text_field=config.text_field, split=config.split,
                                max_tokens=config.unigram_max_tokens, progress=progress)
    p = p_freq(counts, layer.d_vocab)
    return counts, FreqDirection(p=p, v=v_freq(p))


def sample_tokens(model: LoadedModel, config: ScanConfig) -> TokenSample:
    return sample_token_sequences(model.tokenizer, config.dataset, n_seqs=config.n_seqs, seq_len=config.seq_len,
                                  seed=config.seed, bos_id=model.bos_id, text_field=config.text_field,
                                  split=config.split)


def scan(model: LoadedModel, config: ScanConfig = ScanConfig(), *, tokens: TokenSample | None = None,
         unigrams: tuple[UnigramCounts, FreqDirection] | None = None, layer: FinalLayer | None = None,
         run_dir: Path | None = None, progress: bool = True) -> ScanResult:
    """Weight statistics, closed-form TE/DE for every final-layer neuron, and the entropy-neuron rule."""
    layer = layer if layer is not None else final_layer(model)
    k = config.k if config.k is not None else default_k(layer.d_model)
    check_k(k, layer.d_model)
    tokens = tokens if tokens is not None else sample_tokens(model, config)
    t0 = time.perf_counter()
    cache: ForwardCache = run_forward(model, layer, tokens.tokens, batch_size=config.batch_size, progress=progress)
    t_forward = time.perf_counter() - t0
    ws = weight_stats(layer, k)
    counts, freq = unigrams if unigrams is not None else unigram_distribution(model, layer, config, progress=progress)
    if layer.softcap:
        log.warning("%s soft-caps its logits: DE_freq and the KL to P_freq need logits linear in the residual, "
                    "so the token frequency analysis (Sec. 4) is skipped", model.name)
        freq = None
    t0 = time.perf_counter()
    sw = sweep(layer, cache, freq=freq, neuron_chunk=config.neuron_chunk, token_chunk=config.token_chunk,
               backend=config.backend, progress=progress,
               checkpoint_dir=run_dir / "checkpoints" if run_dir is not None else None)
    t_sweep = time.perf_counter() - t0
    settings = {
        "model": model.name, "model_source": model.source, "architecture": model.source.get("architecture"),
        "d_model": layer.d_model, "d_mlp": layer.d_mlp, "d_vocab": layer.d_vocab, "final_layer": layer.layer,
        "final_norm": layer.norm, "post_mlp_norm": layer.post_mlp_norm is not None, "logit_softcap": layer.softcap,
        "token_frequency_analysis": freq is not None, "n_tokens_analysed": cache.n_tokens, "k": k,
        "entropy_neuron_rule": config.rule.describe(), "token_frequency_neuron_rule": config.tf_rule.describe(),
        "unigrams": counts.meta,
        "corpus": tokens.source,
        "closed_form_logits_max_abs_err": cache.logits_check,
        "kernel": "fused C" if config.backend != "torch" and c_kernel_available() else "torch",
        "timings_s": {"forward": round(t_forward, 2), "sweep": round(t_sweep, 2)},
    }
    if freq is not None:
        settings["de_freq"] = {
            "method": "in the TE pass: series in D with error bound below tol, else exact exponentials",
            "tol_nats": FREQ_SERIES_TOL,
            "exact_share": round(float(sw.n_exact["DE_freq"].mean()), 6),
        }
    table = neuron_table(layer, ws, sw, config.rule, freq, config.tf_rule)
    n_seqs, per_seq = tokens.tokens.shape[0], cache.seq_len - 1
    token_metrics = pd.DataFrame({
        "seq": np.repeat(np.arange(n_seqs), per_seq), "pos": np.tile(np.arange(per_seq), n_seqs),
        "loss": sw.clean["loss"].numpy(), "entropy": sw.clean["entropy"].numpy(),
        "kl": sw.clean["kl"].numpy() if "kl" in sw.clean else np.nan,
    })
    return ScanResult(config=config, neurons=table, singular_values=ws.singular_values.numpy(),
                      cos_sv=ws.cos_sv.numpy(), k=k, settings=settings, token_metrics=token_metrics,
                      unigrams=counts, run_dir=run_dir)


def _slug(config: ScanConfig) -> str:
    name = Path(config.model).stem if config.model else "smollm2-135m-instruct"
    digest = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True).encode()).hexdigest()[:8]
    return f"scan-{name.replace('/', '_')}-{digest}"


def default_run_dir(config: ScanConfig) -> Path:
    return Path("runs") / _slug(config)


def run_scan(config: ScanConfig, out: Path | None = None, *, progress: bool = True) -> ScanResult:
    """Load, validate, scan and write the run directory (resuming an interrupted run in ``out``)."""
    from confidence_neurons.outputs import write_scan_outputs

    model = load_model(config.model)
    layer = final_layer(model)
    if config.k is not None:
        check_k(config.k, layer.d_model)
    tokens = sample_tokens(model, config)
    unigrams = unigram_distribution(model, layer, config, progress=progress)
    out = Path(out) if out is not None else default_run_dir(config)
    resumed = prepare_run_dir(out, config.fingerprint())
    if resumed:
        log.info("resuming the run in %s", out)
    base = {"fingerprint": config.fingerprint(), "config": config.to_dict(), "status": "running",
            "versions": _versions(), "model_source": model.source, "corpus": tokens.source}
    write_config(out, base)
    np.save(out / "tokens.npy", tokens.tokens.numpy())
    result = scan(model, config, tokens=tokens, unigrams=unigrams, layer=layer, run_dir=out, progress=progress)
    write_scan_outputs(result, out)
    write_config(out, {**base, "status": "complete", "settings": result.settings})
    return result


def _versions() -> dict:
    import transformer_lens
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "?"), "transformers": transformers.__version__}
