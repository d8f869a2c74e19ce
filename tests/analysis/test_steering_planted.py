"""A neuron planted in W_U's exact null space is a pure temperature dial: steering it divides every
logit of a token by the same number (LLaMA: RMSNorm and no unembedding bias), so the ranking of
tokens never changes and the implied temperature of its clipped ablation is exact.
"""

from __future__ import annotations

import pytest
import torch

from confidence_neurons.analysis import steering as S
from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.models.final_layer import final_layer
from tests.analysis.test_planted import NEURON_A, NEURON_B, plant
from tests.tiny import load_tiny, random_tokens


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    model = load_tiny("llama", tmp_path_factory.mktemp("planted_llama"), edit=plant)
    layer = final_layer(model)
    assert layer.b_U.abs().max() == 0 and layer.softcap is None
    cache = run_forward(model, layer, random_tokens(6, 32, seed=4), progress=False)
    fit_rows = slice(0, 3 * 31)
    steerer = S.Steerer(layer, [NEURON_A, NEURON_B], cache.acts[fit_rows][:, [NEURON_A, NEURON_B]].mean(0))
    return layer, cache, steerer


def _dial(name):
    return {"A": S.Dial("A", (NEURON_A,), (0,)), "B": S.Dial("B", (NEURON_B,), (1,))}[name]


@torch.no_grad()
def test_steering_the_null_space_neuron_is_a_temperature(planted):
    layer, cache, steerer = planted
    largest_change = 0.0
    for base in steerer.bases(cache, 64):
        z = steerer.clean_logits(base).double()
        for alpha in (-1.0, 0.0, 0.5, 2.0, 3.0):
            zs = steerer.logits(base, _dial("A"), steerer.delta(base, _dial("A"), alpha)).double()
            inv_T = (zs * z).sum(-1) / (z * z).sum(-1)  # zs = z / T per token
            torch.testing.assert_close(zs, inv_T[:, None] * z, atol=1e-5 * float(z.abs().max()), rtol=0)
            # Token ranking kept: read in the clean order, the steered logits never fall by more than
            # rounding (an exact argsort comparison would fail on near-ties whose rounding differs by CPU).
            in_clean_order = zs.gather(-1, z.argsort(-1))
            assert in_clean_order.diff(dim=-1).min() >= -1e-5 * float(zs.abs().max()), "the token ranking changed"
            largest_change = max(largest_change, float((inv_T - 1).abs().max()))
    assert largest_change > 0.05, "steering the planted neuron barely changes the temperature"


@torch.no_grad()
def test_rank_never_moves_for_the_null_space_neuron_but_does_for_the_other(planted):
    layer, cache, steerer = planted
    settings = [S.Setting("neuron dial", a, _dial(n)) for n in "AB" for a in (-1.0, 0.0, 2.0, 3.0)]
    measured = S.measure(steerer, S.Bases(steerer, cache, 50, 1e9), settings, [])
    clean = measured.metrics["clean"]
    for st in settings:
        m = measured.metrics[st.label]
        moved = (m["rank"] != clean["rank"]).mean() + (m["argmax"] != clean["argmax"]).mean()
        if st.dial.name == "A":
            # At most a float near-tie or two may flip (rank and argmax are exact float comparisons):
            # the contrast neuron moves 40-97% of them.
            assert moved <= 0.02, f"{st.label} moved the ranking"
            assert abs(m["entropy"] - clean["entropy"]).max() > 0.01
        elif st.value != 1.0:
            assert moved > 0.2, f"{st.label}: the contrast neuron should move the ranking"


@torch.no_grad()
def test_implied_temperature_of_the_null_space_neuron_is_exact(planted):
    layer, cache, steerer = planted
    dial = _dial("A")
    n_clipped, all_true = 0, []
    for base in steerer.bases(cache, 64):
        clip = steerer.clipped_delta(base, dial)
        changed = (clip != 0).any(-1)
        z = steerer.clean_logits(base).double()
        zc = steerer.logits(base, dial, clip).double()
        T_true = (z * z).sum(-1) / (zc * z).sum(-1)  # zc = z / T_true
        logp = zc.log_softmax(-1)
        T = S.implied_temperature(z[changed], -(logp.exp() * logp).sum(-1)[changed])
        torch.testing.assert_close(T, T_true[changed], rtol=1e-5, atol=0)
        assert torch.all(T_true[~changed] == 1)
        n_clipped += int(changed.sum())
        all_true.append(T_true)
    assert n_clipped > 20
    # the same through the one-pass measurement (float32 entropies)
    measured = S.measure(steerer, S.Bases(steerer, cache, 64, 1e9), [], [dial])
    T_pass = torch.from_numpy(measured.implied_T["A"])
    clipped = torch.from_numpy(measured.clipped["A"])
    assert int(clipped.sum()) == n_clipped
    assert torch.all(T_pass[~clipped] == 1)
    torch.testing.assert_close(T_pass, torch.cat(all_true), rtol=1e-3, atol=0)
