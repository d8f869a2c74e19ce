"""Slow, obviously-right twins of the closed form: real forward passes with hooks.

Used by the tests (closed form must agree to float tolerance) and by the benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor

from confidence_neurons.analysis.closed_form import AblationMode
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel


def _token_stats(logits: Tensor, tokens: Tensor, p_freq: Tensor | None = None) -> dict[str, Tensor]:
    logp = logits[:, :-1].double().log_softmax(-1)
    loss = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    out = {"loss": loss.reshape(-1), "entropy": entropy.reshape(-1), "argmax": logp.argmax(-1).reshape(-1)}
    if p_freq is not None:
        p = p_freq.double()
        kl = (p[p > 0] * (p[p > 0].log() - logp[..., p > 0])).sum(-1)
        out["kl"] = kl.reshape(-1)
    return out


def freq_adjusted_logits(ablated: Tensor, clean: Tensor, v_freq: Tensor) -> Tensor:
    """Eq. 7: hold the ablated logits' component along v_freq at its clean value."""
    v = v_freq.to(ablated.dtype)
    return ablated + ((clean @ v - ablated @ v) / (v @ v))[..., None] * v


@torch.no_grad()
def brute_force_ablation(
    model: LoadedModel,
    layer: FinalLayer,
    tokens: Tensor,
    neuron: int,
    mean_value: float,
    *,
    mode: AblationMode = "mean",
    freeze_scale: bool = False,
    v_freq: Tensor | None = None,
    p_freq: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-token loss/entropy/argmax after setting one neuron to ``mean_value`` in a real forward pass.

    ``freeze_scale`` also pins the final norm's scale to its clean value (the direct effect, Eq. 6).
    ``v_freq`` instead applies Eq. 7 to the real ablated and clean logits (DE_freq); ``p_freq``
    adds the per-token KL(P_freq || P_model) under key 'kl'.
    Hooks return new tensors: in-place edits are not seen on some bridge paths.
    """
    clean_scale: dict[str, Tensor] = {}

    def keep_scale(scale, hook):
        clean_scale["s"] = scale.clone()
        return scale

    clean_logits = model.bridge.run_with_hooks(tokens, fwd_hooks=[(layer.scale_hook, keep_scale)])

    def ablate(acts, hook):
        new = acts.clone()
        col = acts[..., neuron]
        target = torch.full_like(col, mean_value)
        new[..., neuron] = target if mode == "mean" else torch.minimum(col, target)
        return new

    hooks = [(layer.act_hook, ablate)]
    if freeze_scale:
        hooks.append((layer.scale_hook, lambda scale, hook: clean_scale["s"].clone()))
    logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    if v_freq is not None:
        logits = freq_adjusted_logits(logits.double(), clean_logits.double(), v_freq.double())
    return _token_stats(logits, tokens, p_freq)


@torch.no_grad()
def clean_token_stats(model: LoadedModel, tokens: Tensor, p_freq: Tensor | None = None) -> dict[str, Tensor]:
    """Per-token loss, entropy and argmax (and KL to ``p_freq``) of the clean model, by a real forward."""
    return _token_stats(model.bridge(tokens), tokens, p_freq)
