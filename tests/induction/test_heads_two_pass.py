"""The two-forward per-position head ablation (induction/two_pass.py) against its slow twins: the
batched one-row-per-(sequence, q) path and a plain loop of one forward per query position, on a
tiny model of every supported architecture (Gemma 2 with attention soft-capping and sliding
windows, Gemma 3 with q/k norms and sliding windows).
"""

from __future__ import annotations

import pytest
import torch

from confidence_neurons.induction.heads import (
    bos_ablation_hooks,
    mean_z_ablation_hooks,
    mean_z_over,
    neuron_activations_per_position,
    neuron_activations_under,
)
from confidence_neurons.induction.two_pass import head_ablation_activations
from confidence_neurons.models.loading import load_model
from tests.tiny import VOCAB_SIZE, load_tiny, random_tokens, save_tiny

TOL = 1e-5
ARCHS = ("gpt2", "neox", "llama", "gemma", "phi", "gemma2", "gemma3")


def _tiny_gemma(version: int, directory):
    """3 layers, 4 query heads on 2 kv heads, a sliding window of 4 in layers 0 and 2 (shorter than the
    test sequences); Gemma 2 soft-caps its attention scores at 5.
    """
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    )
    if version == 2:
        model = Gemma2ForCausalLM(Gemma2Config(**common, attn_logit_softcapping=5.0))
    else:
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common))
    torch.manual_seed(version)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return load_model(str(save_tiny(model, directory)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {a: load_tiny(a, tmp_path_factory.mktemp(a)) for a in ARCHS if not a.startswith("gemma")}
    out["gemma"] = load_tiny("gemma", tmp_path_factory.mktemp("gemma"))
    out["gemma2"] = _tiny_gemma(2, tmp_path_factory.mktemp("gemma2"))
    out["gemma3"] = _tiny_gemma(3, tmp_path_factory.mktemp("gemma3"))
    return out


def _head_sets(model):
    """A single head, a pair in one layer, a pair across layers and a triple across layers, and sets
    whose lowest layer is above 0 (their pass skips the blocks below it).
    """
    top = model.cfg.n_layers - 1
    assert top >= 1
    return [((0, 1),), ((0, 0), (0, 3)), ((0, 2), (top, 1)), ((0, 1), (1, 3), (top, 2)), ((1, 2),), ((top, 0),)]


def _loop(model, tokens, neurons, heads, hook_at_q):
    """One forward per query position q, the heads ablated at q only by a hook written here."""
    act = f"blocks.{model.cfg.n_layers - 1}.mlp.hook_post"
    out = torch.zeros(len(neurons), tokens.shape[1])
    layers = sorted({l for l, _ in heads})
    for q in range(tokens.shape[1]):
        read = {}

        def capture(acts, hook, q=q):
            read["a"] = acts[:, q, neurons].mean(0)

        hooks = [
            (name, lambda x, hook, l=l, q=q: hook_at_q(x, [h for m, h in heads if m == l], l, q))
            for l in layers
            for name in [hook_at_q.point.format(l=l)]
        ]
        model.bridge.run_with_hooks(tokens, fwd_hooks=[*hooks, (act, capture)])
        out[:, q] = read["a"]
    return out


def _bos_at_q(pattern, heads_here, layer, q):  # (batch, head, q, k)
    out = pattern.clone()
    for h in heads_here:
        out[:, h, q, :] = 0.0
        out[:, h, q, 0] = 1.0
    return out


_bos_at_q.point = "blocks.{l}.attn.hook_pattern"


@pytest.mark.parametrize("arch", ARCHS)
def test_two_pass_bos_ablation_equals_both_slow_twins(models, arch):
    model, tokens, neurons = models[arch], random_tokens(3, 10), [3, 0, 7]
    sets = _head_sets(model)
    clean, fast = head_ablation_activations(model, tokens, neurons, sets, bos_ablation_hooks, batch_size=2)
    torch.testing.assert_close(clean, neuron_activations_under(model, tokens, neurons, []), rtol=0, atol=TOL)
    for heads, got in zip(sets, fast):
        batched = neuron_activations_per_position(
            model, tokens, neurons, lambda pos, hs=heads: bos_ablation_hooks(hs, pos), batch_size=7
        )
        torch.testing.assert_close(got, batched, rtol=0, atol=TOL, msg=f"{arch} {heads} vs batched twin")
        loop = _loop(model, tokens, neurons, heads, _bos_at_q)
        torch.testing.assert_close(got, loop, rtol=0, atol=TOL, msg=f"{arch} {heads} vs loop")
        top, parallel = model.cfg.n_layers - 1, bool(getattr(model.cfg, "parallel_attn_mlp", False))
        if not (parallel and min(l for l, _ in heads) == top):  # parallel: the top heads never reach its MLP
            assert (got - clean).abs().max() > 1e-3, (arch, heads)  # the ablation does something


@pytest.mark.parametrize("arch", ARCHS)
def test_two_pass_mean_z_ablation_equals_both_slow_twins(models, arch):
    model, tokens, neurons = models[arch], random_tokens(2, 9, seed=3), [1, 5]
    sets = _head_sets(model)
    all_heads = sorted({h for hs in sets for h in hs})
    mean_z = mean_z_over(model, random_tokens(2, 9, seed=5), all_heads, slice(3, None))

    def z_at_q(z, heads_here, layer, q):  # (batch, pos, head, d_head)
        out = z.clone()
        for h in heads_here:
            out[:, q, h] = mean_z[(layer, h)]
        return out

    z_at_q.point = "blocks.{l}.attn.hook_z"
    _, fast = head_ablation_activations(
        model, tokens, neurons, sets, lambda hs: mean_z_ablation_hooks(hs, mean_z), batch_size=3
    )
    for heads, got in zip(sets, fast):
        batched = neuron_activations_per_position(
            model, tokens, neurons, lambda pos, hs=heads: mean_z_ablation_hooks(hs, mean_z, positions=pos)
        )
        torch.testing.assert_close(got, batched, rtol=0, atol=TOL, msg=f"{arch} {heads} vs batched twin")
        torch.testing.assert_close(got, _loop(model, tokens, neurons, heads, z_at_q), rtol=0, atol=TOL)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_all_positions_variant_equals_one_hooked_forward(models, arch):
    model, tokens, neurons = models[arch], random_tokens(3, 10), [2, 4]
    sets = _head_sets(model)
    _, fast = head_ablation_activations(
        model, tokens, neurons, sets, bos_ablation_hooks, variant="all-positions", batch_size=2
    )
    _, per_q = head_ablation_activations(model, tokens, neurons, sets, bos_ablation_hooks, batch_size=2)
    for heads, got, pq in zip(sets, fast, per_q):
        plain = neuron_activations_under(model, tokens, neurons, bos_ablation_hooks(heads))
        torch.testing.assert_close(got, plain, rtol=0, atol=TOL)
        if min(l for l, _ in heads) < model.cfg.n_layers - 1:  # in the top layer alone no later query mixes
            assert (got[:, 2:] - pq[:, 2:]).abs().max() > 1e-4  # the two variants differ after position 1
        else:
            torch.testing.assert_close(got, pq, rtol=0, atol=TOL)


def test_hooks_are_removed_and_bad_input_is_refused(models):
    model, tokens = models["gpt2"], random_tokens(2, 6)
    before = model.bridge(tokens)
    head_ablation_activations(model, tokens, [0], [((0, 1), (1, 2)), ((1, 0),)], bos_ablation_hooks)
    torch.testing.assert_close(model.bridge(tokens), before, rtol=0, atol=1e-6)  # no hook left behind
    # the blocks under a pass's first layer ran as pass-throughs during it, and are themselves again
    assert all("forward" not in vars(b.original_component) for b in model.bridge.blocks)
    with pytest.raises(ValueError, match="at least one head"):
        head_ablation_activations(model, tokens, [0], [()], bos_ablation_hooks)
    with pytest.raises(ValueError, match="variant"):
        head_ablation_activations(model, tokens, [0], [((0, 1),)], bos_ablation_hooks, variant="everywhere")
