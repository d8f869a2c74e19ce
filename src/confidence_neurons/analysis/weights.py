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

#: k where the paper states it: GPT-2 Small with k = 12 (Sec. 3.4, Fig. 2e); LLaMA2 7B with
#: k = 40 = 0.01 d_model (Fig. 2f). Keys are the hub ids (and their short names).
PAPER_K = {"gpt2": 12, "openai-community/gpt2": 12, "meta-llama/Llama-2-7b-hf": 40, "Llama-2-7b-hf": 40}


def default_k(d_model: int, model: str | None = None) -> int:
    """The paper's null-space size: its own choice for the models it names (``PAPER_K``), else
    floor(0.01 d_model), at least 1 (App. E: "the bottom 1% W_U singular vectors").
    """
    if model is not None and model in PAPER_K:
        return PAPER_K[model]
    return max(1, int(0.01 * d_model))


def check_k(k: int, d_model: int) -> None:
    """Refuse a null-space size outside 1 <= k < d_model."""
    if not 1 <= k < d_model:
        raise ConfigError(f"k = {k} is out of range: the null space needs 1 <= k < d_model = {d_model}", field="k")


@dataclass(frozen=True)
class WeightStats:
    """Shapes: per-neuron fields (d_mlp,); singular_values (d_model,) descending; cos_sv
    (d_mlp, d_model), cosine of w_out with each residual-space singular vector of W_U.
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
    singular vectors: all d_model of them, as the paper counts them (Sec. 3.4). On LayerNorm models
    the processed W_U annihilates the all-ones direction, so the bottom singular vector is that
    direction (singular value 0): it is one of the k, as in the paper.
    """
    V_res, S, _ = torch.linalg.svd(layer.W_U.double(), full_matrices=False)
    return V_res, S


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
