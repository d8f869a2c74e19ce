"""The ablation sweep: TE, DE and DE_freq of every final-layer neuron in one pass (Sec. 3.2, 4).

Each neuron is mean-ablated in closed form (``closed_form``) and its effects are averaged over
the cached tokens into a :class:`NeuronEffects`. Neurons are taken in chunks; with a checkpoint
store every finished chunk is kept, so a stopped sweep resumes where it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from confidence_neurons.analysis.closed_form import AblationMode, ablated_values, chunks
from confidence_neurons.analysis.effects import (
    FREQ_SERIES_TOL,
    AblatedStats,
    CleanStats,
    FreqLoss,
    ablated_stats,
    clean_kl,
    clean_stats,
)
from confidence_neurons.analysis.forward import ForwardCache
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import NMOM, Backend
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.rundir import CheckpointStore

log = logging.getLogger(__name__)

#: Bumped whenever what a checkpoint holds changes, so older chunks are recomputed, not misread.
CHECKPOINT_FORMAT = 3


@dataclass
class CleanTokenStats:
    """Per analysed token (N,): clean loss and entropy, and KL(P_freq || P_model) with a frequency direction."""

    loss: Float[Tensor, " N"]
    entropy: Float[Tensor, " N"]
    kl: Float[Tensor, " N"] | None = None


@dataclass
class NeuronEffects:
    """Per-neuron means over the analysed tokens of mean-ablating each final-layer neuron, each (d_mlp,).

    ``TE`` and ``DE`` are the paper's total and direct effects (Eq. 5, 6: mean |change of loss|);
    ``DE_freq`` the effect with the logits' component along v_freq held at its clean value (Eq. 7-8).
    The ``_DE`` fields are the same statistics with the final norm's scale frozen.
    """

    mean_activation: Float[Tensor, " d_mlp"]
    TE: Float[Tensor, " d_mlp"]
    DE: Float[Tensor, " d_mlp"]
    mean_delta_loss: Float[Tensor, " d_mlp"]
    mean_delta_loss_DE: Float[Tensor, " d_mlp"]
    abs_delta_entropy: Float[Tensor, " d_mlp"]
    abs_delta_entropy_DE: Float[Tensor, " d_mlp"]
    top1_change_frac: Float[Tensor, " d_mlp"]
    top1_change_frac_DE: Float[Tensor, " d_mlp"]
    clean: CleanTokenStats
    DE_freq: Float[Tensor, " d_mlp"] | None = None
    mean_delta_loss_DE_freq: Float[Tensor, " d_mlp"] | None = None
    abs_delta_kl: Float[Tensor, " d_mlp"] | None = None  # mean |change of KL(P_freq || P_model)|, TE
    de_freq_exact_share: Float[Tensor, " d_mlp"] | None = None  # share of tokens whose DE_freq took exact exponentials
    chunks_reused: int = 0  # neuron chunks read back from checkpoints rather than computed


#: The per-neuron means the sweep accumulates, without and with a frequency direction.
BASE_FIELDS = (
    "TE",
    "DE",
    "mean_delta_loss",
    "mean_delta_loss_DE",
    "abs_delta_entropy",
    "abs_delta_entropy_DE",
    "top1_change_frac",
    "top1_change_frac_DE",
)
FREQ_FIELDS = ("DE_freq", "mean_delta_loss_DE_freq", "de_freq_exact_share", "abs_delta_kl")


def effect_fields(freq: FreqDirection | None) -> tuple[str, ...]:
    """The NeuronEffects fields the sweep accumulates, with or without a frequency direction."""
    return BASE_FIELDS + (FREQ_FIELDS if freq is not None else ())


def _accumulate(part: dict[str, Tensor], ab: AblatedStats, base: CleanStats, base_kl: Tensor | None) -> None:
    """Add one token chunk's sums over tokens to ``part`` (per neuron, float64)."""
    for variant, suffix in (("TE", ""), ("DE", "_DE")):
        st = getattr(ab, variant)
        dl = st.loss.double() - base.loss.double()[:, None]
        part[variant] += dl.abs().sum(0)
        part[f"mean_delta_loss{suffix}"] += dl.sum(0)
        part[f"abs_delta_entropy{suffix}"] += (st.entropy - base.entropy[:, None]).double().abs().sum(0)
        part[f"top1_change_frac{suffix}"] += st.top1_changed.double().sum(0)
    if isinstance(ab.DE_freq, FreqLoss):
        dl = ab.DE_freq.loss.double() - base.loss.double()[:, None]
        part["DE_freq"] += dl.abs().sum(0)
        part["mean_delta_loss_DE_freq"] += dl.sum(0)
        part["de_freq_exact_share"] += ((ab.DE_freq.order < 0) | (ab.DE_freq.order > NMOM)).double().sum(0)
    if ab.kl_TE is not None:
        part["abs_delta_kl"] += (ab.kl_TE - base_kl[:, None]).double().abs().sum(0)


@torch.no_grad()
def sweep(
    layer: FinalLayer,
    cache: ForwardCache,
    *,
    mode: AblationMode = "mean",
    freq: FreqDirection | None = None,
    neuron_chunk: int = 128,
    token_chunk: int = 256,
    backend: Backend = "auto",
    checkpoints: CheckpointStore | None = None,
    progress: bool = True,
    on_chunk: Callable[[int, int], None] | None = None,
    freq_tol: float = FREQ_SERIES_TOL,
) -> NeuronEffects:
    """Ablate every final-layer neuron in closed form and average the effects over tokens: TE and
    DE, and with ``freq`` also DE_freq and |change of KL(P_freq || P_model)|, all in one pass.

    DE_freq's loss is taken in the TE pass, by a series in D where its error bound is below
    ``freq_tol`` (per token; 0 makes every pair exact) and by exact exponentials elsewhere
    (``effects.ablated_stats``). With ``checkpoints`` each finished neuron chunk is kept, stamped
    with the settings and data it was made with, and a rerun reuses the chunks whose stamp matches.
    """
    n, d_mlp = cache.n_tokens, layer.d_mlp
    mean = cache.acts.mean(0)
    names = effect_fields(freq)
    acc = {name: torch.zeros(d_mlp, dtype=torch.float64) for name in names}
    all_neurons = torch.arange(d_mlp)
    bases, base_kls = [], []
    for sl, c in chunks(layer, cache, all_neurons[:1], torch.zeros(n, 1), token_chunk):
        bases.append(clean_stats(c.L, c.s, layer, cache.target[sl], backend))
        base_kls.append(clean_kl(layer, c, bases[-1], freq) if freq is not None else None)
    stamp = {
        "format": CHECKPOINT_FORMAT,
        "n_tokens": n,
        "d_mlp": d_mlp,
        "mode": mode,
        "neuron_chunk": neuron_chunk,
        "resid_sum": float(cache.resid.double().sum()),
        "acts_sum": float(cache.acts.double().sum()),
        "freq_sum": None if freq is None else float((freq.v.double() * freq.p.double()).sum()),
    }
    bar = tqdm(total=d_mlp, desc="ablation sweep", unit="neuron", disable=not progress)
    reused = 0
    for k0 in range(0, d_mlp, neuron_chunk):
        idx = all_neurons[k0 : k0 + neuron_chunk]
        name = f"sweep_{k0:06d}"
        saved = checkpoints.load(name, stamp) if checkpoints is not None else None
        if saved is not None:
            for f in names:
                acc[f][idx] = torch.from_numpy(saved[f])
            reused += 1
            bar.update(len(idx))
            continue
        part = {f: torch.zeros(len(idx), dtype=torch.float64) for f in names}
        new = ablated_values(cache.acts[:, idx], mean[idx], mode)
        for (sl, c), base, base_kl in zip(chunks(layer, cache, idx, new, token_chunk), bases, base_kls):
            ab = ablated_stats(layer, c, base, cache.target[sl], freq, backend, freq_series=True, freq_tol=freq_tol)
            _accumulate(part, ab, base, base_kl)
        for f in names:
            acc[f][idx] = part[f] / n
        if checkpoints is not None:
            checkpoints.save(name, stamp, {f: acc[f][idx].numpy() for f in names})
        bar.update(len(idx))
        if on_chunk is not None:
            on_chunk(k0, len(idx))
    bar.close()
    if reused:
        log.info("resumed: reused %d of %d finished sweep chunks", reused, -(-d_mlp // neuron_chunk))
    clean = CleanTokenStats(
        loss=torch.cat([b.loss for b in bases]),
        entropy=torch.cat([b.entropy for b in bases]),
        kl=torch.cat(base_kls) if freq is not None else None,
    )
    return NeuronEffects(mean_activation=mean, clean=clean, chunks_reused=reused, **{f: acc[f].float() for f in names})
