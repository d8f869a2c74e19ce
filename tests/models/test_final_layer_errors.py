"""final_layer explains what a model lacks instead of failing somewhere deep."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import ModelLoadError


def _fake(hooks: set[str], normalization_type: str | None = "LN"):
    cfg = SimpleNamespace(n_layers=2, normalization_type=normalization_type)
    return SimpleNamespace(bridge=SimpleNamespace(hook_dict=dict.fromkeys(hooks), cfg=cfg), cfg=cfg, name="fake")


FULL = {"blocks.1.mlp.hook_post", "ln_final.hook_in", "ln_final.hook_scale"}


def test_no_mlp_in_the_last_block():
    with pytest.raises(ModelLoadError, match="no MLP in its last block"):
        final_layer(_fake(FULL - {"blocks.1.mlp.hook_post"}))


@pytest.mark.parametrize("model", [_fake(FULL - {"ln_final.hook_scale"}), _fake(FULL, normalization_type=None)])
def test_no_final_norm(model):
    with pytest.raises(ModelLoadError, match="no final LayerNorm/RMSNorm"):
        final_layer(model)
