"""Weight statistics of final-layer neurons (Sec. 3.1 and 3.3): norm, LogitVar (Eq. 3), the
cosine of w_out with each singular vector of W_U, and rho, the share of the norm in W_U's
effective null space (Sec. 3.4).

Post-norm architectures (Gemma 2 and 3) pass the MLP output m through an RMSNorm before it joins
the residual: post(m) = g * m / rms(m). To first order a change delta of neuron i's activation
moves the residual by delta / rms(m) * (g * w_out - c g * m), c = (m . w_out) / (d_model rms(m)^2):
the neuron's own direction, the one *written* into the residual, is g * w_out (elementwise); the
second term only rescales the MLP's current output, along the same g * m for every neuron, and the
factor 1/rms(m) is shared by every neuron at a token, so neither changes a ranking. (At m = 0 the
write is exactly along g * w_out; tests/analysis/test_written_direction.py checks this on the real
module.) The statistics are therefore computed twice: on w_out as the
paper defines them (``w_out_norm``, ``logit_var``, ``rho``) and on the written direction
(``norm_written``, ``logit_var_written``, ``rho_written``); without a post-MLP norm the two are
the same numbers. ``cos_sv`` (Fig. 2d) uses the written direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.paper import paper_k_table, resolve_paper_model

#: k for the paper's models (``analysis.paper_models``): GPT-2 Small k = 12 (Sec. 3.4, Fig. 2e);
#: LLaMA2 7B k = 40 = 0.01 d_model (Fig. 2f); the others the bottom 1% (App. F). Keys: hub ids and short names.
PAPER_K = paper_k_table()


def default_k(d_model: int, model: str | None = None) -> int:
    """The paper's null-space size: its own choice for the models it names (``paper_models``), else
    floor(0.01 d_model), at least 1 (App. E: "the bottom 1% W_U singular vectors").
    """
    paper = resolve_paper_model(model)
    if paper is not None:
        return paper.k
    return max(1, int(0.01 * d_model))


def check_k(k: int, d_model: int) -> None:
    """Refuse a null-space size outside 1 <= k < d_model."""
    if not 1 <= k < d_model:
        raise ConfigError(f"k = {k} is out of range: the null space needs 1 <= k < d_model = {d_model}", field="k")


@dataclass(frozen=True)
class WeightStats:
    """Shapes: per-neuron fields (d_mlp,); singular_values (d_model,) descending; cos_sv
    (d_mlp, d_model), cosine of the written direction with each residual-space singular vector of W_U.

    ``*_written`` are the same statistics of the direction written into the residual, g * w_out
    on models with a post-MLP norm (module docstring), else exactly the raw ones.
    """

    w_out_norm: Float[Tensor, " d_mlp"]
    logit_var: Float[Tensor, " d_mlp"]
    rho: Float[Tensor, " d_mlp"]
    singular_values: Float[Tensor, " d_model"]
    cos_sv: Float[Tensor, "d_mlp d_model"]
    k: int
    norm_written: Float[Tensor, " d_mlp"]
    logit_var_written: Float[Tensor, " d_mlp"]
    rho_written: Float[Tensor, " d_mlp"]


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


def written_directions(layer: FinalLayer) -> Float[Tensor, "d_mlp d_model"]:
    """Row i: the direction neuron i writes into the residual, g * w_out with a post-MLP norm, else w_out."""
    W_out = layer.W_out.double()
    if layer.post_mlp_norm is None:
        return W_out
    return W_out * layer.post_mlp_norm.g.double()


def _null_share(W: Tensor, V_res: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Row norms of W and rho = |V_0^T w| / |w| (Sec. 3.4), float64."""
    norms = W.norm(dim=-1)
    return norms, (W @ V_res[:, -k:]).norm(dim=-1) / norms.clamp_min(1e-30)


@torch.no_grad()
def null_space_rho(layer: FinalLayer, k: int) -> Float[Tensor, " d_mlp"]:
    """The rho of every final-layer neuron (``weight_stats(layer, k).rho``) without the SVD of W_U.

    rho needs only the span of the bottom-k singular vectors, which is the bottom-k eigenspace of
    the d_model x d_model Gram matrix W_U W_U^T (float64): one eigh instead of an SVD of the
    d_model x d_vocab W_U (about a tenth of the time for a 576 x 49152 W_U on two cores), and no
    LogitVar. For readers of rho alone (Fig. 11); ``weight_stats`` keeps the SVD, whose small
    singular values the Gram matrix would square away. Tested against a plain full SVD on every
    architecture.
    """
    check_k(k, layer.d_model)
    W_U = layer.W_U.double()
    _, V = torch.linalg.eigh(W_U @ W_U.T)  # ascending eigenvalues; flipped, the last k are the bottom k
    return _null_share(layer.W_out.double(), V.flip(-1), k)[1].float()


@torch.no_grad()
def weight_stats(layer: FinalLayer, k: int) -> WeightStats:
    """Norm, LogitVar, rho (bottom-k null space) of every final-layer neuron, raw and as written, and
    the singular spectrum of W_U.
    """
    check_k(k, layer.d_model)
    W_out, W_U = layer.W_out.double(), layer.W_U.double()
    V_res, S = residual_singular_vectors(layer)
    norms, rho = _null_share(W_out, V_res, k)
    lv = logit_var(W_out, W_U)
    if layer.post_mlp_norm is None:
        W_wr, norms_wr, rho_wr, lv_wr = W_out, norms, rho, lv
    else:
        W_wr = written_directions(layer)
        norms_wr, rho_wr = _null_share(W_wr, V_res, k)
        lv_wr = logit_var(W_wr, W_U)
    cos = (W_wr / norms_wr[:, None].clamp_min(1e-30)) @ V_res
    return WeightStats(
        w_out_norm=norms.float(),
        logit_var=lv.float(),
        rho=rho.float(),
        singular_values=S.float(),
        cos_sv=cos.float(),
        k=k,
        norm_written=norms_wr.float(),
        logit_var_written=lv_wr.float(),
        rho_written=rho_wr.float(),
    )
