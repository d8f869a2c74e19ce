"""Induction heads (Sec. 6.2, App. I): prefix matching on a planted induction circuit, BOS and mean-z
ablations, direct feature attribution, and head selection.
"""

from __future__ import annotations

import logging

import pytest
import torch

from confidence_neurons.induction.heads import (
    baseline_combinations,
    bos_ablation,
    bos_ablation_hooks,
    choose_heads,
    direct_feature_attribution,
    direct_feature_attributions,
    head_combinations,
    mean_bos_attention,
    mean_z_ablation_hooks,
    mean_z_over,
    neuron_activations_per_position,
    neuron_activations_under,
    prefix_matching_scores,
    repeated_random_tokens,
)
from tests.tiny import BOS_ID, N_SPECIAL, load_tiny, random_tokens

# The planted model: one-hot tokens, positions and a "previous token" subspace in the residual.
V, P, D, H = 64, 48, 256, 4
PREV = V + P


def plant_induction(hf) -> None:
    """GPT-2 with L0H0 a previous-token head and L1H0 an induction head (K-composition); every
    other weight zero, so the other heads attend uniformly and the MLPs write nothing.
    """
    tr, dh = hf.transformer, D // H
    for p in hf.parameters():
        p.zero_()
    for ln in [tr.ln_f] + [b.ln_1 for b in tr.h] + [b.ln_2 for b in tr.h]:
        ln.weight.fill_(1.0)
    tr.wte.weight[:, :V] = torch.eye(V)
    tr.wpe.weight[:, V : V + P] = torch.eye(P)
    qkv0, qkv1 = tr.h[0].attn.c_attn.weight, tr.h[1].attn.c_attn.weight  # (D, 3D): [Q | K | V], head 0 first
    for p in range(P):
        qkv0[V + p, p] = 1.0  # query at p looks for key p - 1
        if p + 1 < dh:
            qkv0[V + p, D + p + 1] = 1.0
    for t in range(V):
        qkv0[t, 2 * D + t] = 1.0  # L0H0 copies the token it attends to ...
        tr.h[0].attn.c_proj.weight[t, PREV + t] = 1.0  # ... into the previous-token subspace
        qkv1[t, t] = 4.0  # L1H0: query = current token, key = previous token
        qkv1[PREV + t, D + t] = 1.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return load_tiny(
        "gpt2",
        tmp_path_factory.mktemp("planted"),
        edit=plant_induction,
        n_embd=D,
        n_head=H,
        n_positions=P,
        n_inner=64,
        vocab_size=V,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {arch: load_tiny(arch, tmp_path_factory.mktemp(arch)) for arch in ("gpt2", "llama", "neox")}


def test_repeated_random_tokens():
    t = repeated_random_tokens(5, 7, 3, 20, bos_id=BOS_ID, seed=1)
    assert t.shape == (5, 15) and (t[:, 0] == BOS_ID).all()
    assert torch.equal(t[:, 1:8], t[:, 8:]) and t[:, 1:].min() >= 3 and t[:, 1:].max() < 20
    assert torch.equal(t, repeated_random_tokens(5, 7, 3, 20, bos_id=BOS_ID, seed=1))


def test_planted_induction_head_scores_high_and_others_low(planted, models):
    scores = prefix_matching_scores(planted, repeated_random_tokens(8, 20, N_SPECIAL, V, bos_id=BOS_ID), batch_size=3)
    assert scores.shape == (2, H)
    assert scores[1, 0] > 0.5, scores
    others = scores.clone()
    others[1, 0] = 0
    assert others.max() < 0.2, scores
    for arch, model in models.items():  # random models have no induction head
        s = prefix_matching_scores(model, repeated_random_tokens(8, 20, N_SPECIAL, 96, bos_id=BOS_ID))
        assert s.max() < 0.2, (arch, s)
    with pytest.raises(ValueError, match="two equal halves"):
        prefix_matching_scores(planted, random_tokens(2, 41, vocab_size=V))


def test_mean_bos_attention_of_uniform_heads(planted):
    """Heads with zero queries attend uniformly: query i puts 1/(i+1) on BOS."""
    seq_len = 40
    bos = mean_bos_attention(planted, random_tokens(4, seq_len, vocab_size=V), batch_size=3)
    expected = (1.0 / torch.arange(2, seq_len + 1, dtype=torch.float64)).mean().float()
    torch.testing.assert_close(bos[:, 1:], expected.expand(2, H - 1))
    assert bos[0, 0] < 0.05  # the previous-token head rests on BOS only at position 1


def test_bos_ablation_is_one_hot_on_targets_only_and_scoped(models):
    model = models["llama"]
    bridge, tokens = model.bridge, random_tokens(3, 12)
    pattern_names = lambda n: n.endswith("attn.hook_pattern") or n.endswith("attn.hook_z")  # noqa: E731
    clean_logits, clean = bridge.run_with_cache(tokens, names_filter=pattern_names)
    heads = ((0, 1), (1, 2), (1, 3))
    with bos_ablation(model, heads):
        logits, ablated = bridge.run_with_cache(tokens, names_filter=pattern_names)
    for l in range(2):
        p, p0 = ablated[f"blocks.{l}.attn.hook_pattern"], clean[f"blocks.{l}.attn.hook_pattern"]
        for h in range(model.cfg.n_heads):
            if (l, h) in heads:
                assert (p[:, h, :, 0] == 1).all() and (p[:, h, :, 1:] == 0).all()
            elif l == 0:
                assert torch.equal(p[:, h], p0[:, h])  # nothing upstream changed
    z = ablated["blocks.1.attn.hook_z"][:, :, 2]  # the ablation reaches the head's output: z = v at BOS
    assert (z - z[:, :1]).abs().max() < 1e-6 and (clean["blocks.1.attn.hook_z"][:, :, 2] - z).abs().max() > 1e-3
    assert (logits - clean_logits).abs().max() > 1e-3
    with bos_ablation(model, ()):
        torch.testing.assert_close(bridge(tokens), clean_logits, rtol=0, atol=0)
    with pytest.raises(RuntimeError), bos_ablation(model, heads):
        raise RuntimeError
    torch.testing.assert_close(bridge(tokens), clean_logits, rtol=0, atol=0)  # hooks gone, even after an error


def test_neuron_activations_under_matches_a_plain_forward(models):
    model, tokens, neurons = models["gpt2"], random_tokens(5, 10), [3, 0, 7]
    _, cache = model.bridge.run_with_cache(tokens, names_filter="blocks.1.mlp.hook_post")
    clean = neuron_activations_under(model, tokens, neurons, [], batch_size=2)
    torch.testing.assert_close(clean, cache["blocks.1.mlp.hook_post"][..., neurons].mean(0).T)
    with bos_ablation(model, [(0, 0), (1, 1)]):
        _, cache = model.bridge.run_with_cache(tokens, names_filter="blocks.1.mlp.hook_post")
    ablated = neuron_activations_under(model, tokens, neurons, bos_ablation_hooks([(0, 0), (1, 1)]), batch_size=2)
    torch.testing.assert_close(ablated, cache["blocks.1.mlp.hook_post"][..., neurons].mean(0).T)
    assert (ablated - clean).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "llama", "neox"])
def test_direct_attributions_sum_to_the_pre_activation(models, arch):
    model, tokens, neuron = models[arch], random_tokens(5, 12), 9
    labels, dfa = direct_feature_attribution(model, tokens, neuron, batch_size=2)
    n_heads, L = model.cfg.n_heads, model.cfg.n_layers - 1
    head_layers = L if arch == "neox" else L + 1  # NeoX: the last block's attention runs beside its MLP
    assert len(labels) == dfa.shape[0] == 1 + (arch == "gpt2") + head_layers * n_heads + L + 1
    assert labels[0] == "embed" and labels[-1] == "bias" and "L0H3" in labels and "mlp0" in labels
    assert dfa.shape[1] == tokens.shape[1]
    _, cache = model.bridge.run_with_cache(tokens, names_filter=f"blocks.{L}.mlp.hook_pre")
    pre = cache[f"blocks.{L}.mlp.hook_pre"][..., neuron].mean(0)
    torch.testing.assert_close(dfa.sum(0), pre, rtol=0, atol=1e-4)
    assert (dfa[:-1].abs() > 1e-3).sum() > len(labels) // 2  # the sum is not carried by one row
    several = [neuron, 0, 5]
    labels3, dfa3 = direct_feature_attributions(model, tokens, several, batch_size=3)
    assert labels3 == labels and dfa3.shape == (3, *dfa.shape)
    torch.testing.assert_close(dfa3[0], dfa, rtol=0, atol=1e-5)  # one pass for all neurons, same rows
    _, cache = model.bridge.run_with_cache(tokens, names_filter=f"blocks.{L}.mlp.hook_pre")
    pre3 = cache[f"blocks.{L}.mlp.hook_pre"][..., several].mean(0).T  # (n_neurons, seq_len)
    torch.testing.assert_close(dfa3.sum(1), pre3, rtol=0, atol=1e-4)


def test_mean_z_ablation(models):
    model, heads, tokens = models["gpt2"], [(0, 2), (1, 1)], random_tokens(1, 12)
    clean = model.bridge(tokens)
    own = mean_z_over(model, tokens, heads, slice(5, 6))
    assert own[(0, 2)].shape == (model.cfg.d_head,)
    same = model.bridge.run_with_hooks(tokens, fwd_hooks=mean_z_ablation_hooks(heads, own, positions=slice(5, 6)))
    torch.testing.assert_close(same, clean, rtol=0, atol=1e-5)
    other = mean_z_over(model, tokens, heads, slice(8, 9))
    moved = model.bridge.run_with_hooks(tokens, fwd_hooks=mean_z_ablation_hooks(heads, other, positions=slice(5, 6)))
    assert (moved[:, 5] - clean[:, 5]).abs().max() > 1e-3
    torch.testing.assert_close(moved[:, :5], clean[:, :5], rtol=0, atol=1e-5)  # causal: earlier positions untouched
    with pytest.raises(ValueError, match="no mean z"):
        mean_z_ablation_hooks([(1, 3)], own)


def test_mean_z_over_batches(models):
    model, heads, tokens = models["llama"], [(1, 0), (1, 3)], random_tokens(5, 10)
    means = mean_z_over(model, tokens, heads, slice(4, None), batch_size=2)
    _, cache = model.bridge.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    for l, h in heads:
        torch.testing.assert_close(means[(l, h)], cache["blocks.1.attn.hook_z"][:, 4:, h].mean((0, 1)))


def test_choose_heads_follows_the_rules(caplog):
    prefix = torch.full((4, 8), 0.05)
    prefix[2, 3], prefix[1, 6], prefix[2, 0] = 0.9, 0.7, 0.5
    prefix[2, 5] = 0.2  # rests on BOS but matches prefixes: never a baseline
    bos = torch.full((4, 8), 0.3)
    bos[1, :] = bos[2, :] = 0.8
    bos[1, 1] = 0.55  # below min_bos
    induction, baseline = choose_heads(prefix, bos, seed=3)
    assert induction == [(2, 3), (1, 6), (2, 0)]
    qualifying = {(1, h) for h in (0, 2, 3, 4, 5, 7)} | {(2, h) for h in (1, 2, 4, 6, 7)}
    assert len(baseline) == 6 and set(baseline) <= qualifying and baseline == sorted(baseline)
    assert choose_heads(prefix, bos, seed=3) == (induction, baseline)
    assert {tuple(b) for s in range(20) for b in choose_heads(prefix, bos, seed=s)[1]} == qualifying

    bos[3, :] = 0.9
    with caplog.at_level(logging.WARNING):
        _, wide = choose_heads(prefix, bos, baseline_layers=[2], n_baseline=8)
    assert "widening" in caplog.text and len(wide) == 8 and any(l != 2 for l, _ in wide)
    _, only2 = choose_heads(prefix, bos, baseline_layers=[2], n_baseline=5)
    assert {l for l, _ in only2} == {2}


def test_head_combinations():
    combos = head_combinations([(5, 1), (5, 5), (6, 9)])
    assert len(combos) == 7 and combos[0] == ((5, 1),) and combos[-1] == ((5, 1), (5, 5), (6, 9))
    base = [(5, h) for h in range(6)]
    sets = baseline_combinations(base, seed=0)
    assert [len(s) for s in sets] == [1] * 6 + [2] * 3 + [3] * 3 and len(set(sets)) == 12
    assert sets == baseline_combinations(base, seed=0)


def _one_position_loop(model, tokens, neurons, hooks_for_row_q):
    """The authors' procedure, written out: one forward per query position q, the heads ablated at
    row q of the attention only (by a hook written here, not the library's), the activation read at q.
    """
    act = f"blocks.{model.cfg.n_layers - 1}.mlp.hook_post"
    out = torch.zeros(len(neurons), tokens.shape[1])
    for q in range(tokens.shape[1]):
        read = {}

        def capture(acts, hook, q=q):
            read["a"] = acts[:, q, neurons].mean(0)

        model.bridge.run_with_hooks(tokens, fwd_hooks=[*hooks_for_row_q(q), (act, capture)])
        out[:, q] = read["a"]
    return out


def _bos_hook(pattern, heads_here, q):
    out = pattern.clone()
    for h in heads_here:
        out[:, h, q, :] = 0.0
        out[:, h, q, 0] = 1.0
    return out


def _z_hook(z, heads_here, q, layer, mean_z):
    out = z.clone()
    for h in heads_here:
        out[:, q, h] = mean_z[(layer, h)]
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_per_position_bos_ablation_equals_one_forward_per_position(models, arch):
    model, tokens, neurons, heads = models[arch], random_tokens(3, 11), [3, 0, 7], [(0, 1), (0, 3), (1, 2)]
    layers = sorted({l for l, _ in heads})

    def twin_hooks(q):
        return [
            (f"blocks.{l}.attn.hook_pattern", lambda p, hook, hs=[h for m, h in heads if m == l]: _bos_hook(p, hs, q))
            for l in layers
        ]

    twin = _one_position_loop(model, tokens, neurons, twin_hooks)
    fast = neuron_activations_per_position(
        model, tokens, neurons, lambda pos: bos_ablation_hooks(heads, pos), batch_size=5
    )
    torch.testing.assert_close(fast, twin, rtol=0, atol=1e-5)
    everywhere = neuron_activations_under(model, tokens, neurons, bos_ablation_hooks(heads), batch_size=5)
    clean = neuron_activations_under(model, tokens, neurons, [], batch_size=5)
    # Query 0 sees only key 0, so ablating positions 0 and 1 at once equals ablating position 1 alone.
    torch.testing.assert_close(fast[:, :2], everywhere[:, :2], rtol=0, atol=1e-5)
    assert (fast[:, 2:] - everywhere[:, 2:]).abs().max() > 1e-3  # later, the two variants differ
    assert (fast - clean).abs().max() > 1e-3  # and the ablation does something
    torch.testing.assert_close(fast[:, 0], clean[:, 0], rtol=0, atol=1e-5)  # BOS ablation of query 0 is a no-op


@pytest.mark.parametrize("arch", ["neox", "llama"])
def test_per_position_mean_z_ablation_equals_one_forward_per_position(models, arch):
    model, tokens, neurons, heads = models[arch], random_tokens(2, 9), [1, 5], [(0, 2), (1, 1)]
    mean_z = mean_z_over(model, random_tokens(2, 9, seed=5), heads, slice(3, None))

    def twin_hooks(q):
        return [
            (
                f"blocks.{l}.attn.hook_z",
                lambda z, hook, l=l, hs=[h for m, h in heads if m == l]: _z_hook(z, hs, q, l, mean_z),
            )
            for l in (0, 1)
        ]

    twin = _one_position_loop(model, tokens, neurons, twin_hooks)
    fast = neuron_activations_per_position(
        model, tokens, neurons, lambda pos: mean_z_ablation_hooks(heads, mean_z, positions=pos), batch_size=4
    )
    torch.testing.assert_close(fast, twin, rtol=0, atol=1e-5)
    everywhere = neuron_activations_under(model, tokens, neurons, mean_z_ablation_hooks(heads, mean_z), batch_size=4)
    torch.testing.assert_close(fast[:, 0], everywhere[:, 0], rtol=0, atol=1e-5)  # nothing before position 0
    if arch == "neox":  # z elsewhere reaches the last MLP at q only through L1's attention, which runs beside it
        torch.testing.assert_close(fast, everywhere, rtol=0, atol=1e-5)
    else:
        assert (fast[:, 1:] - everywhere[:, 1:]).abs().max() > 1e-3


def test_per_row_hooks_touch_only_their_row_and_position(models):
    model, tokens, heads = models["gpt2"], random_tokens(3, 8), [(1, 2)]
    clean = model.bridge.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")[1]
    positions = torch.tensor([2, 5, 7])
    with model.bridge.hooks(fwd_hooks=bos_ablation_hooks(heads, positions)):
        _, cache = model.bridge.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    p, p0 = cache["blocks.1.attn.hook_pattern"], clean["blocks.1.attn.hook_pattern"]
    changed = (p != p0).any(-1)  # (batch, head, q)
    for b, q in enumerate(positions.tolist()):
        assert (p[b, 2, q, 0] == 1).all() and (p[b, 2, q, 1:] == 0).all()
        expected = torch.zeros_like(changed[b])
        expected[2, q] = True
        assert torch.equal(changed[b], expected)
    with pytest.raises(ValueError, match="positions for a batch"):
        model.bridge.run_with_hooks(tokens, fwd_hooks=bos_ablation_hooks(heads, torch.tensor([1, 2])))
