"""Gemma 2 and 3 normalise the MLP output before the residual: the closed form carries that norm
through the ablation exactly (and DE freezes only the final norm's scale).
"""

from __future__ import annotations

import pytest

from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.analysis.reference import brute_force_ablation
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import load_model
from tests.tiny import load_tiny, random_tokens

TOL = 1e-4


@pytest.mark.parametrize(("version", "softcap"), [(2, 30.0), (2, None), (3, None)])
def test_closed_form_through_the_post_mlp_norm(version, softcap, tmp_path):
    model = load_tiny(f"gemma{version}", tmp_path / "m", final_logit_softcapping=softcap)
    layer = final_layer(model)
    assert layer.post_mlp_norm is not None and layer.softcap == softcap
    tokens = random_tokens(3, 20)
    cache = run_forward(model, layer, tokens, progress=False)
    mean = cache.acts.mean(0)
    neurons = [int(i) for i in cache.acts.std(0).topk(3).indices]
    for mode in ("mean", "clip"):
        closed = per_token_effects(layer, cache, neurons, mode=mode, mean_act=mean)
        for j, neuron in enumerate(neurons):
            for variant, freeze in (("TE", False), ("DE", True)):
                brute = brute_force_ablation(
                    model, layer, tokens, neuron, float(mean[neuron]), mode=mode, freeze_scale=freeze
                )
                assert (brute["loss"] - closed.variant(variant).loss[:, j]).abs().max() < TOL
                assert (brute["entropy"] - closed.variant(variant).entropy[:, j]).abs().max() < TOL
        assert (closed.TE.loss - closed.loss[:, None]).abs().max() > 0.05, "the ablations must do something"


def test_without_the_post_norm_term_the_closed_form_would_be_wrong(tmp_path):
    """The post-MLP norm matters: treating the ablation as x + delta w_out misses the brute force."""
    from dataclasses import replace

    model = load_tiny("gemma2", tmp_path / "m")
    layer = final_layer(model)
    tokens = random_tokens(2, 16)
    cache = run_forward(model, layer, tokens, progress=False)
    neuron = int(cache.acts.std(0).argmax())
    brute = brute_force_ablation(model, layer, tokens, neuron, float(cache.acts.mean(0)[neuron]))
    naive = per_token_effects(replace(layer, post_mlp_norm=None), replace(cache, mlp_out=None), [neuron])
    assert (brute["loss"] - naive.TE.loss[:, 0]).abs().max() > 10 * TOL


def test_scan_of_a_soft_capped_model_skips_only_the_frequency_part(tmp_path):
    import numpy as np

    from confidence_neurons.commands.scan import write
    from confidence_neurons.rundir import RunDir
    from confidence_neurons.studies.scan import ScanConfig, scan

    model = load_tiny("gemma2", tmp_path / "m", final_logit_softcapping=30.0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(f"w{i % 90}" for i in range(3000)))
    result = scan(model, ScanConfig(dataset=str(corpus), n_seqs=2, seq_len=16), progress=False)
    t = result.neurons
    assert np.isfinite(t["TE"]).all() and np.isfinite(t["DE"]).all()
    assert t["DE_freq"].isna().all() and not t["is_token_frequency_neuron"].any()
    assert result.settings["token_frequency_analysis"] is False and result.settings["post_mlp_norm"] is True
    rd = RunDir.open(tmp_path / "run", kind="scan", fingerprint=result.config.fingerprint())
    write(rd, result)
    assert rd.report_path.is_file() and (tmp_path / "run" / "figures" / "fig3b_freq_share_vs_dkl.png").is_file()


def test_a_gemma3_config_without_architectures_loads(tmp_path):
    """GGUF configs of Gemma 3 text models carry no architectures list (model_type gemma3_text);
    the loaded class names the architecture for TransformerBridge.
    """
    import json

    load_tiny("gemma3", tmp_path / "m")
    config_file = tmp_path / "m" / "config.json"
    config = json.loads(config_file.read_text())
    assert config.pop("architectures") and config["model_type"] == "gemma3_text"
    config_file.write_text(json.dumps(config))
    model = load_model(str(tmp_path / "m"))
    layer = final_layer(model)
    assert model.source["architecture"] == "Gemma3ForCausalLM" and layer.post_mlp_norm is not None
