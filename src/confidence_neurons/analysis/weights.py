"""Weight statistics of final-layer neurons (Sec. 3.1 and 3.3): norm, LogitVar (Eq. 3), the
cosine of w_out with each singular vector of W_U, and rho, the share of the norm in W_U's
effective null space (Sec. 3.4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from confidence_neurons.models.final_layer import FinalLayer


def default_k(d_model: int) -> int:
    """The paper's null-space size: 1% of d_model, at least 1."""
    return max(1, round(0.01 * d_model))


def check_k(k: int, d_model: int) -> None:
    if not 1 <= k < d_model:
        raise ValueError(f"k = {k} is out of range: the null space needs 1 <= k < d_model = {d_model}")


@dataclass(frozen=True)
class WeightStats:
    """Shapes: per-neuron fields (d_mlp,); singular_values (d_model,) descending;
    cos_sv (d_mlp, d_model), cosine of w_out with each residual-space singular vector of W_U."""

    w_out_norm: Float[Tensor, "d_mlp"]
    logit_var: Float[Tensor, "d_mlp"]
    rho: Float[Tensor, "d_mlp"]
    singular_values: Float[Tensor, "d_model"]
    cos_sv: Float[Tensor, "d_mlp d_model"]
    k: int


@torch.no_grad()
def logit_var(W_out: Tensor, W_U: Tensor, chunk: int = 256) -> Tensor:
    """Eq. 3: Var over the vocabulary of W_U w_out / (|W_U[:, v]| |w_out|)."""
    col_norm = W_U.norm(dim=0)
    out = []
    for i in range(0, W_out.shape[0], chunk):
        w = W_out[i : i + chunk]
        proj = (w @ W_U) / (col_norm * w.norm(dim=-1, keepdim=True))
        out.append(proj.var(dim=-1))
    return torch.cat(out)


@torch.no_grad()
def weight_stats(layer: FinalLayer, k: int) -> WeightStats:
    check_k(k, layer.d_model)
    W_out, W_U = layer.W_out.double(), layer.W_U.double()
    # W_U here is (d_model, d_vocab), the paper's W_U transposed: its left singular vectors span
    # the residual stream, and the paper's V (right singular vectors of the (d_vocab, d_model) W_U) is our U.
    V_res, S, _ = torch.linalg.svd(W_U, full_matrices=False)
    norms = W_out.norm(dim=-1)
    cos = (W_out / norms[:, None].clamp_min(1e-30)) @ V_res
    rho = (W_out @ V_res[:, -k:]).norm(dim=-1) / norms.clamp_min(1e-30)
    return WeightStats(
        w_out_norm=norms.float(), logit_var=logit_var(W_out, W_U).float(), rho=rho.float(),
        singular_values=S.float(), cos_sv=cos.float(), k=k,
    )
