"""Causal mediation of every final-layer neuron in closed form (Sec. 3.2, Eq. 4-6).

Mean-ablating neuron i moves the final residual to x^{-i} = x + delta w_out (Eq. 4), with
delta = n_bar - n. Everything after that point is the final norm and W_U, so the ablated logits
need no new forward pass:
    W_U center(x^{-i}) = L + delta U_i,   L = W_U^T center(x),  U_i = W_U^T center(w_out^{(i)}),
    |center(x^{-i})|^2 = |center(x)|^2 + 2 delta <center(x), center(w)> + delta^2 |center(w)|^2,
so the ablated scale s' follows from three dot products. TE uses s' (Eq. 5); DE freezes the
scale at its clean value s (Eq. 6). The fused kernel reduces the logits over the vocabulary
without storing them.

Memory is bounded by the chunk sizes, whatever the token count: the sweep holds
(neuron_chunk + token_chunk) x d_vocab floats for U and L, plus the cached residual and
activations (n_tokens x (d_model + d_mlp)).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from confidence_neurons.analysis.kernel import NMOM, Backend, SoftmaxStats, softmax_stats
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel

log = logging.getLogger(__name__)

AblationMode = Literal["mean", "clip"]
VARIANTS = ("TE", "DE")
FREQ_VARIANTS = ("TE", "DE", "DE_freq")


@dataclass(frozen=True)
class FreqDirection:
    """Sec. 4: the unigram distribution ``p`` (d_vocab,) and v_freq = log p - mean(log p) (d_vocab,)."""

    p: Tensor
    v: Tensor

    def __post_init__(self) -> None:
        object.__setattr__(self, "p", self.p.float().contiguous())
        object.__setattr__(self, "v", self.v.float().contiguous())

    @property
    def plogp(self) -> float:
        p = self.p.double()
        return float((p[p > 0] * p[p > 0].log()).sum())

    def kl(self, z: Tensor, lse: Tensor) -> Tensor:
        """KL(P_freq || softmax(z)) from logits z (..., V) and their logsumexp (...)."""
        return self.plogp - z @ self.p + lse

    @cached_property
    def center(self) -> float:
        """The midpoint a of v_freq's range: the DE_freq series is taken in w = v_freq - a."""
        return float((self.v.max() + self.v.min()) / 2)

    @cached_property
    def radius(self) -> float:
        """max |v_freq - a|."""
        return float((self.v.max() - self.v.min()) / 2)

    @cached_property
    def w(self) -> Tensor:
        return (self.v - self.center).contiguous()


@dataclass
class ForwardCache:
    """One clean forward pass over the run's tokens, flattened over (sequence, position).

    resid: (N, d_model) input of the final norm; acts: (N, d_mlp) final-layer neuron activations;
    target: (N,) next token; logits_check: max |closed-form clean logits - model logits|.
    Position p of each sequence predicts token p + 1, so N = n_seqs * (seq_len - 1).
    """

    resid: Float[Tensor, "N d_model"]
    acts: Float[Tensor, "N d_mlp"]
    target: Int[Tensor, "N"]
    seq_len: int
    logits_check: float = 0.0
    mlp_out: Float[Tensor, "N d_model"] | None = None  # the last MLP's output before a post-MLP norm

    @property
    def n_tokens(self) -> int:
        return self.target.shape[0]


@torch.no_grad()
def run_forward(model: LoadedModel, layer: FinalLayer, tokens: Int[Tensor, "n_seqs seq_len"],
                batch_size: int = 8, progress: bool = True) -> ForwardCache:
    """Cache the final residual and neuron activations, and check the closed form's clean logits."""
    resid, acts, targets, worst = [], [], [], 0.0
    post = layer.post_mlp_norm
    names = {layer.act_hook, layer.resid_hook, layer.scale_hook} | ({post.in_hook} if post else set())
    mlp_out = []
    for b0 in tqdm(range(0, tokens.shape[0], batch_size), desc="forward pass", disable=not progress, unit="batch"):
        batch = tokens[b0 : b0 + batch_size]
        logits, cache = model.bridge.run_with_cache(batch, names_filter=lambda n: n in names)
        x = cache[layer.resid_hook][:, :-1].float()
        mine = layer.logits(x).log_softmax(-1)
        worst = max(worst, (mine - logits[:, :-1].float().log_softmax(-1)).abs().max().item())
        scale_err = (layer.scale(x) - cache[layer.scale_hook][:, :-1].float()).abs().max().item()
        if scale_err > 1e-3 * max(1.0, cache[layer.scale_hook].abs().max().item()):
            raise RuntimeError(f"the final norm's scale differs from the closed form by {scale_err:.3g}: unsupported norm")
        resid.append(x.reshape(-1, x.shape[-1]))
        acts.append(cache[layer.act_hook][:, :-1].float().reshape(-1, layer.d_mlp))
        targets.append(batch[:, 1:].reshape(-1))
        if post is not None:
            mlp_out.append(cache[post.in_hook][:, :-1].float().reshape(-1, layer.d_model))
    if worst > 1e-2:
        raise RuntimeError(
            f"closed-form logits differ from the model's by {worst:.3g} (log-prob): the final norm or "
            "unembedding of this architecture is not what the closed form assumes"
        )
    return ForwardCache(torch.cat(resid), torch.cat(acts), torch.cat(targets), tokens.shape[1], worst,
                        torch.cat(mlp_out) if post is not None else None)


def ablated_values(acts: Tensor, mean: Tensor, mode: AblationMode) -> Tensor:
    """Mean ablation sets the activation to its mean; clipped ablation only where it exceeds it (Sec. 5)."""
    return mean.expand_as(acts) if mode == "mean" else torch.minimum(acts, mean)


@dataclass
class PostNormChunk:
    """Extra terms when the MLP output m passes a norm post(m) = g m / r(m) before the residual.

    Ablation moves m to m + delta w, so the residual moves by c1 P + c2 q with P = g m,
    q = g w, c1 = 1/r' - 1/r and c2 = delta/r', where r' follows from |m|^2, m.w and |w|^2."""

    LP: Tensor     # (T, V)  W_U^T center(P)
    r: Tensor      # (T, 1)  clean post-norm scale
    mm: Tensor     # (T, 1)  |m|^2
    mw: Tensor     # (T, K)  m . w
    ww: Tensor     # (K,)    |w|^2
    PP: Tensor     # (T, 1)  |center(P)|^2
    xP: Tensor     # (T, 1)  center(x) . center(P)
    Pq: Tensor     # (T, K)  center(P) . center(q)
    eps: float


@dataclass
class Chunk:
    """Per-chunk tensors of the closed form for tokens T and neurons K (with a post-MLP norm,
    w_out below stands for q = g w_out)."""

    L: Tensor      # (T, V)   W_U^T center(x)
    s: Tensor      # (T, 1)   clean scale
    xx: Tensor     # (T, 1)   |center(x)|^2
    U: Tensor      # (K, V)   W_U^T center(w_out)
    xw: Tensor     # (T, K)   <center(x), center(w_out)>
    ww: Tensor     # (K,)     |center(w_out)|^2
    delta: Tensor  # (T, K)   ablated - clean activation
    post: PostNormChunk | None = None


def closed_form_coefficients(c: Chunk, d_model: int, eps: float, variant: str) -> tuple[Tensor, Tensor, Tensor | None]:
    """(A, B, C) with ablated logits A L + B U + C LP + b_U: TE lets the final scale move, DE
    freezes it (Eq. 5-6). Without a post-MLP norm C is None and the residual moves by delta w_out."""
    if c.post is None:
        c1, c2 = None, c.delta
        xx = c.xx + 2 * c.delta * c.xw + c.delta.pow(2) * c.ww
    else:
        p = c.post
        r_abl = ((p.mm + 2 * c.delta * p.mw + c.delta.pow(2) * p.ww) / d_model + p.eps).sqrt()
        c1, c2 = 1.0 / r_abl - 1.0 / p.r, c.delta / r_abl
        xx = (c.xx + c1.pow(2) * p.PP + c2.pow(2) * c.ww + 2 * c1 * p.xP + 2 * c2 * c.xw + 2 * c1 * c2 * p.Pq)
    s = c.s.expand_as(c.delta) if variant == "DE" else (xx / d_model + eps).sqrt()
    return 1.0 / s, c2 / s, None if c1 is None else c1 / s


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
    zeros = torch.zeros(L.shape[0], 1)
    st = softmax_stats(L, torch.zeros(1, L.shape[1]), layer.b_U, 1.0 / s, zeros, target, shift=shift, ref=argmax,
                       softcap=layer.softcap, backend=backend)
    return CleanStats(st, shift, argmax)


def _chunks(layer: FinalLayer, cache: ForwardCache, neurons: Tensor, new_values: Tensor, token_chunk: int):
    """Yield (token slice, Chunk) over tokens for a fixed set of neurons."""
    post = layer.post_mlp_norm
    w = layer.W_out[neurons]
    wc = layer.center(w if post is None else post.g * w)
    U = wc @ layer.W_U
    ww = wc.pow(2).sum(-1)
    for t0 in range(0, cache.n_tokens, token_chunk):
        sl = slice(t0, t0 + token_chunk)
        xc = layer.center(cache.resid[sl])
        xx = xc.pow(2).sum(-1, keepdim=True)
        extra = None
        if post is not None:
            m = cache.mlp_out[sl]
            Pc = layer.center(post.g * m)
            mm = m.pow(2).sum(-1, keepdim=True)
            extra = PostNormChunk(LP=Pc @ layer.W_U, r=(mm / layer.d_model + post.eps).sqrt(), mm=mm, mw=m @ w.T,
                                  ww=w.pow(2).sum(-1), PP=Pc.pow(2).sum(-1, keepdim=True),
                                  xP=(xc * Pc).sum(-1, keepdim=True), Pq=Pc @ wc.T, eps=post.eps)
        yield sl, Chunk(L=xc @ layer.W_U, s=(xx / layer.d_model + layer.eps).sqrt(), xx=xx, U=U,
                        xw=xc @ wc.T, ww=ww, delta=new_values[sl] - cache.acts[sl][:, neurons], post=extra)


def variants(freq: FreqDirection | None) -> tuple[str, ...]:
    return FREQ_VARIANTS if freq is not None else VARIANTS


#: Largest error allowed on a DE_freq loss taken from the kernel's series (kernel.series_orders);
#: float32 rounding of a loss of order 1 is already about 1e-7.
FREQ_SERIES_TOL = 1e-7


@dataclass
class FreqLoss:
    """DE_freq's per-(token, neuron) loss, (T, K), computed in the TE pass; ``order`` is the kernel's
    way to it per pair (kernel.series_orders: 1..NMOM series order, NMOM + 1 exact, 0 nothing to do)."""

    loss: Tensor
    order: Tensor


def ablated_stats(layer: FinalLayer, c: Chunk, base: CleanStats, target: Tensor, freq: FreqDirection | None,
                  backend: Backend, freq_series: bool = False,
                  freq_tol: float = FREQ_SERIES_TOL) -> dict[str, SoftmaxStats | FreqLoss | Tensor]:
    """Softmax statistics of every variant for one chunk; with ``freq`` also DE_freq (Eq. 7: the
    ablated logits' component along v_freq is held at its clean value) and 'TE_kl', the ablated
    KL(P_freq || P_model) (T, K).

    With ``freq_series`` DE_freq is a ``FreqLoss`` (its loss only, as Eq. 8 needs) taken in the TE pass:
    its logits are the TE logits plus D v_freq, and the kernel sums their softmax alongside TE's, by
    a series in D (error below ``freq_tol`` in each loss) or exactly; otherwise DE_freq gets full
    ``SoftmaxStats`` from a third pass over the vocabulary."""
    out: dict[str, SoftmaxStats | FreqLoss | Tensor] = {}
    def linear(A: Tensor, B: Tensor, C: Tensor | None, vec: Tensor) -> Tensor:
        """(ablated logits - b_U) . vec, without forming the logits."""
        z = A * (c.L @ vec)[:, None] + B * (c.U @ vec)[None, :]
        return z if C is None else z + C * (c.post.LP @ vec)[:, None]

    if freq is not None and layer.softcap:
        raise ValueError("DE_freq and the KL to P_freq need logits linear in the residual; "
                         "logit soft-capping is not supported")

    def freq_coefficient(A: Tensor, B: Tensor, C: Tensor | None) -> Tensor:
        """Eq. 7 as DE_freq logits = TE logits + D v_freq: D = (l - l^{-i}) . v_freq / |v_freq|^2, (T, K)."""
        bv = float(layer.b_U @ freq.v)
        clean_v = (c.L @ freq.v)[:, None] / c.s + bv  # (T, 1)  l . v_freq
        ablated_v = linear(A, B, C, freq.v) + bv  # (T, K)  l^{-i} . v_freq
        return (clean_v - ablated_v) / float(freq.v @ freq.v)

    common = dict(shift=base.shift, ref=base.argmax, softcap=layer.softcap, backend=backend)
    for v in VARIANTS if freq_series else variants(freq):  # with freq_series DE_freq comes from the TE pass
        A, B, C = closed_form_coefficients(c, layer.d_model, layer.eps, "DE" if v == "DE" else "TE")
        extra = {} if C is None else {"P": c.post.LP, "C": C}
        if v == "DE_freq":
            extra |= {"Q": freq.v, "D": freq_coefficient(A, B, C)}
        elif v == "TE" and freq is not None and freq_series:
            D = freq_coefficient(A, B, C)
            extra |= {"w": freq.w, "G": D, "w_max": freq.radius, "tol": freq_tol}
        out[v] = softmax_stats(c.L, c.U, layer.b_U, A, B, target, **extra, **common)
        if v == "TE" and freq is not None and freq_series:
            te = out[v]
            # logsumexp(TE logits + D v_freq) = logsumexp(TE logits + D w) + D a
            lse = te.logsumexp.double() + te.tilt.double() + D.double() * freq.center
            y_target = te.y_target.double() + D.double() * freq.v[target].double()[:, None]
            out["DE_freq"] = FreqLoss(lse - y_target, te.order)
        if v == "TE" and freq is not None:
            zp = linear(A, B, C, freq.p) + float(layer.b_U @ freq.p)
            out["TE_kl"] = freq.plogp - zp + out["TE"].logsumexp
    return out


def clean_kl(layer: FinalLayer, c: Chunk, base: CleanStats, freq: FreqDirection) -> Tensor:
    """KL(P_freq || P_model) of the clean logits, (T,)."""
    if layer.softcap:
        raise ValueError("the KL to P_freq needs logits linear in the residual; logit soft-capping is not supported")
    zp = (c.L @ freq.p) / c.s[:, 0] + float(layer.b_U @ freq.p)
    return freq.plogp - zp + base.stats.logsumexp[:, 0]


@torch.no_grad()
def per_token_effects(layer: FinalLayer, cache: ForwardCache, neurons: list[int], *, mode: AblationMode = "mean",
                      mean_act: Tensor | None = None, freq: FreqDirection | None = None, token_chunk: int = 256,
                      backend: Backend = "auto") -> dict[str, Tensor]:
    """Per-token clean and ablated statistics for a few neurons.

    Keys: 'loss', 'entropy', 'argmax' (N,) and '{variant}_{loss|entropy|top1_changed}' (N, len(neurons))
    for each variant; with ``freq`` also 'kl' (N,) and 'TE_kl' (N, len(neurons)).
    """
    idx = torch.tensor(neurons, dtype=torch.long)
    mean = cache.acts.mean(0) if mean_act is None else mean_act
    new = ablated_values(cache.acts[:, idx], mean[idx], mode)
    out: dict[str, list[Tensor]] = {}
    for sl, c in _chunks(layer, cache, idx, new, token_chunk):
        tgt = cache.target[sl]
        base = clean_stats(c.L, c.s, layer, tgt, backend)
        out.setdefault("loss", []).append(base.loss)
        out.setdefault("entropy", []).append(base.entropy)
        out.setdefault("argmax", []).append(base.argmax)
        if freq is not None:
            out.setdefault("kl", []).append(clean_kl(layer, c, base, freq))
        for v, st in ablated_stats(layer, c, base, tgt, freq, backend).items():
            if isinstance(st, Tensor):
                out.setdefault(v, []).append(st)
                continue
            out.setdefault(f"{v}_loss", []).append(st.loss)
            out.setdefault(f"{v}_entropy", []).append(st.entropy)
            out.setdefault(f"{v}_top1_changed", []).append(st.top1_changed)
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class SweepResult:
    """Per-neuron means over tokens, each (d_mlp,): for TE and DE, ``abs_dloss[v]`` (= TE or DE),
    ``dloss[v]`` (signed), ``abs_dentropy[v]``, ``top1_change[v]`` (share of tokens); with a frequency
    direction also ``abs_dloss['DE_freq']``, ``dloss['DE_freq']``, ``n_exact['DE_freq']`` (share of
    tokens whose DE_freq loss took exact exponentials rather than the series) and
    ``abs_dkl['TE']``, mean |change of KL(P_freq || P_model)|."""

    mean_act: Tensor
    abs_dloss: dict[str, Tensor] = field(default_factory=dict)
    dloss: dict[str, Tensor] = field(default_factory=dict)
    abs_dentropy: dict[str, Tensor] = field(default_factory=dict)
    top1_change: dict[str, Tensor] = field(default_factory=dict)
    abs_dkl: dict[str, Tensor] = field(default_factory=dict)
    n_exact: dict[str, Tensor] = field(default_factory=dict)  # DE_freq: share of tokens done without the series
    clean: dict[str, Tensor] = field(default_factory=dict)  # per-token (N,): loss, entropy, and kl with freq


def _accumulate(part: dict, stats: dict, base: CleanStats, base_kl: Tensor | None) -> None:
    for v, st in stats.items():
        if v == "TE_kl":
            part[("abs_dkl", "TE")] += (st - base_kl[:, None]).double().abs().sum(0)
            continue
        dl = st.loss.double() - base.loss.double()[:, None]
        part[("abs_dloss", v)] += dl.abs().sum(0)
        part[("dloss", v)] += dl.sum(0)
        if isinstance(st, FreqLoss):
            part[("n_exact", v)] += ((st.order < 0) | (st.order > NMOM)).double().sum(0)
            continue
        part[("abs_dentropy", v)] += (st.entropy - base.entropy[:, None]).double().abs().sum(0)
        part[("top1_change", v)] += st.top1_changed.double().sum(0)


def sweep_keys(freq: FreqDirection | None) -> list[tuple[str, str]]:
    """(field, variant) of every per-neuron mean the sweep accumulates. DE_freq (Eq. 8) is a loss
    effect: the sweep takes only its loss, in the TE pass, and counts the pairs done exactly."""
    keys = [(f, v) for f in ("abs_dloss", "dloss", "abs_dentropy", "top1_change") for v in VARIANTS]
    if freq is not None:
        keys += [("abs_dloss", "DE_freq"), ("dloss", "DE_freq"), ("n_exact", "DE_freq"), ("abs_dkl", "TE")]
    return keys


@torch.no_grad()
def sweep(layer: FinalLayer, cache: ForwardCache, *, mode: AblationMode = "mean", freq: FreqDirection | None = None,
          neuron_chunk: int = 128, token_chunk: int = 256, backend: Backend = "auto",
          checkpoint_dir: Path | None = None, progress: bool = True,
          on_chunk: Callable[[int, int], None] | None = None, freq_tol: float = FREQ_SERIES_TOL) -> SweepResult:
    """Ablate every final-layer neuron in closed form and average the effects over tokens: TE and
    DE, and with ``freq`` also DE_freq and |change of KL(P_freq || P_model)|, all in one pass.

    DE_freq's loss is taken in the TE pass, by a series in D where its error bound is below
    ``freq_tol`` (per token; 0 makes every pair exact) and by exact exponentials elsewhere
    (``ablated_stats``).

    With ``checkpoint_dir`` each finished neuron chunk is saved, and a rerun resumes after the
    last saved chunk (the chunk files record the settings and data they were made with).
    """
    n, d_mlp = cache.n_tokens, layer.d_mlp
    mean = cache.acts.mean(0)
    keys = sweep_keys(freq)
    acc = {key: torch.zeros(d_mlp, dtype=torch.float64) for key in keys}
    all_neurons = torch.arange(d_mlp)
    bases, base_kls = [], []
    for sl, c in _chunks(layer, cache, all_neurons[:1], torch.zeros(n, 1), token_chunk):
        bases.append(clean_stats(c.L, c.s, layer, cache.target[sl], backend))
        base_kls.append(clean_kl(layer, c, bases[-1], freq) if freq is not None else None)
    stamp = {"format": 2, "n_tokens": n, "d_mlp": d_mlp, "mode": mode, "neuron_chunk": neuron_chunk,
             "resid_sum": float(cache.resid.double().sum()), "acts_sum": float(cache.acts.double().sum()),
             "freq_sum": None if freq is None else float((freq.v.double() * freq.p.double()).sum())}
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=d_mlp, desc="ablation sweep", unit="neuron", disable=not progress)
    for k0 in range(0, d_mlp, neuron_chunk):
        idx = all_neurons[k0 : k0 + neuron_chunk]
        ckpt = checkpoint_dir / f"sweep_{k0:06d}.npz" if checkpoint_dir is not None else None
        if ckpt is not None and ckpt.exists():
            saved = np.load(ckpt)
            if json.loads(str(saved["stamp"])) == stamp:
                for f, v in keys:
                    acc[(f, v)][idx] = torch.from_numpy(saved[f"{f}_{v}"])
                bar.update(len(idx))
                continue
        part = {key: torch.zeros(len(idx), dtype=torch.float64) for key in keys}
        new = ablated_values(cache.acts[:, idx], mean[idx], mode)
        for (sl, c), base, base_kl in zip(_chunks(layer, cache, idx, new, token_chunk), bases, base_kls):
            _accumulate(part, ablated_stats(layer, c, base, cache.target[sl], freq, backend, freq_series=True,
                                            freq_tol=freq_tol), base, base_kl)
        for key in keys:
            acc[key][idx] = part[key] / n
        if ckpt is not None:
            tmp = ckpt.with_suffix(".tmp.npz")
            np.savez(tmp, stamp=json.dumps(stamp), **{f"{f}_{v}": acc[(f, v)][idx].numpy() for f, v in keys})
            tmp.replace(ckpt)
        bar.update(len(idx))
        if on_chunk is not None:
            on_chunk(k0, len(idx))
    bar.close()
    result = SweepResult(mean_act=mean, clean={"loss": torch.cat([b.loss for b in bases]),
                                               "entropy": torch.cat([b.entropy for b in bases])})
    if freq is not None:
        result.clean["kl"] = torch.cat(base_kls)
    for (f, v), values in acc.items():
        getattr(result, f)[v] = values.float()
    return result
