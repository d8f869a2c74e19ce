"""Neurons on induction (Fig. 5a/b, Fig. 9, Fig. 11) on a tiny model with duplicated random tokens.

The clipped ablation of the second copy must leave the first copy exactly untouched and equal a
real forward pass with the neuron clipped (``reference.brute_force_ablation``) at second-copy
positions; the per-position curves' standard errors must be numpy's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.reference import brute_force_ablation, clean_token_stats
from confidence_neurons.induction.neurons import (
    activation_change,
    acts_by_position,
    clipped_ablation_curves,
    natural_activation_change,
    natural_induction_effects,
    position_curves,
    random_neuron_draws,
)
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from tests.tiny import ARCHITECTURES, BOS_ID, load_tiny, random_tokens

TOL = 1e-4
HALF = 8


@dataclass
class Setup:
    model: LoadedModel
    layer: FinalLayer
    tokens: torch.Tensor
    cache: ForwardCache


def make_setup(model: LoadedModel) -> Setup:
    layer = final_layer(model)
    body = random_tokens(5, HALF + 1, seed=4)[:, 1:]
    tokens = torch.cat([torch.full((5, 1), BOS_ID), body, body], dim=1)  # (5, 1 + 2 HALF)
    return Setup(model, layer, tokens, run_forward(model, layer, tokens, progress=False))


@pytest.fixture(scope="module", params=ARCHITECTURES)
def setup(request, tmp_path_factory) -> Setup:
    return make_setup(load_tiny(request.param, tmp_path_factory.mktemp(request.param)))


def first_copy_mean(cache: ForwardCache) -> torch.Tensor:
    return acts_by_position(cache)[:, 1 : 1 + HALF].mean((0, 1))


def clipped_neuron(cache: ForwardCache) -> int:
    """The neuron whose second-copy activations exceed its first-copy mean by the most, summed."""
    second = acts_by_position(cache)[:, 1 + HALF :]
    return int((second - first_copy_mean(cache)).clamp(min=0).sum((0, 1)).argmax())


def test_clipped_ablation_matches_a_real_forward_pass_in_the_second_copy(setup: Setup):
    check_against_brute_force(setup)


def test_clipped_ablation_through_a_post_mlp_norm_and_soft_cap(tmp_path):
    """Gemma 2: the sub-cache of second-copy positions must carry the MLP output for the post-MLP norm."""
    setup = make_setup(load_tiny("gemma2", tmp_path / "m", final_logit_softcapping=30.0))
    assert setup.layer.post_mlp_norm is not None and setup.cache.mlp_out is not None
    check_against_brute_force(setup)


def check_against_brute_force(setup: Setup) -> None:
    neuron = clipped_neuron(setup.cache)
    out = clipped_ablation_curves(
        setup.layer, setup.cache, tuple(setup.tokens.shape), [neuron], half_len=HALF, clip="toolkit"
    )
    pp = out["per_position"]
    threshold = float(first_copy_mean(setup.cache)[neuron])
    torch.testing.assert_close(out["first_copy_mean"], first_copy_mean(setup.cache))

    brute = brute_force_ablation(setup.model, setup.layer, setup.tokens, neuron, threshold, mode="clip")
    clean = clean_token_stats(setup.model, setup.tokens)
    P = setup.tokens.shape[1] - 1
    for key in ("entropy", "loss"):
        delta = (brute[key] - clean[key]).reshape(-1, P)[:, 1 + HALF :]  # (n_seqs, second-copy positions)
        assert delta.abs().max() > 1e-3, "the check means something only if clipping moves the output"
        mine = pp[f"delta_{key}_mean"].to_numpy()[1 + HALF :]
        np.testing.assert_allclose(mine, delta.mean(0).numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(pp["entropy_mean"], clean["entropy"].reshape(-1, P).mean(0).numpy(), atol=TOL)


def test_first_copy_and_bos_are_never_ablated(setup: Setup):
    neurons = setup.cache.acts.std(0).argsort(descending=True)[:4].tolist()
    out = clipped_ablation_curves(
        setup.layer,
        setup.cache,
        tuple(setup.tokens.shape),
        neurons,
        half_len=HALF,
        random_neurons=[[0, 1], [2, neurons[0]]],
    )
    pp = out["per_position"]
    early = pp[pp["position"] <= HALF]
    assert set(early["copy"]) == {"bos", "first"} and set(pp[pp["position"] > HALF]["copy"]) == {"second"}
    for col in ("delta_entropy_mean", "delta_loss_mean", "rel_delta_entropy_pct"):
        assert (early[col] == 0).all()
    assert (pp[pp["copy"] == "second"]["delta_entropy_mean"] != 0).any()
    summary = out["summary"]
    assert list(summary["group"]) == ["selected"] * 4 + ["random"] * 4
    assert summary["draw"].tolist()[4:] == [0, 0, 1, 1]
    same = summary[summary["neuron"] == neurons[0]]
    assert np.allclose(same["delta_entropy"], same["delta_entropy"].iloc[0])
    assert len(pp) == len(summary) * (setup.tokens.shape[1] - 1)


def test_a_neuron_below_its_first_copy_mean_changes_nothing(setup: Setup):
    neuron = clipped_neuron(setup.cache)
    acts = acts_by_position(setup.cache).clone()
    acts[:, 1 + HALF :, neuron] = first_copy_mean(setup.cache)[neuron] - 0.5
    cache = replace(setup.cache, acts=acts.reshape(setup.cache.acts.shape))
    out = clipped_ablation_curves(
        setup.layer, cache, tuple(setup.tokens.shape), [neuron], half_len=HALF, clip="toolkit"
    )
    assert (out["per_position"][["delta_entropy_mean", "delta_loss_mean"]] == 0).all().all()
    assert out["summary"]["frac_clipped"].item() == 0.0
    changed = clipped_ablation_curves(
        setup.layer, setup.cache, tuple(setup.tokens.shape), [neuron], half_len=HALF, clip="toolkit"
    )
    assert changed["summary"]["frac_clipped"].item() > 0


def test_position_curves_standard_errors_equal_numpy(setup: Setup):
    neurons = [3, 17]
    curves = position_curves(setup.model, setup.layer, setup.tokens, neurons, batch_size=2)
    P = setup.tokens.shape[1] - 1
    acts = acts_by_position(setup.cache)[..., neurons].double().numpy()  # (n_seqs, P, 2)
    n = acts.shape[0]
    np.testing.assert_allclose(curves.activation_mean, acts.mean(0).T, atol=1e-6)
    np.testing.assert_allclose(curves.activation_se, acts.std(0, ddof=1).T / np.sqrt(n), atol=1e-6)
    clean = clean_token_stats(setup.model, setup.tokens)
    for key in ("entropy", "loss"):
        x = clean[key].reshape(-1, P).numpy()
        np.testing.assert_allclose(getattr(curves, f"{key}_mean"), x.mean(0), atol=TOL)
        np.testing.assert_allclose(getattr(curves, f"{key}_se"), x.std(0, ddof=1) / np.sqrt(n), atol=TOL)
    assert curves.positions.tolist() == list(range(P)) and curves.neurons == neurons and curves.n_seqs == n


def test_activation_change_on_a_constructed_tensor():
    acts = torch.zeros(3, 2 * 4, 5)  # BOS + two copies of 4 tokens: P = 8
    acts[:, 0] = 100.0  # BOS position belongs to neither copy
    acts[:, 1:5, 0] = 1.0
    acts[:, 5:, 0] = 3.0
    acts[0, 5:, 1] = -3.0
    change = activation_change(acts, half_len=4)
    np.testing.assert_allclose(change, [2.0, -1.0, 0.0, 0.0, 0.0])
    no_bos = activation_change(acts[:, 1:], half_len=4)  # P = 7: the first copy starts at 0
    np.testing.assert_allclose(no_bos, [2.0, -1.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="two copies"):
        activation_change(acts, half_len=3)


def test_random_neuron_draws_exclude_and_are_deterministic():
    draws = random_neuron_draws(20, 3, 5, exclude=[0, 1, 2], seed=1)
    assert draws == random_neuron_draws(20, 3, 5, exclude=[0, 1, 2], seed=1)
    assert all(len(set(d)) == 5 and not set(d) & {0, 1, 2} for d in draws)


def test_natural_induction_effects_at_repeat_positions(setup: Setup):
    tokens = setup.tokens  # second copy of 8 tokens starts at 9; the 3-gram at 1 repeats at 9
    repeats = [(1, 9)] * tokens.shape[0]
    neuron = clipped_neuron(setup.cache)
    reference = setup.cache.acts.mean(0)
    df = natural_induction_effects(
        setup.layer, setup.cache, repeats, [neuron], reference_mean=reference, n=3, ablation="toolkit"
    )
    assert len(df) == tokens.shape[0] * 8
    seq0 = df[df["seq"] == 0]
    assert seq0["label"].tolist() == ["A0", "A1", "A2", "B", "A0", "A1", "A2", "X"]
    assert seq0["position"].tolist() == [1, 2, 3, 4, 9, 10, 11, 12]
    assert (df.loc[~df["clipped"], ["delta_entropy", "delta_loss"]] == 0).all().all()
    eff = per_token_effects(setup.layer, setup.cache, [neuron], mode="clip", mean_act=reference)
    flat = [s * 16 + p for s, p in zip(df["seq"], df["position"])]
    np.testing.assert_allclose(df["delta_entropy"], (eff.TE.entropy[flat, 0] - eff.entropy[flat]).numpy(), atol=1e-5)
    acts = setup.cache.acts.double()
    first = [s * 16 + p for s in range(5) for p in (1, 2, 3, 4)]
    second = [s * 16 + p for s in range(5) for p in (9, 10, 11, 12)]
    np.testing.assert_allclose(
        natural_activation_change(setup.cache, repeats, n=3),
        (acts[second].mean(0) - acts[first].mean(0)).numpy(),
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="overlaps"):
        natural_induction_effects(setup.layer, setup.cache, [(1, 3)] * 5, [neuron], reference_mean=reference, n=3)


@pytest.mark.parametrize("clip", ["toolkit", "authors"])
def test_second_copy_token_effects_match_the_curves(tmp_path, clip):
    """Fig. 10c's per-token changes, clipped as Fig. 5b clips, average to Fig. 5b's curves."""
    from confidence_neurons.induction.neurons import clipped_ablation_curves, second_copy_token_effects
    from tests.tiny import load_tiny, random_tokens, tiny_tokenizer

    model = load_tiny("gpt2", tmp_path / "m")
    layer = final_layer(model)
    half = random_tokens(4, 9, seed=3)[:, 1:]
    tokens = torch.cat([half[:, :1] * 0 + 1, half, half], dim=1)  # BOS, T, T with T = 8
    cache = run_forward(model, layer, tokens, progress=False)
    ranked = [int(i) for i in cache.acts.std(0).argsort(descending=True)]
    curves = clipped_ablation_curves(layer, cache, tuple(tokens.shape), ranked[:1], half_len=8, clip=clip)
    below = [i for i in ranked if bool(curves["from_below"][i])][:1]  # the authors' clip: one from below
    neurons = ranked[:2] + [i for i in below if i not in ranked[:2]]
    curves = clipped_ablation_curves(layer, cache, tuple(tokens.shape), neurons, half_len=8, clip=clip)
    eff = second_copy_token_effects(
        layer,
        cache,
        tokens,
        neurons,
        half_len=8,
        threshold=curves["threshold"],
        from_below=curves["from_below"],
        tokenizer=tiny_tokenizer(),
    )
    assert len(eff) == len(neurons) * 4 * 7 and ((eff["reciprocal_rank"] > 0) & (eff["reciprocal_rank"] <= 1)).all()
    assert list(dict.fromkeys(eff["neuron"])) == neurons
    assert (eff.loc[~eff["clipped"], "delta_loss"].abs() < 1e-6).all()
    if clip == "authors" and below:
        assert (eff[eff["neuron"] == below[0]]["clip_from"] == "below").all()
    for i in neurons:
        per_pos = curves["per_position"].query("group == 'selected' and neuron == @i and copy == 'second'")
        mine = eff[eff["neuron"] == i].groupby("pos")["delta_loss"].mean()
        np.testing.assert_allclose(
            mine.to_numpy(), per_pos.set_index("position").loc[mine.index, "delta_loss_mean"], atol=1e-6
        )


def test_natural_effects_name_the_tokens_and_fig9c_draws_the_second_occurrence(setup: Setup):
    from confidence_neurons.figures.induction import fig_natural_loss_change
    from tests.tiny import tiny_tokenizer

    tokens, repeats = setup.tokens, [(1, 9)] * setup.tokens.shape[0]
    neuron, reference = clipped_neuron(setup.cache), setup.cache.acts.mean(0)
    df = natural_induction_effects(
        setup.layer,
        setup.cache,
        repeats,
        [neuron],
        reference_mean=reference,
        n=3,
        tokens=tokens,
        tokenizer=tiny_tokenizer(),
        ablation="toolkit",
    )
    flat = [s * 16 + p for s, p in zip(df["seq"], df["position"])]
    assert df["target_id"].tolist() == setup.cache.target[flat].tolist()  # the token each position predicts
    assert df["token_id"].tolist() == [int(tokens[s, p]) for s, p in zip(df["seq"], df["position"])]
    assert df["token"].tolist() == [f"w{i - 3}" for i in df["token_id"]]  # tiny vocabulary: w0 is id 3
    with pytest.raises(ValueError, match="are not the"):
        natural_induction_effects(
            setup.layer, setup.cache, repeats, [neuron], reference_mean=reference, n=3, tokens=tokens[:, 1:]
        )

    fig = fig_natural_loss_change(df, neuron, f"1.{neuron}")
    (trace,) = fig.data
    shown = df[(df["occurrence"] == "second") & df["clipped"]]
    assert len(trace.x) == len(shown) > 0
    np.testing.assert_allclose(np.asarray(trace.x, float), shown["loss"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(trace.y, float), shown["delta_loss"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(trace.marker.color, float), shown["reciprocal_rank"].to_numpy(), rtol=1e-6)
    assert "Fig. 9c" in fig.layout.title.text and "second occurrence" in fig.layout.title.text
    both = fig_natural_loss_change(df.drop(columns=["token", "target"]), neuron, "n", occurrence="both")
    assert len(both.data[0].x) == int(df["clipped"].sum()) and "#" in both.data[0].customdata[0][0]
    with pytest.raises(ValueError, match="occurrence"):
        fig_natural_loss_change(df, neuron, "n", occurrence="first")
