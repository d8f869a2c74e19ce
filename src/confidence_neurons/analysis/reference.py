"""Slow, obviously-right twins of the closed form: real forward passes with hooks.

Used by the tests (closed form must agree to float tolerance) and by the benchmark.
"""

from __future__ import annotations

import torch
from torch import Tensor

from confidence_neurons.analysis.mediation import AblationMode
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel


def _token_stats(logits: Tensor, tokens: Tensor) -> dict[str, Tensor]:
    logp = logits[:, :-1].double().log_softmax(-1)
    loss = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return {"loss": loss.reshape(-1), "entropy": entropy.reshape(-1), "argmax": logp.argmax(-1).reshape(-1)}


@torch.no_grad()
def brute_force_ablation(model: LoadedModel, layer: FinalLayer, tokens: Tensor, neuron: int, mean_value: float,
                         *, mode: AblationMode = "mean", freeze_scale: bool = False) -> dict[str, Tensor]:
    """Per-token loss/entropy/argmax after setting one neuron to ``mean_value`` in a real forward pass.

    ``freeze_scale`` also pins the final norm's scale to its clean value (the direct effect, Eq. 6).
    Hooks return new tensors: in-place edits are not seen on some bridge paths.
    """
    clean_scale: dict[str, Tensor] = {}

    def keep_scale(scale, hook):
        clean_scale["s"] = scale.clone()
        return scale

    model.bridge.run_with_hooks(tokens, fwd_hooks=[(layer.scale_hook, keep_scale)])

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
    return _token_stats(logits, tokens)


@torch.no_grad()
def clean_token_stats(model: LoadedModel, tokens: Tensor) -> dict[str, Tensor]:
    return _token_stats(model.bridge(tokens), tokens)
