"""The final layer as the paper's equations see it: w_out of every last-layer neuron, the final
norm, W_U and b_U (Sec. 2, Eq. 1-2), read once from a processed bridge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from confidence_neurons.models.loading import LoadedModel, ModelLoadError


@dataclass(frozen=True)
class PostMLPNorm:
    """An RMSNorm applied to the MLP output before it joins the residual (Gemma 2 and 3).

    post(m) = g * m / sqrt(mean(m^2) + eps); ``g`` (d_model,) is the effective weight (for Gemma's
    (1 + w) convention, 1 + w); ``in_hook`` reads m, the MLP output before this norm.
    """

    g: Float[Tensor, " d_model"]
    eps: float
    in_hook: str

    def __call__(self, m: Tensor) -> Tensor:
        return self.g * m / (m.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()


@dataclass(frozen=True)
class FinalLayer:
    """Weights of the last MLP and the unembedding, after Appendix C processing.

    W_out: (d_mlp, d_model), row i is w_out of neuron i. W_U: (d_model, d_vocab). b_U: (d_vocab,).
    ``norm`` is the final norm with its affine part folded into W_U: "LN" centres and rescales,
    "RMS" only rescales; ``eps`` is its epsilon. ``softcap`` is the final logit soft-cap (or None).
    """

    layer: int
    W_out: Float[Tensor, "d_mlp d_model"]
    W_U: Float[Tensor, "d_model d_vocab"]
    b_U: Float[Tensor, " d_vocab"]
    norm: Literal["LN", "RMS"]
    eps: float
    softcap: float | None
    act_hook: str
    resid_hook: str
    scale_hook: str
    post_mlp_norm: PostMLPNorm | None = None

    @property
    def d_mlp(self) -> int:
        return self.W_out.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_out.shape[1]

    @property
    def d_vocab(self) -> int:
        return self.W_U.shape[1]

    def center(self, x: Tensor) -> Tensor:
        """What the final norm subtracts before rescaling: the mean for LayerNorm, nothing for RMSNorm."""
        return x - x.mean(-1, keepdim=True) if self.norm == "LN" else x

    def scale(self, x: Tensor) -> Tensor:
        """The final norm's scale sqrt(Var(x) + eps) (LN) or sqrt(mean(x^2) + eps) (RMS), shape (..., 1)."""
        xc = self.center(x)
        return (xc.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def logits(self, x: Tensor, scale: Tensor | None = None) -> Tensor:
        """W_U LN(x) + b_U (soft-capped where the model caps), optionally with a frozen scale."""
        s = self.scale(x) if scale is None else scale
        z = (self.center(x) / s) @ self.W_U + self.b_U
        return self.softcap * torch.tanh(z / self.softcap) if self.softcap else z


def final_layer(model: LoadedModel) -> FinalLayer:
    """Read the final-layer geometry from a bridge in compatibility mode; explain what is missing."""
    bridge, cfg = model.bridge, model.cfg
    layer = cfg.n_layers - 1
    hooks = bridge.hook_dict
    act_hook, resid_hook, scale_hook = f"blocks.{layer}.mlp.hook_post", "ln_final.hook_in", "ln_final.hook_scale"
    if act_hook not in hooks:
        raise ModelLoadError(
            f"{model.name} has no MLP in its last block (no hook {act_hook}); entropy neurons live in the final MLP"
        )
    if (
        resid_hook not in hooks
        or scale_hook not in hooks
        or cfg.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre")
    ):
        raise ModelLoadError(
            f"{model.name} has no final LayerNorm/RMSNorm before the unembedding; the analysis needs one"
        )
    post = _post_mlp_norm(model, layer)
    with torch.no_grad():
        W_out = bridge.W_out[layer].detach().float().cpu().clone()
        W_U = bridge.W_U.detach().float().cpu().clone()
        b_U = (
            bridge.b_U.detach().float().cpu().clone()
            if getattr(bridge, "b_U", None) is not None
            else torch.zeros(W_U.shape[1])
        )
    softcap = getattr(cfg, "output_logits_soft_cap", None)
    return FinalLayer(
        layer=layer,
        W_out=W_out,
        W_U=W_U,
        b_U=b_U,
        norm="LN" if cfg.normalization_type.startswith("LN") else "RMS",
        eps=float(cfg.eps),
        softcap=float(softcap) if softcap and softcap > 0 else None,
        act_hook=act_hook,
        resid_hook=resid_hook,
        scale_hook=scale_hook,
        post_mlp_norm=post,
    )


@torch.no_grad()
def _post_mlp_norm(model: LoadedModel, layer: int) -> PostMLPNorm | None:
    """Read the last block's post-feedforward norm, if it has one, from the module itself."""
    in_hook = f"blocks.{layer}.ln2_post.hook_in"
    if in_hook not in model.bridge.hook_dict:
        return None
    module = model.bridge.blocks[layer].ln2_post._original_component
    eps = float(getattr(module, "eps", getattr(module, "variance_epsilon", 1e-6)))
    d = model.cfg.d_model
    param = next(module.parameters())
    probe = torch.ones(1, d, dtype=param.dtype, device=param.device)
    g = (module(probe).float().cpu() * (1.0 + eps) ** 0.5)[0]  # module(1) = g / sqrt(1 + eps), whatever its convention
    post = PostMLPNorm(g=g.detach().clone(), eps=eps, in_hook=in_hook)
    check = torch.randn(3, d, generator=torch.Generator().manual_seed(0))
    tol = 1e-5 if param.dtype == torch.float32 else 2e-2
    if not torch.allclose(post(check), module(check.to(probe)).float().cpu(), atol=tol, rtol=tol * 10):
        raise ModelLoadError(f"the post-feedforward norm of {model.name} is not an RMSNorm with a weight; unsupported")
    return post
