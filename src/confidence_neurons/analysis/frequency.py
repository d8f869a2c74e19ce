"""The token frequency direction of Sec. 4: P_freq, v_freq = log P_freq - mean, and how a neuron's
output lines up with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from confidence_neurons.models.final_layer import FinalLayer


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
        """Max |v_freq - a|."""
        return float((self.v.max() - self.v.min()) / 2)

    @cached_property
    def w(self) -> Tensor:
        return (self.v - self.center).contiguous()


@torch.no_grad()
def v_freq_projection(layer: FinalLayer, freq: FreqDirection) -> tuple[Tensor, Tensor]:
    """Per neuron: (W_U w_out) . v_freq / |v_freq| and the cosine of W_U w_out with v_freq, each (d_mlp,)."""
    W_U, v = layer.W_U.double(), freq.v.double()
    W = layer.center(layer.W_out.double())
    proj = W @ (W_U @ v) / v.norm()
    norms = ((W @ (W_U @ W_U.T)) * W).sum(-1).clamp_min(0).sqrt()  # |W_U^T w| via the Gram matrix
    return proj.float(), (proj / norms.clamp_min(1e-30)).float()
