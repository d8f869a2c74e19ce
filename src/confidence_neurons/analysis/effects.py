"""Per-token effects of ablating final-layer neurons: softmax statistics of the Eq. 5-7 logits.

``ablated_stats`` reduces one chunk's TE, DE and DE_freq logits (``closed_form``) over the
vocabulary with the fused kernel; ``per_token_effects`` does it for a few neurons over every
cached token and keeps the per-token values (``inspect``, the induction study, the tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from confidence_neurons.analysis.closed_form import (
    AblationMode,
    Chunk,
    ablated_values,
    chunks,
    de_freq_shift,
    de_logits,
    layer_on,
    te_logits,
)
from confidence_neurons.analysis.forward import ForwardCache
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import Backend, SoftmaxStats, softmax_stats
from confidence_neurons.models.final_layer import FinalLayer

#: The ablation variants of Sec. 3.2 and 4: total effect, direct effect, frequency-direct effect.
VARIANTS = ("TE", "DE")
FREQ_VARIANTS = ("TE", "DE", "DE_freq")

#: Largest error allowed on a DE_freq loss taken from the kernel's series (kernel.series_orders);
#: float32 rounding of a loss of order 1 is already about 1e-7.
FREQ_SERIES_TOL = 1e-7


def variants(freq: FreqDirection | None) -> tuple[str, ...]:
    """The ablation variants computed with (TE, DE, DE_freq) or without (TE, DE) a frequency direction."""
    return FREQ_VARIANTS if freq is not None else VARIANTS


@dataclass
class CleanStats:
    """Clean per-token statistics (N,) and the kernel's shift/reference token for the ablations."""

    stats: SoftmaxStats
    shift: Tensor
    argmax: Tensor

    @property
    def loss(self) -> Tensor:
        return self.stats.loss[:, 0]

    @property
    def entropy(self) -> Tensor:
        return self.stats.entropy[:, 0]


def clean_stats(L: Tensor, s: Tensor, layer: FinalLayer, target: Tensor, backend: Backend) -> CleanStats:
    """Clean statistics through the same kernel as the ablations, so that rounding cancels in differences."""
    z = L / s + layer.b_U
    if layer.softcap:
        z = layer.softcap * torch.tanh(z / layer.softcap)
    shift, argmax = z.max(-1)
    zeros = L.new_zeros(L.shape[0], 1)
    st = softmax_stats(
        L,
        L.new_zeros(1, L.shape[1]),
        layer.b_U,
        1.0 / s,
        zeros,
        target,
        shift=shift,
        ref=argmax,
        softcap=layer.softcap,
        backend=backend,
    )
    return CleanStats(st, shift, argmax)


def clean_kl(layer: FinalLayer, c: Chunk, base: CleanStats, freq: FreqDirection) -> Tensor:
    """KL(P_freq || P_model) of the clean logits, (T,)."""
    if layer.softcap:
        raise ValueError("the KL to P_freq needs logits linear in the residual; logit soft-capping is not supported")
    zp = (c.L @ freq.p) / c.s[:, 0] + float(layer.b_U @ freq.p)
    return freq.plogp - zp + base.stats.logsumexp[:, 0]


@dataclass
class FreqLoss:
    """DE_freq's per-(token, neuron) loss, (T, K), computed in the TE pass; ``order`` is the kernel's
    way to it per pair (kernel.series_orders: 1..NMOM series order, NMOM + 1 exact, 0 nothing to do).
    """

    loss: Tensor
    order: Tensor


@dataclass
class AblatedStats:
    """One chunk's ablated statistics, (T, K) each: TE (Eq. 5) and DE (Eq. 6) as full softmax
    statistics; with a frequency direction DE_freq (Eq. 7) and ``kl_TE``, the KL(P_freq || P_model)
    of the TE logits.
    """

    TE: SoftmaxStats
    DE: SoftmaxStats | None
    DE_freq: SoftmaxStats | FreqLoss | None = None
    kl_TE: Float[Tensor, "T K"] | None = None


def ablated_stats(
    layer: FinalLayer,
    c: Chunk,
    base: CleanStats,
    target: Tensor,
    freq: FreqDirection | None,
    backend: Backend,
    freq_series: bool = False,
    freq_tol: float = FREQ_SERIES_TOL,
    te_only: bool = False,
) -> AblatedStats:
    """Softmax statistics of the TE and DE logits of one chunk and, with ``freq``, DE_freq and the KL.

    With ``freq_series`` DE_freq is a ``FreqLoss`` (its loss only, as Eq. 8 needs) taken in the TE pass:
    its logits are the TE logits plus D v_freq, and the kernel sums their softmax alongside TE's, by
    a series in D (error below ``freq_tol`` in each loss) or exactly; otherwise DE_freq gets full
    ``SoftmaxStats`` from a third pass over the vocabulary. ``te_only`` (no ``freq``): TE alone, DE None.
    """
    if freq is not None and layer.softcap:
        raise ValueError(
            "DE_freq and the KL to P_freq need logits linear in the residual; logit soft-capping is not supported"
        )
    common = dict(shift=base.shift, ref=base.argmax, softcap=layer.softcap, backend=backend)

    def stats(logits, **extra) -> SoftmaxStats:
        if logits.C is not None:
            extra |= {"P": c.post.LP, "C": logits.C}
        return softmax_stats(c.L, c.U, layer.b_U, logits.A, logits.B, target, **extra, **common)

    te = te_logits(c, layer)
    if freq is None:
        return AblatedStats(TE=stats(te), DE=None if te_only else stats(de_logits(c, layer)))
    if te_only:
        raise ValueError("te_only computes TE alone; DE_freq and the KL need a frequency pass")
    D = de_freq_shift(c, layer, te, freq)
    if freq_series:
        te_stats = stats(te, w=freq.w, G=D, w_max=freq.radius, tol=freq_tol)
        # logsumexp(TE logits + D v_freq) = logsumexp(TE logits + D w) + D a
        lse = te_stats.logsumexp.double() + te_stats.tilt.double() + D.double() * freq.center
        y_target = te_stats.y_target.double() + D.double() * freq.v[target].double()[:, None]
        de_freq = FreqLoss(lse - y_target, te_stats.order)
    else:
        te_stats = stats(te)
    out = AblatedStats(TE=te_stats, DE=stats(de_logits(c, layer)))
    out.DE_freq = de_freq if freq_series else stats(te, Q=freq.v, D=D)
    out.kl_TE = freq.plogp - (te.dot(c, freq.p) + float(layer.b_U @ freq.p)) + te_stats.logsumexp
    return out


@dataclass
class VariantEffects:
    """Per-token ablated statistics of one variant, (N, K): loss, entropy, and whether the top-1 changed."""

    loss: Float[Tensor, "N K"]
    entropy: Float[Tensor, "N K"]
    top1_changed: Float[Tensor, "N K"]


@dataclass
class TokenEffects:
    """Clean per-token statistics (N,) and, per variant, the ablated ones (N, K) for K neurons.

    ``kl`` (N,) and ``kl_TE`` (N, K) are KL(P_freq || P_model), clean and on ablation (TE), with a
    frequency direction; ``DE_freq`` likewise.
    """

    loss: Float[Tensor, " N"]
    entropy: Float[Tensor, " N"]
    argmax: Int[Tensor, " N"]
    TE: VariantEffects
    DE: VariantEffects
    DE_freq: VariantEffects | None = None
    kl: Float[Tensor, " N"] | None = None
    kl_TE: Float[Tensor, "N K"] | None = None

    def variant(self, name: str) -> VariantEffects:
        return getattr(self, name)


@torch.no_grad()
def per_token_effects(
    layer: FinalLayer,
    cache: ForwardCache,
    neurons: list[int],
    *,
    mode: AblationMode = "mean",
    mean_act: Tensor | None = None,
    freq: FreqDirection | None = None,
    token_chunk: int = 256,
    backend: Backend = "auto",
    device: torch.device | str | None = None,
    te_only: bool = False,
    below: Sequence[bool] | None = None,
) -> TokenEffects:
    """Per-token clean and ablated statistics for a few neurons; DE_freq by an exact third pass.

    ``te_only``: the total effect alone (``DE`` None), half the passes over the vocabulary, for
    readers of TE only (Fig. 5b, 9, 10c). ``below`` (mode ``clip``; one flag per neuron): clip the
    neurons flagged from below (``clip_below``), the others from above, in one pass over the tokens.

    The work runs on ``device`` (default CPU; ``sweep`` says how), the results are on the CPU.
    """
    dev = torch.device(device if device is not None else "cpu")
    idx = torch.tensor(neurons, dtype=torch.long)
    mean = cache.acts.mean(0) if mean_act is None else mean_act
    mean_k = mean[idx].to(dev, torch.float32)
    layer = layer_on(layer, dev)
    freq = None if freq is None else FreqDirection(freq.p.to(dev), freq.v.to(dev))
    parts: dict[str, list[Tensor]] = {}

    def add(key: str, value: Tensor) -> None:
        parts.setdefault(key, []).append(value.cpu())

    if below is not None:
        if mode != "clip" or len(below) != len(neurons):
            raise ValueError("below needs mode 'clip' and one flag per neuron")
        flags = torch.tensor([bool(b) for b in below], device=dev)

        def values(a: Tensor) -> Tensor:
            return torch.where(flags, ablated_values(a, mean_k, "clip_below"), ablated_values(a, mean_k, "clip"))
    else:

        def values(a: Tensor) -> Tensor:
            return ablated_values(a, mean_k, mode)

    for sl, c in chunks(layer, cache, idx, values, token_chunk):
        tgt = cache.target[sl].to(dev)
        base = clean_stats(c.L, c.s, layer, tgt, backend)
        add("loss", base.loss)
        add("entropy", base.entropy)
        add("argmax", base.argmax)
        if freq is not None:
            add("kl", clean_kl(layer, c, base, freq))
        ab = ablated_stats(layer, c, base, tgt, freq, backend, te_only=te_only)
        for v in ("TE",) if te_only else variants(freq):
            st = getattr(ab, v)
            add(f"{v}.loss", st.loss)
            add(f"{v}.entropy", st.entropy)
            add(f"{v}.top1_changed", st.top1_changed)
        if ab.kl_TE is not None:
            add("kl_TE", ab.kl_TE)
    cat = {k: torch.cat(v) for k, v in parts.items()}

    def variant(v: str) -> VariantEffects | None:
        if f"{v}.loss" not in cat:
            return None
        return VariantEffects(cat[f"{v}.loss"], cat[f"{v}.entropy"], cat[f"{v}.top1_changed"])

    return TokenEffects(
        loss=cat["loss"],
        entropy=cat["entropy"],
        argmax=cat["argmax"],
        TE=variant("TE"),
        DE=variant("DE"),
        DE_freq=variant("DE_freq"),
        kl=cat.get("kl"),
        kl_TE=cat.get("kl_TE"),
    )
