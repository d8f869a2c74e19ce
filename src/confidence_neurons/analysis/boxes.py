"""Per-token effects for the boxes of Fig. 2c and 3c, as the authors draw them.

Their ablations/load_results.py boxes, for each flagged neuron and for 100 random neurons pooled,
the per-token |loss change| on mean ablation: total (``abs_delta_loss_post_ablation``) and direct
(``..._with_frozen_ln``), after dropping values beyond 1.5 IQR of each box. ``box_token_effects``
keeps those per-token values (|TE|, |DE| and |DE_freq| of the loss) for the entropy and token
frequency neurons and a seeded draw of ``N_RANDOM`` other neurons; the figures drop the outliers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import ForwardCache
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import Backend
from confidence_neurons.models.final_layer import FinalLayer

#: Random neurons pooled into the baseline box (the paper's 100).
N_RANDOM = 100
#: Most per-token values kept per box (a seeded subsample beyond it), so that a report stays small.
MAX_BOX_TOKENS = 20_000


def box_token_effects(
    layer: FinalLayer,
    cache: ForwardCache,
    neurons: pd.DataFrame,
    mean_act: torch.Tensor,
    freq: FreqDirection | None,
    *,
    seed: int = 0,
    backend: Backend = "auto",
    n_random: int = N_RANDOM,
    max_tokens: int = MAX_BOX_TOKENS,
) -> pd.DataFrame:
    """One row per (neuron, token): neuron, random (in the baseline draw), row (the cache row),
    abs_TE, abs_DE, abs_DE_freq (|ablated - clean| loss, nats; NaN without ``freq``).

    Flagged neurons (``is_entropy_neuron`` or ``is_token_frequency_neuron``) keep up to ``max_tokens``
    tokens each; ``n_random`` other neurons drawn with ``default_rng(seed)`` keep up to
    ``max_tokens / n_random`` each, so the pooled baseline box holds at most ``max_tokens`` values.
    """
    flagged = np.flatnonzero(
        neurons["is_entropy_neuron"].fillna(False).to_numpy(bool)
        | neurons.get("is_token_frequency_neuron", pd.Series(False, index=neurons.index)).fillna(False).to_numpy(bool)
    )
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(len(neurons)), flagged)
    rand = np.sort(rng.choice(others, size=min(n_random, len(others)), replace=False))
    chosen = [int(i) for i in np.concatenate([flagged, rand])]
    if not chosen or cache.n_tokens == 0:
        return pd.DataFrame(columns=["neuron", "random", "row", "abs_TE", "abs_DE", "abs_DE_freq"])
    eff = per_token_effects(layer, cache, chosen, mode="mean", mean_act=mean_act, freq=freq, backend=backend)
    frames = []
    per_random = max(1, -(-max_tokens // max(len(rand), 1)))
    for k, i in enumerate(chosen):
        is_random = k >= len(flagged)
        cap = per_random if is_random else max_tokens
        rows = np.arange(cache.n_tokens)
        if len(rows) > cap:
            rows = np.sort(rng.choice(rows, size=cap, replace=False))
        idx = torch.from_numpy(rows)

        def absdiff(variant) -> np.ndarray:
            return (variant.loss[idx, k] - eff.loss[idx]).abs().float().numpy()

        frames.append(
            pd.DataFrame(
                {
                    "neuron": np.full(len(rows), i, dtype=np.int32),
                    "random": is_random,
                    "row": rows.astype(np.int64),
                    "abs_TE": absdiff(eff.TE),
                    "abs_DE": absdiff(eff.DE),
                    "abs_DE_freq": absdiff(eff.DE_freq) if eff.DE_freq is not None else np.nan,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
