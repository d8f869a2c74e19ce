"""A planted token frequency neuron is found with the right sign; a planted entropy neuron is not (Sec. 4).

The tiny models of test_planted are reused: B writes W_U w_B = U_B. A unigram distribution is
then made so that v_freq is exactly proportional to U_B (P_freq proportional to exp(alpha U_B);
U_B is centred over the vocabulary, so v_freq = alpha U_B), which makes B's whole direct logit
effect lie along v_freq.
"""

from __future__ import annotations

import pytest
import torch

from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.selection import EntropyNeuronRule, TokenFrequencyNeuronRule
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.analysis.table import neuron_table
from confidence_neurons.analysis.weights import weight_stats
from confidence_neurons.data.unigrams import v_freq
from confidence_neurons.models.final_layer import final_layer
from tests.analysis.test_planted import NEURON_A, NEURON_B, plant
from tests.tiny import load_tiny, random_tokens


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_and_cache(request, tmp_path_factory):
    model = load_tiny(request.param, tmp_path_factory.mktemp(f"tf_{request.param}"), edit=plant)
    layer = final_layer(model)
    return layer, run_forward(model, layer, random_tokens(8, 32, seed=4), progress=False)


@pytest.mark.parametrize("alpha", [0.5, -0.5])
def test_planted_token_frequency_neuron(model_and_cache, alpha):
    layer, cache = model_and_cache
    U_B = layer.center(layer.W_out[NEURON_B]).double() @ layer.W_U.double()
    assert U_B.sum().abs() < 1e-6 * U_B.abs().sum(), "W_U is centred over the vocabulary"
    p = torch.softmax(alpha * U_B, dim=0)
    freq = FreqDirection(p=p, v=v_freq(p))
    assert torch.allclose(freq.v.double(), alpha * U_B, atol=1e-4 * U_B.abs().max()), "v_freq must be alpha U_B"
    sw = sweep(layer, cache, freq=freq, progress=False)
    table = neuron_table(layer, weight_stats(layer, 1), sw, EntropyNeuronRule(), freq, TokenFrequencyNeuronRule())
    b, a = table.iloc[NEURON_B], table.iloc[NEURON_A]
    # Near 1, not 1: Eq. 7 holds the logits' v_freq component but lets the norm's scale respond, and
    # B (|w_out| = 3 in a residual of norm ~20) moves the scale a little; mean |changes| do not add.
    assert b["freq_share"] > 0.75, f"B's effect should run along v_freq: 1 - DE_freq/TE = {b['freq_share']:.3f}"
    assert b["freq_share"] > table["freq_share"].quantile(0.9)
    assert b["abs_delta_kl"] > 3 * table["abs_delta_kl"].median()
    assert bool(b["is_token_frequency_neuron"])
    assert b["v_freq_cos"] == pytest.approx(1.0 if alpha > 0 else -1.0, abs=1e-4)
    assert (b["v_freq_proj"] > 0) == (alpha > 0), "the sign says toward (+) or away from (-) the unigram distribution"
    assert bool(a["is_entropy_neuron"]) and not bool(a["is_token_frequency_neuron"])
    assert abs(a["v_freq_proj"]) < 1e-3 * abs(b["v_freq_proj"]), "the entropy neuron writes nothing along v_freq"
    assert table["is_token_frequency_neuron"].sum() <= 3
