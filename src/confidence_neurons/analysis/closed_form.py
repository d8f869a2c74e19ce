"""Causal mediation of every final-layer neuron in closed form (Sec. 3.2, Eq. 4-7).

Mean-ablating neuron i moves the final residual to x^{-i} = x + delta w_out (Eq. 4), with
delta = n_bar - n. Everything after that point is the final norm and W_U, so the ablated logits
need no new forward pass:
    W_U center(x^{-i}) = L + delta U_i,   L = W_U^T center(x),  U_i = W_U^T center(w_out^{(i)}),
    |center(x^{-i})|^2 = |center(x)|^2 + 2 delta <center(x), center(w)> + delta^2 |center(w)|^2,
so the ablated scale s' follows from three dot products. The ablated logits are
A L + B U + C LP + b_U with one coefficient per (token, neuron):
    Eq. 5 (TE):      the scale moves to s':   A = 1/s',  B = delta/s'         (``te_logits``)
    Eq. 6 (DE):      the scale stays at s:    A = 1/s,   B = delta/s          (``de_logits``)
    Eq. 7 (DE_freq): the TE logits with their component along v_freq held at its clean value,
                     i.e. the TE logits plus D v_freq                         (``de_freq_shift``)
(C carries a post-MLP norm, Gemma 2 and 3; it is None otherwise). The fused kernel reduces these
logits over the vocabulary without storing them; ``AblatedLogits.materialize`` forms them, for
readers and tests.

Memory is bounded by the chunk sizes, whatever the token count: a chunk holds
(neuron_chunk + token_chunk) x d_vocab floats for U and L, on the device of the layer's W_U
(``layer_on``), while the ForwardCache stays on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from confidence_neurons.analysis.forward import ForwardCache
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.models.final_layer import FinalLayer

AblationMode = Literal["mean", "clip", "clip_below"]


def ablated_values(acts: Tensor, mean: Tensor, mode: AblationMode) -> Tensor:
    """Mean ablation sets the activation to its mean; clipped ablation only where it exceeds it (Sec. 5);
    ``clip_below`` only where it is below it (the authors' Fig. 5b for neurons that fall during induction).
    """
    if mode == "mean":
        return mean.expand_as(acts)
    return torch.maximum(acts, mean) if mode == "clip_below" else torch.minimum(acts, mean)


@dataclass
class PostNormChunk:
    """Extra terms when the MLP output m passes a norm post(m) = g m / r(m) before the residual.

    Ablation moves m to m + delta w, so the residual moves by c1 P + c2 q with P = g m,
    q = g w, c1 = 1/r' - 1/r and c2 = delta/r', where r' follows from |m|^2, m.w and |w|^2.
    """

    LP: Tensor  # (T, V)  W_U^T center(P)
    r: Tensor  # (T, 1)  clean post-norm scale
    mm: Tensor  # (T, 1)  |m|^2
    mw: Tensor  # (T, K)  m . w
    ww: Tensor  # (K,)    |w|^2
    PP: Tensor  # (T, 1)  |center(P)|^2
    xP: Tensor  # (T, 1)  center(x) . center(P)
    Pq: Tensor  # (T, K)  center(P) . center(q)
    eps: float


@dataclass
class Chunk:
    """Per-chunk tensors of the closed form for tokens T and neurons K (with a post-MLP norm,
    w_out below stands for q = g w_out).
    """

    L: Tensor  # (T, V)   W_U^T center(x)
    s: Tensor  # (T, 1)   clean scale
    xx: Tensor  # (T, 1)   |center(x)|^2
    U: Tensor  # (K, V)   W_U^T center(w_out)
    xw: Tensor  # (T, K)   <center(x), center(w_out)>
    ww: Tensor  # (K,)     |center(w_out)|^2
    delta: Tensor  # (T, K)   ablated - clean activation
    post: PostNormChunk | None = None


def layer_on(layer: FinalLayer, device: torch.device | str | None) -> FinalLayer:
    """``layer`` with the tensors the closed form reads per chunk (W_U, b_U, a post-MLP norm's g) as
    float32 on ``device``; W_out stays where it is (``chunks`` moves the rows of each neuron chunk).
    """
    if device is None:
        return layer
    move = lambda x: x.to(device, torch.float32)  # noqa: E731
    post = layer.post_mlp_norm
    return replace(
        layer,
        W_U=move(layer.W_U),
        b_U=move(layer.b_U),
        post_mlp_norm=None if post is None else replace(post, g=move(post.g)),
    )


NewValues = Tensor | Callable[[Tensor], Tensor]


def chunks(
    layer: FinalLayer, cache: ForwardCache, neurons: Tensor, new_values: NewValues, token_chunk: int
) -> Iterator[tuple[slice, Chunk]]:
    """Yield (token slice, Chunk) over the cached tokens for a fixed set of neurons, whose activations
    become ``new_values``: an (N, K) tensor, or a function from a token chunk's (T, K) activations
    to their new values (so that nothing of size N x K is formed).

    Everything is computed in float32 on the device of ``layer.W_U`` (``layer_on``); the cache may
    stay on the host (even memory-mapped): only one token chunk of it is moved at a time, so memory
    is O(token_chunk x (d_model + d_mlp + d_vocab) + neuron_chunk x d_vocab).
    """
    device = layer.W_U.device
    to_dev = lambda x: x.to(device, torch.float32)  # noqa: E731
    post = layer.post_mlp_norm
    neurons = neurons.to(layer.W_out.device)
    w = to_dev(layer.W_out[neurons])
    wc = layer.center(w if post is None else post.g * w)
    U = wc @ layer.W_U
    ww = wc.pow(2).sum(-1)
    host_idx = neurons.to("cpu")
    for t0 in range(0, cache.n_tokens, token_chunk):
        sl = slice(t0, t0 + token_chunk)
        xc = layer.center(to_dev(cache.resid[sl]))
        xx = xc.pow(2).sum(-1, keepdim=True)
        acts = to_dev(cache.acts[sl][:, host_idx])
        new = new_values(acts) if callable(new_values) else to_dev(new_values[sl])
        extra = None
        if post is not None:
            m = to_dev(cache.mlp_out[sl])
            Pc = layer.center(post.g * m)
            mm = m.pow(2).sum(-1, keepdim=True)
            extra = PostNormChunk(
                LP=Pc @ layer.W_U,
                r=(mm / layer.d_model + post.eps).sqrt(),
                mm=mm,
                mw=m @ w.T,
                ww=w.pow(2).sum(-1),
                PP=Pc.pow(2).sum(-1, keepdim=True),
                xP=(xc * Pc).sum(-1, keepdim=True),
                Pq=Pc @ wc.T,
                eps=post.eps,
            )
        yield (
            sl,
            Chunk(
                L=xc @ layer.W_U,
                s=(xx / layer.d_model + layer.eps).sqrt(),
                xx=xx,
                U=U,
                xw=xc @ wc.T,
                ww=ww,
                delta=new - acts,
                post=extra,
            ),
        )


@dataclass
class AblatedLogits:
    """Ablated logits of a chunk in factored form, A L + B U + C LP + b_U, each coefficient (T, K)."""

    A: Float[Tensor, "T K"]
    B: Float[Tensor, "T K"]
    C: Float[Tensor, "T K"] | None

    def dot(self, c: Chunk, vec: Tensor) -> Tensor:
        """(logits - b_U) . vec, (T, K), without forming the logits."""
        z = self.A * (c.L @ vec)[:, None] + self.B * (c.U @ vec)[None, :]
        return z if self.C is None else z + self.C * (c.post.LP @ vec)[:, None]

    def materialize(self, c: Chunk, layer: FinalLayer) -> Float[Tensor, "T K V"]:
        """The logits themselves (soft-capped where the model caps): for readers and tests, not the sweep."""
        z = self.A[..., None] * c.L[:, None, :] + self.B[..., None] * c.U[None, :, :] + layer.b_U
        if self.C is not None:
            z = z + self.C[..., None] * c.post.LP[:, None, :]
        return layer.softcap * torch.tanh(z / layer.softcap) if layer.softcap else z


def _residual_move(c: Chunk, d_model: int) -> tuple[Tensor | None, Tensor, Tensor]:
    """(c1, c2, |center(x^{-i})|^2): the residual moves by c2 w_out (plus c1 P with a post-MLP norm)."""
    if c.post is None:
        return None, c.delta, c.xx + 2 * c.delta * c.xw + c.delta.pow(2) * c.ww
    p = c.post
    r_abl = ((p.mm + 2 * c.delta * p.mw + c.delta.pow(2) * p.ww) / d_model + p.eps).sqrt()
    c1, c2 = 1.0 / r_abl - 1.0 / p.r, c.delta / r_abl
    xx = c.xx + c1.pow(2) * p.PP + c2.pow(2) * c.ww + 2 * c1 * p.xP + 2 * c2 * c.xw + 2 * c1 * c2 * p.Pq
    return c1, c2, xx


def _logits_at_scale(c1: Tensor | None, c2: Tensor, s: Tensor) -> AblatedLogits:
    return AblatedLogits(A=1.0 / s, B=c2 / s, C=None if c1 is None else c1 / s)


def te_logits(c: Chunk, layer: FinalLayer) -> AblatedLogits:
    """Eq. 5: the ablated logits with the final norm's scale recomputed from the ablated residual."""
    c1, c2, xx = _residual_move(c, layer.d_model)
    return _logits_at_scale(c1, c2, (xx / layer.d_model + layer.eps).sqrt())


def de_logits(c: Chunk, layer: FinalLayer) -> AblatedLogits:
    """Eq. 6: the ablated logits with the final norm's scale frozen at its clean value."""
    c1, c2, _ = _residual_move(c, layer.d_model)
    return _logits_at_scale(c1, c2, c.s.expand_as(c.delta))


def de_freq_shift(c: Chunk, layer: FinalLayer, te: AblatedLogits, freq: FreqDirection) -> Float[Tensor, "T K"]:
    """Eq. 7 as DE_freq logits = TE logits + D v_freq: D = (l - l^{-i}) . v_freq / |v_freq|^2, (T, K)."""
    bv = float(layer.b_U @ freq.v)
    clean_v = (c.L @ freq.v)[:, None] / c.s + bv  # (T, 1)  l . v_freq
    ablated_v = te.dot(c, freq.v) + bv  # (T, K)  l^{-i} . v_freq
    return (clean_v - ablated_v) / float(freq.v @ freq.v)
