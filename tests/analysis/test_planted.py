"""A planted entropy neuron is found, and a planted ordinary neuron is not (Sec. 3.1-3.4).

Two neurons are planted in the last MLP of a tiny GPT-2 (LayerNorm) and a tiny LLaMA (RMSNorm):

* A writes ``c_A * u`` where ``u`` spans an exact null space of W_U: it changes no logit
  directly, only the final norm's scale. Its DE is 0 and 1 - DE/TE is 1, as for an ideal
  entropy neuron.
* B writes along the unembedding direction of one token: a strong, specific logit pattern
  that the norm hardly mediates (1 - DE/TE small).

The plant is made in the Hugging Face weights *before* loading, so that the real loading
path (TransformerBridge with Appendix C processing) is part of what is tested. It is exact
under that processing: folding the final norm multiplies W_U's residual rows by gamma, so
the null direction is cut out of lm_head along gamma * u, which makes (diag(gamma) W_U^T) u
= 0 exactly; centring W_U over the vocabulary keeps a zero row zero; and on LayerNorm models
u is orthogonal to the all-ones vector, so centring W_U's reading side and W_out's writing
side leaves both u and the null space as they are. ``weight_stats`` on the processed weights
checks that the plant survived.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.sweep import NeuronEffects, sweep
from confidence_neurons.analysis.weights import WeightStats, weight_stats
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from tests.tiny import ARCHITECTURES, load_tiny, random_tokens

NEURON_A, NEURON_B = 7, 11  # A: entropy neuron in W_U's null space; B: writes a token's logit direction
C_A, C_B = 10.0, 3.0  # |w_out| of the planted neurons (the residual stream's norm is about 20)
GAIN = 2.0  # input weight scale of the planted neurons, so that their activations vary across tokens
TOKEN_B = 5


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm()


@torch.no_grad()
def plant(model) -> None:
    """Edit a tiny GPT-2 or LLaMA in place: an exact null direction u of W_U, A in it, B on a logit direction."""
    gen = torch.Generator().manual_seed(123)
    d = model.config.hidden_size
    if model.config.model_type == "gpt2":
        gamma, mlp = model.transformer.ln_f.weight, model.transformer.h[-1].mlp
    else:
        gamma, mlp = model.model.norm.weight, model.model.layers[-1].mlp
    W = model.lm_head.weight  # (d_vocab, d_model); GPT-2 ties it to the input embedding
    u = torch.randn(d, generator=gen)
    u = _unit(u - u.mean())  # orthogonal to the all-ones vector, which LayerNorm removes
    v = _unit(gamma * u)
    W.sub_(torch.outer(W @ v, v))  # now W diag(gamma) u = 0: u is in the null space of the folded W_U
    b = _unit(gamma * W[TOKEN_B])
    b = _unit(b - b.mean())  # raises TOKEN_B's logit; orthogonal to u and to the all-ones vector
    if model.config.model_type == "gpt2":  # Conv1D: c_fc.weight (d_model, d_mlp), c_proj.weight (d_mlp, d_model)
        mlp.c_proj.weight[NEURON_A] = C_A * u
        mlp.c_proj.weight[NEURON_B] = C_B * b
        for n in (NEURON_A, NEURON_B):
            mlp.c_fc.weight[:, n] = GAIN * torch.randn(d, generator=gen) / d**0.5
            mlp.c_fc.bias[n] = 0.0
    else:  # Linear: gate/up (d_mlp, d_model), down (d_model, d_mlp)
        mlp.down_proj.weight[:, NEURON_A] = C_A * u
        mlp.down_proj.weight[:, NEURON_B] = C_B * b
        for n in (NEURON_A, NEURON_B):
            mlp.gate_proj.weight[n] = GAIN * torch.randn(d, generator=gen) / d**0.5
            mlp.up_proj.weight[n] = GAIN * torch.randn(d, generator=gen) / d**0.5


def null_k(layer: FinalLayer) -> int:
    """Size of W_U's exact null space after the plant, counted as the paper counts it: the planted
    direction, plus on LayerNorm models the all-ones direction the processed W_U annihilates.
    """
    return 2 if layer.norm == "LN" else 1


@dataclass
class Planted:
    arch: str
    layer: FinalLayer
    cache: ForwardCache
    ws: WeightStats
    sw: NeuronEffects

    @property
    def ln_share(self) -> torch.Tensor:
        return 1 - self.sw.DE / self.sw.TE


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def planted(request, tmp_path_factory) -> Planted:
    arch = request.param
    model = load_tiny(arch, tmp_path_factory.mktemp(f"planted_{arch}"), edit=plant)
    layer = final_layer(model)
    cache = run_forward(model, layer, random_tokens(8, 32, seed=4), progress=False)
    return Planted(arch, layer, cache, weight_stats(layer, null_k(layer)), sweep(layer, cache, progress=False))


def test_plant_survives_processing(planted: Planted):
    assert planted.layer.norm == {"gpt2": "LN", "llama": "RMS"}[planted.arch]
    sv, k = planted.ws.singular_values, null_k(planted.layer)
    assert sv[-k:].max() < 1e-5 * sv[0], f"W_U has no exact {k}-dimensional null space: {sv[-k - 1 :]}"
    assert sv[-k - 1] > 0.1 * sv[0], "the plant made W_U more degenerate than intended"
    w_A = planted.layer.W_out[NEURON_A]
    assert w_A.norm() == pytest.approx(C_A, rel=1e-4)
    assert (w_A @ planted.layer.W_U).abs().max() < 1e-4 * C_A, "neuron A's write reaches the logits"
    acts = planted.cache.acts[:, [NEURON_A, NEURON_B]]
    assert (acts.std(0) > 0.3).all(), f"planted activations barely vary: {acts.std(0)}"


def test_planted_entropy_neuron_is_in_the_null_space(planted: Planted):
    rho = planted.ws.rho
    assert rho[NEURON_A] > 0.999
    assert int(rho.argmax()) == NEURON_A
    assert rho[NEURON_B] < 0.1
    lv = planted.ws.logit_var  # Eq. 3: A's projection onto the vocabulary is flat, B's is peaked
    assert lv[NEURON_A] < 1e-6 * lv.median()
    assert lv[NEURON_B] > lv.median()


def test_planted_entropy_neuron_acts_through_the_norm(planted: Planted):
    te, de, share = planted.sw.TE, planted.sw.DE, planted.ln_share
    median_te = te.median()
    assert te[NEURON_A] > 0.02 and te[NEURON_A] > 3 * median_te, f"TE of A {te[NEURON_A]:.3g} is negligible"
    assert de[NEURON_A] < 1e-4 * te[NEURON_A]
    assert share[NEURON_A] > 0.9
    assert planted.sw.abs_delta_entropy[NEURON_A] > 3 * planted.sw.abs_delta_entropy.median()
    assert te[NEURON_B] > 3 * median_te, "B must be a strong neuron for the contrast to mean anything"
    assert share[NEURON_B] < 0.5
    # Per token: freezing the scale removes all of A's effect.
    eff = per_token_effects(planted.layer, planted.cache, [NEURON_A])
    assert (eff.DE.loss[:, 0] - eff.loss).abs().max() < 1e-5
    assert (eff.TE.loss[:, 0] - eff.loss).abs().max() > 0.1


def test_entropy_neuron_rule_flags_only_the_planted_neuron(planted: Planted):
    import pandas as pd

    from confidence_neurons.analysis.selection import EntropyNeuronRule, select_entropy_neurons

    table = pd.DataFrame(
        {"rho": planted.ws.rho.numpy(), "ln_share": planted.ln_share.numpy(), "TE": planted.sw.TE.numpy()}
    )
    flagged = select_entropy_neurons(table, EntropyNeuronRule())
    assert bool(flagged[NEURON_A]) and not bool(flagged[NEURON_B])
    assert flagged.index[flagged].tolist() == [NEURON_A]


@pytest.mark.parametrize("planted", ["gpt2"], indirect=True)
def test_ln_null_space_holds_the_all_ones_direction_and_the_planted_one(planted: Planted):
    """The paper's k counts every bottom singular vector of the processed W_U: on LayerNorm models the
    all-ones direction is one of them (value 0), so the planted neuron needs k = 2 to be found.
    """
    from confidence_neurons.analysis.weights import residual_singular_vectors

    layer = planted.layer
    assert layer.norm == "LN"
    V, S = residual_singular_vectors(layer)
    assert V.shape == (layer.d_model, layer.d_model) and S[-2:].max() < 1e-5 * S[0]
    ones = torch.full((layer.d_model,), layer.d_model**-0.5, dtype=torch.float64)
    assert (V[:, -2:].T @ ones).norm() > 0.999, "the all-ones direction lies in the bottom two"
    assert weight_stats(layer, 2).rho[NEURON_A] > 0.999
    assert weight_stats(layer, 1).singular_values.shape == (layer.d_model,)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rho_equals_a_plain_full_svd(arch, tmp_path):
    """rho(k) = |V_0^T w_out| / |w_out| with V_0 the bottom k left singular vectors of the processed
    W_U from a plain full SVD (Sec. 3.4), on a LayerNorm and an RMSNorm model.
    """
    layer = final_layer(load_tiny(arch, tmp_path))
    W_U, W_out = layer.W_U.double(), layer.W_out.double()
    U, S, _ = torch.linalg.svd(W_U, full_matrices=True)  # U: (d_model, d_model), S descending
    for k in (1, 2, 3, layer.d_model - 1):
        V0 = U[:, layer.d_model - k :]
        expected = (W_out @ V0).norm(dim=-1) / W_out.norm(dim=-1)
        torch.testing.assert_close(weight_stats(layer, k).rho.double(), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(weight_stats(layer, 1).singular_values.double(), S, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_rho_without_the_svd_equals_a_plain_full_svd(arch, tmp_path):
    """``null_space_rho`` (the Gram matrix's bottom eigenspace, Fig. 11's rho) against the same plain
    full SVD, for every k, on every architecture (LayerNorm's exactly-null all-ones direction included).
    """
    from confidence_neurons.analysis.weights import null_space_rho

    layer = final_layer(load_tiny(arch, tmp_path))
    W_U, W_out = layer.W_U.double(), layer.W_out.double()
    U = torch.linalg.svd(W_U, full_matrices=True)[0]
    for k in (1, 2, 3, layer.d_model - 1):
        expected = (W_out @ U[:, layer.d_model - k :]).norm(dim=-1) / W_out.norm(dim=-1)
        torch.testing.assert_close(null_space_rho(layer, k).double(), expected, atol=1e-5, rtol=0, msg=f"{arch} k={k}")


def test_default_k_is_the_papers():
    from confidence_neurons.analysis.weights import default_k

    assert default_k(768, "gpt2") == 12 and default_k(4096, "meta-llama/Llama-2-7b-hf") == 40
    assert default_k(4096) == 40 and default_k(576) == 5 and default_k(2048) == 20 and default_k(32) == 1
