"""What one neuron does token by token (Sec. 5): clipped mean-ablation and its per-token effects.

Clipping sets the activation to its mean only where it exceeds the mean (footnote 7), so tokens
where the neuron is below its mean are untouched. Effects are ablated minus clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import ForwardCache
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import FinalLayer


def split_neuron(spec: str, field: str = "neuron") -> tuple[int, int]:
    """'L.I' -> (L, I); a ConfigError naming ``field`` for anything else."""
    parts = str(spec).split(".")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"{spec!r} is not a neuron of the form LAYER.INDEX (e.g. 29.830)", field=field)
    return int(parts[0]), int(parts[1])


def check_neuron(spec: str, final_layer: int, d_mlp: int | None, field: str = "neuron") -> int:
    """The index I of 'L.I', checking that L is the final layer and I one of its ``d_mlp`` neurons."""
    layer_idx, neuron = split_neuron(spec, field)
    if layer_idx != final_layer:
        raise ConfigError(
            f"neuron {spec} is not in the last layer: this model's final MLP is layer {final_layer}", field=field
        )
    if d_mlp is not None and not 0 <= neuron < d_mlp:
        raise ConfigError(
            f"neuron index {neuron} is outside the last layer, which has {d_mlp} neurons (0-{d_mlp - 1})",
            field=field,
        )
    return neuron


def parse_neuron(spec: str, layer: FinalLayer, field: str = "neuron") -> int:
    """'L.I' -> I, checking that L is the final layer and I a neuron of it."""
    return check_neuron(spec, layer.layer, layer.d_mlp, field)


@torch.no_grad()
def clean_ranks(layer: FinalLayer, cache: ForwardCache, chunk: int = 256) -> Tensor:
    """Rank (1 = top) of the correct next token in the clean prediction, (N,)."""
    ranks = []
    for t0 in range(0, cache.n_tokens, chunk):
        z = layer.logits(cache.resid[t0 : t0 + chunk])
        zt = z.gather(-1, cache.target[t0 : t0 + chunk, None])
        ranks.append((z > zt).sum(-1) + 1)
    return torch.cat(ranks)


@torch.no_grad()
def top_predictions(layer: FinalLayer, resid: Tensor, tokenizer, k: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k clean next-token predictions (decoded token, probability) for a few positions."""
    probs = layer.logits(resid).softmax(-1)
    p, idx = probs.topk(k, dim=-1)
    return [[(tokenizer.decode([int(i)]), float(q)) for i, q in zip(row_i, row_p)] for row_i, row_p in zip(idx, p)]


@dataclass
class NeuronActivity:
    """Per-token effects of clip-mean-ablating one neuron; ``tokens`` has one row per analysed position
    (seq, pos, token, target, activation, initial_loss, delta_loss, delta_entropy, delta_kl,
    reciprocal_rank, clipped).
    """

    neuron: int
    name: str
    mean_activation: float
    tokens: pd.DataFrame
    run_dir: Path | None = None


def neuron_activity(
    layer: FinalLayer,
    cache: ForwardCache,
    tokens: Tensor,
    neuron: int,
    freq: FreqDirection,
    tokenizer,
    *,
    backend="auto",
    analysed: Tensor | None = None,
    mean_act: Tensor | None = None,
) -> NeuronActivity:
    """Per-token effects of clip-mean-ablating ``neuron`` (Sec. 5), one row per cached position; the
    mean (the ablation value) is taken over the ``analysed`` positions (default: all), which the
    table's ``analysed`` column marks, unless ``mean_act`` (d_mlp,) gives it (``forward.ablation_mean``).
    """
    analysed = torch.ones(cache.n_tokens, dtype=torch.bool) if analysed is None else analysed
    mean = cache.acts[analysed].mean(0) if mean_act is None else mean_act
    eff = per_token_effects(layer, cache, [neuron], mode="clip", mean_act=mean, freq=freq, backend=backend)
    acts = cache.acts[:, neuron]
    n_seqs, per_seq = tokens.shape[0], tokens.shape[1] - 1
    decode = lambda ids: [tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
    table = pd.DataFrame(
        {
            "seq": np.repeat(np.arange(n_seqs), per_seq),
            "pos": np.tile(np.arange(per_seq), n_seqs),
            "token": decode(tokens[:, :-1].reshape(-1)),
            "target": decode(cache.target),
            "activation": acts.numpy(),
            "initial_loss": eff.loss.numpy(),
            "delta_loss": (eff.TE.loss[:, 0] - eff.loss).numpy(),
            "delta_entropy": (eff.TE.entropy[:, 0] - eff.entropy).numpy(),
            "delta_kl": (eff.kl_TE[:, 0] - eff.kl).numpy(),
            "reciprocal_rank": (1.0 / clean_ranks(layer, cache).double()).numpy(),
            "clipped": (acts > mean[neuron]).numpy(),
            "ablated_loss": eff.TE.loss[:, 0].numpy(),
            "analysed": analysed.numpy(),
        }
    )
    return NeuronActivity(neuron, f"{layer.layer}.{neuron}", float(mean[neuron]), table)


def passages(
    activity: NeuronActivity,
    layer: FinalLayer,
    cache: ForwardCache,
    tokens: Tensor,
    tokenizer,
    *,
    n: int = 3,
    window: int = 12,
) -> list[dict]:
    """The ``n`` positions where clipping the neuron changes the loss most, each with its context
    (Fig. 4b): tokens, activations, clean and ablated loss, and the clean top-5 predictions.
    """
    t = activity.tokens
    per_seq = tokens.shape[1] - 1
    chosen, used = [], set()
    for row in t.reindex(t["delta_loss"].abs().sort_values(ascending=False).index).itertuples():
        if len(chosen) == n:
            break
        if (row.seq, row.pos // (2 * window)) in used:
            continue
        used.add((row.seq, row.pos // (2 * window)))
        chosen.append(row)
    out = []
    for row in chosen:
        lo, hi = max(0, row.pos - window), min(per_seq, row.pos + window + 1)
        rows = slice(row.seq * per_seq + lo, row.seq * per_seq + hi)
        win = t.iloc[rows]
        out.append(
            {
                "title": (
                    f"sequence {row.seq}, position {row.pos}: {row.token!r} -> {row.target!r}, loss "
                    f"{row.initial_loss:.3f} with the neuron, {row.ablated_loss:.3f} clipped ({row.delta_loss:+.3f})"
                ),
                "tokens": win["token"].tolist(),
                "activation": win["activation"].tolist(),
                "loss_clean": win["initial_loss"].tolist(),
                "loss_ablated": win["ablated_loss"].tolist(),
                "top_predictions": top_predictions(layer, cache.resid[rows], tokenizer),
                "highlight": row.pos - lo,
            }
        )
    return out
