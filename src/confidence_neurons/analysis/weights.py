"""Weight statistics of final-layer neurons (Sec. 3.1 and 3.3): norm, LogitVar (Eq. 3), the
cosine of w_out with each singular vector of W_U, and rho, the share of the norm in W_U's
effective null space (Sec. 3.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import FinalLayer


def default_k(d_model: int) -> int:
    """The paper's null-space size: 1% of d_model, at least 1."""
    return max(1, round(0.01 * d_model))


def check_k(k: int, d_model: int) -> None:
    """Refuse a null-space size outside 1 <= k < d_model - 1."""
    if not 1 <= k < d_model - 1:
        raise ConfigError(
            f"k = {k} is out of range: the null space needs 1 <= k < d_model - 1 = {d_model - 1}", field="k"
        )


@dataclass(frozen=True)
class WeightStats:
    """Shapes: per-neuron fields (d_mlp,); singular_values (r,) descending; cos_sv (d_mlp, r), cosine
    of w_out with each residual-space singular vector of W_U; r = d_model, or d_model - 1 before a
    LayerNorm (see ``residual_singular_vectors``).
    """

    w_out_norm: Float[Tensor, " d_mlp"]
    logit_var: Float[Tensor, " d_mlp"]
    rho: Float[Tensor, " d_mlp"]
    singular_values: Float[Tensor, " d_model"]
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
def residual_singular_vectors(layer: FinalLayer) -> tuple[Tensor, Tensor]:
    """Singular vectors of W_U in the residual stream (columns, by descending singular value) and the values.

    W_U here is (d_model, d_vocab), the paper's W_U transposed, so the paper's V is our left
    singular vectors. Before a LayerNorm the all-ones direction is projected out by the norm
    itself: it is an exact null direction of the processed W_U that no centred w_out can use, so
    for LN models the SVD is taken in its complement (d_model - 1 directions); otherwise it would
    take one of the k null-space slots of rho.
    """
    W_U = layer.W_U.double()
    if layer.norm != "LN":
        V_res, S, _ = torch.linalg.svd(W_U, full_matrices=False)
        return V_res, S
    d = layer.d_model
    ones = torch.full((d, 1), d**-0.5, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.cat([ones, torch.eye(d, dtype=torch.float64)[:, : d - 1]], dim=1))
    Q = Q[:, 1:]  # orthonormal basis of the complement of the all-ones vector, (d_model, d_model - 1)
    V_sub, S, _ = torch.linalg.svd(Q.T @ W_U, full_matrices=False)
    return Q @ V_sub, S


@torch.no_grad()
def weight_stats(layer: FinalLayer, k: int) -> WeightStats:
    """Norm, LogitVar, rho (bottom-k null space) and the singular spectrum of every final-layer neuron."""
    check_k(k, layer.d_model)
    W_out, W_U = layer.W_out.double(), layer.W_U.double()
    V_res, S = residual_singular_vectors(layer)
    norms = W_out.norm(dim=-1)
    cos = (W_out / norms[:, None].clamp_min(1e-30)) @ V_res
    rho = (W_out @ V_res[:, -k:]).norm(dim=-1) / norms.clamp_min(1e-30)
    return WeightStats(
        w_out_norm=norms.float(),
        logit_var=logit_var(W_out, W_U).float(),
        rho=rho.float(),
        singular_values=S.float(),
        cos_sv=cos.float(),
        k=k,
    )
