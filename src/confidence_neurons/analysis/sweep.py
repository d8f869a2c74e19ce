"""The ablation sweep: TE, DE and DE_freq of every final-layer neuron in one pass (Sec. 3.2, 4).

Each neuron is mean-ablated in closed form (``closed_form``) and its effects are averaged over
the cached tokens into a :class:`NeuronEffects`. Neurons are taken in chunks; with a checkpoint
store every finished chunk is kept, stamped with the sha256 of the cache, the final layer and
P_freq it was computed from, so a stopped sweep resumes where it was and a chunk of other inputs,
or one edited or damaged since, is recomputed rather than reused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from confidence_neurons.analysis.closed_form import AblationMode, ablated_values, chunks, layer_on
from confidence_neurons.analysis.effects import (
    FREQ_SERIES_TOL,
    AblatedStats,
    CleanStats,
    FreqLoss,
    ablated_stats,
    clean_kl,
    clean_stats,
)
from confidence_neurons.analysis.forward import ForwardCache, layer_digest
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import NMOM, Backend, SoftmaxStats, is_out_of_memory, resolve_backend
from confidence_neurons.errors import ToolkitError
from confidence_neurons.files import require_space, sha256_of
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.stores import CheckpointStore

log = logging.getLogger(__name__)

#: Bumped whenever what a checkpoint holds or its stamp records changes, so older chunks are recomputed.
CHECKPOINT_FORMAT = 4


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


def checkpoint_stamp(
    layer: FinalLayer,
    cache: ForwardCache,
    mode: str,
    freq: FreqDirection | None,
    neuron_chunk: int,
    freq_tol: float,
    mean: Tensor,
) -> dict:
    """What a sweep chunk is computed from: the settings that change its numbers and the sha256 of its inputs."""
    return {
        "format": CHECKPOINT_FORMAT,
        "n_tokens": cache.n_tokens,
        "d_mlp": layer.d_mlp,
        "mode": mode,
        "neuron_chunk": neuron_chunk,
        "freq_tol": freq_tol,
        "cache_sha256": cache.content_digest(),
        "final_layer_sha256": layer_digest(layer),
        "mean_sha256": sha256_of(mean.detach().double().cpu().numpy()),
        "freq_sha256": None
        if freq is None
        else sha256_of(freq.p.detach().double().cpu().numpy(), freq.v.detach().double().cpu().numpy()),
    }


def _checkpoint_bytes(d_mlp: int, neuron_chunk: int, n_fields: int) -> int:
    """About the bytes of all of a sweep's checkpoint files: float64 per field and neuron, plus each file's
    zip and .npy headers and stamp (a generous 4 kB), plus its manifest line.
    """
    return d_mlp * n_fields * 8 + -(-d_mlp // neuron_chunk) * (4096 + n_fields * 256 + 1024)


def _to(st: CleanStats, device: torch.device | str) -> CleanStats:
    s = st.stats
    moved = SoftmaxStats(*(getattr(s, f).to(device) for f in ("max", "S", "Sz", "shift", "y_target", "y_ref")))
    return CleanStats(moved, st.shift.to(device), st.argmax.to(device))


def out_of_memory_message(device: torch.device | str, neuron_chunk: int, token_chunk: int) -> str:
    """The one sentence an out-of-memory error in the sweep becomes."""
    return (
        f"the ablation sweep ran out of memory on {device} with --token-chunk {token_chunk} and --neuron-chunk "
        f"{neuron_chunk}: lower --token-chunk or --neuron-chunk (peak memory grows with their product times d_vocab)"
    )


@contextmanager
def _memory_errors_explained(device, neuron_chunk: int, token_chunk: int):
    try:
        yield
    except Exception as exc:
        if is_out_of_memory(exc):
            raise ToolkitError(out_of_memory_message(device, neuron_chunk, token_chunk)) from exc
        raise


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
    device: torch.device | str | None = None,
    mean_act: Tensor | None = None,
    only_chunks: Collection[int] | None = None,
) -> NeuronEffects:
    """Ablate every final-layer neuron in closed form and average the effects over tokens: TE and
    DE, and with ``freq`` also DE_freq and |change of KL(P_freq || P_model)|, all in one pass.

    DE_freq's loss is taken in the TE pass, by a series in D where its error bound is below
    ``freq_tol`` (per token; 0 makes every pair exact) and by exact exponentials elsewhere
    (``effects.ablated_stats``). With ``checkpoints`` each finished neuron chunk is kept, stamped
    with the settings and data it was made with, and a rerun reuses the chunks whose stamp matches.

    ``device`` (default CPU) is where the work runs: W_U, b_U and the frequency vectors are moved
    there once, W_out's rows and the cache's rows one chunk at a time (the ForwardCache stays on the
    host), and the per-neuron sums come back as float64 on the CPU. Device memory is bounded by the
    chunk sizes, not by the number of tokens or neurons; running out of it raises a ToolkitError
    that names the flags to lower.

    ``mean_act`` (d_mlp,) is the mean-ablation value (``forward.ablation_mean``); default: the mean over
    ``cache``'s rows.
    ``only_chunks`` (first neurons of chunks, from :func:`chunk_starts`) makes this one shard of a
    sharded sweep: only those chunks are computed (and checkpointed); every other neuron's
    effects are 0. Each chunk is computed by the same code on the same token chunks as in the full
    sweep, so shards merged through a checkpoint store give the full sweep's numbers exactly.
    """
    dev = torch.device(device if device is not None else "cpu")
    resolve_backend(backend, dev)  # a C kernel asked for on a GPU fails here, before any work
    with _memory_errors_explained(dev, neuron_chunk, token_chunk):
        return _sweep(
            layer,
            cache,
            mode,
            freq,
            neuron_chunk,
            token_chunk,
            backend,
            checkpoints,
            progress,
            on_chunk,
            freq_tol,
            dev,
            mean_act,
            None if only_chunks is None else frozenset(only_chunks),
        )


def chunk_starts(d_mlp: int, neuron_chunk: int) -> list[int]:
    """The first neuron of each neuron chunk of a sweep (the checkpoint and sharding unit)."""
    return list(range(0, d_mlp, neuron_chunk))


def checkpoint_name(k0: int) -> str:
    """The checkpoint name of the neuron chunk that starts at neuron ``k0``."""
    return f"sweep_{k0:06d}"


def _sweep(
    layer,
    cache,
    mode,
    freq,
    neuron_chunk,
    token_chunk,
    backend,
    checkpoints,
    progress,
    on_chunk,
    freq_tol,
    dev,
    mean_act,
    only_chunks=None,
) -> NeuronEffects:
    n, d_mlp = cache.n_tokens, layer.d_mlp
    mean = cache.acts.mean(0) if mean_act is None else mean_act.float()
    names = effect_fields(freq)
    acc = {name: torch.zeros(d_mlp, dtype=torch.float64) for name in names}
    all_neurons = torch.arange(d_mlp)
    dlayer = layer_on(layer, dev)
    dfreq = None if freq is None else FreqDirection(freq.p.to(dev), freq.v.to(dev))
    host = torch.device("cpu")
    bases, base_kls = [], []  # per token chunk, kept on the host: O(N) scalars
    for sl, c in chunks(dlayer, cache, all_neurons[:1], lambda a: a, token_chunk):
        base = clean_stats(c.L, c.s, dlayer, cache.target[sl].to(dev), backend)
        base_kls.append(clean_kl(dlayer, c, base, dfreq).to(host) if freq is not None else None)
        bases.append(_to(base, host))
    stamp = None
    if checkpoints is not None:
        stamp = checkpoint_stamp(layer, cache, mode, freq, neuron_chunk, freq_tol, mean)
        checkpoints.folder.mkdir(parents=True, exist_ok=True)
        require_space(checkpoints.folder, _checkpoint_bytes(d_mlp, neuron_chunk, len(names)), "the sweep's checkpoints")
    bar = tqdm(total=d_mlp, desc="ablation sweep", unit="neuron", disable=not progress)
    reused = 0
    for k0 in chunk_starts(d_mlp, neuron_chunk):
        idx = all_neurons[k0 : k0 + neuron_chunk]
        if only_chunks is not None and k0 not in only_chunks:  # another shard's chunk
            bar.update(len(idx))
            continue
        name = checkpoint_name(k0)
        saved = checkpoints.load(name, stamp) if checkpoints is not None else None
        if saved is not None:
            for f in names:
                acc[f][idx] = torch.from_numpy(saved[f])
            reused += 1
            bar.update(len(idx))
            continue
        part = {f: torch.zeros(len(idx), dtype=torch.float64, device=dev) for f in names}
        mean_k = mean[idx].to(dev)
        new = lambda a: ablated_values(a, mean_k, mode)  # noqa: E731
        for (sl, c), base, base_kl in zip(chunks(dlayer, cache, idx, new, token_chunk), bases, base_kls):
            tgt = cache.target[sl].to(dev)
            base = _to(base, dev)
            ab = ablated_stats(dlayer, c, base, tgt, dfreq, backend, freq_series=True, freq_tol=freq_tol)
            _accumulate(part, ab, base, None if base_kl is None else base_kl.to(dev))
        for f in names:
            acc[f][idx] = part[f].to(host) / n
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
