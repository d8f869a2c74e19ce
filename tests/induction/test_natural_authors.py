"""Natural induction (App. H.1) as the authors run it, against their code path re-implemented here.

Their case_studies/natural_induction_true.py takes each neuron's ablation value as the mean of its
activation column over a plain-text token table (``mean_activation_on_normal_text``: every position,
BOS included) and runs the model with ``neurons_no_clipping_hook`` (the neuron set to that value at
every position, unclipped); the entropy at each position is read off the ablated logits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.induction.neurons import natural_induction_effects, plain_text_mean
from confidence_neurons.models.final_layer import final_layer
from tests.tiny import BOS_ID, load_tiny, random_tokens


def _their_plain_text_mean(model, layer, plain: torch.Tensor) -> torch.Tensor:
    """``norm_text_entropy_df[f"{neuron}_activation"].mean()`` over every position of every row."""
    _, cache = model.bridge.run_with_cache(plain, names_filter=lambda name: name == layer.act_hook)
    acts = cache[layer.act_hook].reshape(-1, layer.d_mlp).double().numpy()  # (n_seqs * seq_len, d_mlp)
    table = pd.DataFrame(acts, columns=[f"{layer.layer}.{i}_activation" for i in range(layer.d_mlp)])
    return torch.tensor(table.mean().to_numpy())


@torch.no_grad()
def _their_ablated_entropy(model, layer, tokens: torch.Tensor, neuron: int, value: float) -> torch.Tensor:
    def neurons_no_clipping_hook(acts, hook):
        new = acts.clone()
        new[0, :, neuron] = value
        return new

    rows = []
    for seq in tokens:
        logits = model.bridge.run_with_hooks(seq[None], fwd_hooks=[(layer.act_hook, neurons_no_clipping_hook)])
        logp = logits[0].double().log_softmax(-1)
        rows.append(-(logp.exp() * logp).sum(-1))  # (seq_len,)
    return torch.stack(rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = load_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))
    return model, final_layer(model)


def test_natural_induction_effects_are_the_authors_unclipped_plain_text_ablation(tiny):
    model, layer = tiny
    half = random_tokens(4, 9, seed=7)[:, 1:]
    tokens = torch.cat([torch.full((4, 1), BOS_ID), half, half], dim=1)  # (4, 17): 3-gram at 1 repeats at 9
    repeats = [(1, 9)] * 4
    cache = run_forward(model, layer, tokens, progress=False)
    plain = random_tokens(6, 20, seed=11)
    reference = _their_plain_text_mean(model, layer, plain)
    torch.testing.assert_close(
        plain_text_mean(model, layer, plain, batch_size=4), reference.float(), atol=1e-5, rtol=1e-5
    )
    neurons = [int(i) for i in cache.acts.std(0).topk(2).indices]
    df = natural_induction_effects(layer, cache, repeats, neurons, reference_mean=reference.float(), n=3)
    assert df["clipped"].all()  # every labelled position is ablated, none left as is
    for neuron in neurons:
        theirs = _their_ablated_entropy(model, layer, tokens, neuron, float(reference[neuron]))
        mine = df[df["neuron"] == neuron]
        seq, pos = torch.tensor(mine["seq"].to_numpy()), torch.tensor(mine["position"].to_numpy())
        expected = theirs[seq, pos].numpy() - mine["entropy"].to_numpy()
        np.testing.assert_allclose(mine["delta_entropy"].to_numpy(), expected, atol=1e-4)
        # below the reference the authors' ablation raises the activation: the toolkit's clip leaves it
        below = mine["activation"].to_numpy() < float(reference[neuron])
        clipped = natural_induction_effects(
            layer, cache, repeats, [neuron], reference_mean=reference.float(), n=3, ablation="toolkit"
        )
        assert (clipped["delta_entropy"].to_numpy()[below] == 0).all()
        assert below.any() and (np.abs(mine["delta_entropy"].to_numpy()[below]) > 0).any()


def test_an_unknown_natural_ablation_is_refused(tiny):
    model, layer = tiny
    tokens = torch.cat([torch.full((1, 1), BOS_ID), random_tokens(1, 9, seed=1)[:, 1:].repeat(1, 2)], dim=1)
    cache = run_forward(model, layer, tokens, progress=False)
    with pytest.raises(ValueError, match="authors or toolkit"):
        natural_induction_effects(layer, cache, [(1, 9)], [0], reference_mean=cache.acts.mean(0), n=3, ablation="x")
