"""The one forward pass the analyses need, and its cache (Sec. 3.2).

Mean-ablating a final-layer neuron moves only the final residual, so everything the sweep,
``inspect`` and the induction statistics compute follows from the clean pass's final residual and
final-layer activations. ``run_forward`` caches them and checks the closed form against the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel


@dataclass
class ForwardCache:
    """One clean forward pass over the run's tokens, flattened over (sequence, position).

    resid: (N, d_model) input of the final norm; acts: (N, d_mlp) final-layer neuron activations;
    target: (N,) next token; logits_check: max |closed-form clean logits - model logits|.
    Position p of each sequence predicts token p + 1, so N = n_seqs * (seq_len - 1).
    """

    resid: Float[Tensor, "N d_model"]
    acts: Float[Tensor, "N d_mlp"]
    target: Int[Tensor, " N"]
    seq_len: int
    logits_check: float = 0.0
    mlp_out: Float[Tensor, "N d_model"] | None = None  # the last MLP's output before a post-MLP norm

    @property
    def n_tokens(self) -> int:
        return self.target.shape[0]


@torch.no_grad()
def run_forward(
    model: LoadedModel,
    layer: FinalLayer,
    tokens: Int[Tensor, "n_seqs seq_len"],
    batch_size: int = 8,
    progress: bool = True,
) -> ForwardCache:
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
            raise RuntimeError(
                f"the final norm's scale differs from the closed form by {scale_err:.3g}: unsupported norm"
            )
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
    return ForwardCache(
        torch.cat(resid),
        torch.cat(acts),
        torch.cat(targets),
        tokens.shape[1],
        worst,
        torch.cat(mlp_out) if post is not None else None,
    )
