"""Every supported architecture loads through the bridge and is read correctly by final_layer.

Tiny random models of each family (tests/tiny.py) are saved with save_pretrained and loaded
with load_model; a second, untouched copy of the same checkpoint loaded by transformers is the
reference (the bridge processes the weights of the copy it wraps).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel, load_model
from tests.tiny import ARCHITECTURES, GATED, NORM_KIND, make_tiny_dir, random_tokens

EXPECTED_CLASS = {
    "gpt2": "GPT2LMHeadModel",
    "neox": "GPTNeoXForCausalLM",
    "llama": "LlamaForCausalLM",
    "gemma": "GemmaForCausalLM",
    "phi": "PhiForCausalLM",
}


@dataclass
class Tiny:
    arch: str
    model: LoadedModel
    layer: FinalLayer
    hf: torch.nn.Module  # an unprocessed copy of the same checkpoint
    tokens: torch.Tensor


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request, tmp_path_factory) -> Tiny:
    from transformers import AutoModelForCausalLM

    arch = request.param
    directory = make_tiny_dir(arch, tmp_path_factory.mktemp(arch))
    model = load_model(str(directory))
    hf = AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    return Tiny(arch, model, final_layer(model), hf, random_tokens(3, 12, seed=1))


def hf_parts(hf: torch.nn.Module, arch: str) -> dict:
    """The HF modules the final-layer analysis reads: last MLP, its down projection, final norm, lm_head."""
    if arch == "gpt2":
        mlp = hf.transformer.h[-1].mlp
        return dict(mlp=mlp, down=mlp.c_proj, norm=hf.transformer.ln_f, eps=hf.config.layer_norm_epsilon)
    if arch == "neox":
        mlp = hf.gpt_neox.layers[-1].mlp
        return dict(mlp=mlp, down=mlp.dense_4h_to_h, norm=hf.gpt_neox.final_layer_norm, eps=hf.config.layer_norm_eps)
    if arch == "phi":
        mlp = hf.model.layers[-1].mlp
        return dict(mlp=mlp, down=mlp.fc2, norm=hf.model.final_layernorm, eps=hf.config.layer_norm_eps)
    mlp = hf.model.layers[-1].mlp
    return dict(mlp=mlp, down=mlp.down_proj, norm=hf.model.norm, eps=hf.config.rms_norm_eps)


def down_rows(arch: str, down: torch.nn.Module) -> torch.Tensor:
    """(d_mlp, d_model): row i is what neuron i writes (GPT-2's Conv1D stores the transpose of Linear)."""
    return down.weight.detach() if arch == "gpt2" else down.weight.detach().T


def capture_inputs(module: torch.nn.Module, run) -> torch.Tensor:
    seen = {}
    handle = module.register_forward_pre_hook(lambda mod, args: seen.__setitem__("x", args[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return seen["x"]


@torch.no_grad()
def test_bridge_logits_match_hf_forward(tiny: Tiny):
    assert tiny.model.source["architecture"] == EXPECTED_CLASS[tiny.arch]
    ours = tiny.model.logits(tiny.tokens).log_softmax(-1)
    ref = tiny.hf(tiny.tokens).logits.log_softmax(-1)
    assert ours.shape == ref.shape == (*tiny.tokens.shape, tiny.hf.config.vocab_size)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_final_layer_norm_kind_and_shapes(tiny: Tiny):
    cfg, layer = tiny.hf.config, tiny.layer
    d_mlp = cfg.n_inner if tiny.arch == "gpt2" else cfg.intermediate_size
    assert layer.norm == NORM_KIND[tiny.arch]
    assert layer.layer == tiny.model.n_layers - 1 == cfg.num_hidden_layers - 1
    assert layer.W_out.shape == (d_mlp, cfg.hidden_size)
    assert layer.W_U.shape == (cfg.hidden_size, cfg.vocab_size)
    assert layer.b_U.shape == (cfg.vocab_size,)
    assert layer.eps == pytest.approx(hf_parts(tiny.hf, tiny.arch)["eps"])
    assert layer.softcap is None
    hooks = tiny.model.bridge.hook_dict
    assert {layer.act_hook, layer.resid_hook, layer.scale_hook} <= set(hooks)


@torch.no_grad()
def test_final_layer_weights_follow_appendix_c(tiny: Tiny):
    """W_out and W_U are the HF weights after Appendix C: the final norm's weight folded into W_U
    (Gemma's as 1 + w) and W_U centred over the vocabulary; on LayerNorm models also W_out centred
    over d_model and W_U's reading side centred; RMSNorm models are not centred over d_model.
    """
    parts, layer = hf_parts(tiny.hf, tiny.arch), tiny.layer
    rows = down_rows(tiny.arch, parts["down"])
    gamma = parts["norm"].weight.detach() + (1.0 if tiny.arch == "gemma" else 0.0)
    lm_head = tiny.hf.get_output_embeddings()
    W_U = gamma[:, None] * lm_head.weight.detach().T  # (d_model, d_vocab)
    W_U = W_U - W_U.mean(1, keepdim=True)
    assert layer.W_U.mean(1).abs().max() < 1e-5
    b_U = torch.zeros(layer.d_vocab)
    if getattr(parts["norm"], "bias", None) is not None:  # LayerNorm's beta folds into b_U
        b_U = b_U + parts["norm"].bias.detach() @ lm_head.weight.detach().T
    if getattr(lm_head, "bias", None) is not None:
        b_U = b_U + lm_head.bias.detach()
    torch.testing.assert_close(layer.b_U - layer.b_U.mean(), b_U - b_U.mean(), atol=1e-5, rtol=1e-5)
    if layer.norm == "LN":
        torch.testing.assert_close(layer.W_out, rows - rows.mean(-1, keepdim=True), atol=1e-5, rtol=1e-5)
        assert layer.W_out.mean(-1).abs().max() < 1e-5
        assert layer.W_U.mean(0).abs().max() < 1e-5
        torch.testing.assert_close(layer.W_U, W_U - W_U.mean(0, keepdim=True), atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(layer.W_out, rows, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(layer.W_U, W_U, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_closed_form_logits_of_final_residual_match_hf(tiny: Tiny):
    """FinalLayer.logits(x) on the residual HF feeds its final norm reproduces HF's log-probs."""
    norm = hf_parts(tiny.hf, tiny.arch)["norm"]
    out = {}
    x = capture_inputs(norm, lambda: out.setdefault("logits", tiny.hf(tiny.tokens).logits))
    ours = tiny.layer.logits(x.float()).log_softmax(-1)
    torch.testing.assert_close(ours, out["logits"].log_softmax(-1), atol=1e-4, rtol=0)


@torch.no_grad()
def test_neuron_activation_is_down_projection_input(tiny: Tiny):
    """blocks.{L}.mlp.hook_post is the input of the down projection: act(gate) * up for gated MLPs."""
    parts = hf_parts(tiny.hf, tiny.arch)
    mlp, down = parts["mlp"], parts["down"]
    x_mlp = capture_inputs(mlp, lambda: tiny.hf(tiny.tokens))
    x_down = capture_inputs(down, lambda: tiny.hf(tiny.tokens))
    _, cache = tiny.model.bridge.run_with_cache(tiny.tokens, names_filter=lambda n: n == tiny.layer.act_hook)
    acts = cache[tiny.layer.act_hook]
    assert acts.shape == (*tiny.tokens.shape, tiny.layer.d_mlp)
    torch.testing.assert_close(acts, x_down, atol=1e-5, rtol=1e-5)

    if tiny.arch in GATED:
        expected = mlp.act_fn(F.linear(x_mlp, mlp.gate_proj.weight)) * F.linear(x_mlp, mlp.up_proj.weight)
    elif tiny.arch == "gpt2":
        expected = mlp.act(x_mlp @ mlp.c_fc.weight + mlp.c_fc.bias)
    elif tiny.arch == "neox":
        expected = mlp.act(mlp.dense_h_to_4h(x_mlp))
    else:
        expected = mlp.activation_fn(mlp.fc1(x_mlp))
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=1e-5)
    assert acts.std() > 0.1, "activations are too small for the tests to mean anything"
