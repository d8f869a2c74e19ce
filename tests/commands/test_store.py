"""The activation store (issue 9) and the token filter (issue 10, item 3).

A scan keeps its forward pass memory-mapped in the run directory; repeating the scan and
``inspect --scan`` read it back without calling the model. The paper's token filter decides which
predictions the mean and every average count.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import confidence_neurons.commands.checks as checks
from confidence_neurons.analysis.forward import analysed_tokens, run_forward
from confidence_neurons.cli import main
from confidence_neurons.commands import inspect as inspect_cmd
from confidence_neurons.commands import scan as scan_cmd
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import load_model
from confidence_neurons.rundir import ActivationStore
from confidence_neurons.studies.scan import ScanConfig
from tests.tiny import BOS_ID, EOS_ID, scan_argv


def _forbid_forward(model):
    def refuse(*args, **kwargs):
        raise AssertionError("the model's forward was called")

    model.bridge.run_with_cache = refuse
    model.bridge.run_with_hooks = refuse
    model.bridge.forward = refuse
    return model


@pytest.fixture(scope="module")
def stored_scan(tiny_model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("store") / "scan"
    config = ScanConfig(model=str(tiny_model), dataset=str(corpus), n_seqs=3, seq_len=16)
    first = scan_cmd.run(config, out, progress=False)
    return config, out, first


def test_the_store_holds_the_forward_pass(stored_scan):
    config, out, first = stored_scan
    meta = json.loads((out / "activations" / "store.json").read_text())
    assert meta["complete"] and meta["done"] == meta["n_batches"]
    acts = np.load(out / "activations" / "acts.npy")
    assert acts.shape == (3 * 15, first.settings["d_mlp"])
    assert first.settings["forward_from_store"] is False


def test_a_repeated_scan_does_not_run_the_model(stored_scan, tiny_model, tmp_path):
    config, out, first = stored_scan
    model = _forbid_forward(load_model(str(tiny_model)))
    # the same run directory (as after an interruption) ...
    (out / "config.json").write_text((out / "config.json").read_text().replace('"complete"', '"interrupted"'))
    again = scan_cmd.run(config, out, model=model, progress=False)
    assert again.settings["forward_from_store"] is True
    pd.testing.assert_frame_equal(again.neurons, first.neurons)


def test_inspect_with_scan_reads_the_stored_pass(stored_scan, tiny_model, tmp_path):
    config, out, first = stored_scan
    model = _forbid_forward(load_model(str(tiny_model)))
    icfg = inspect_cmd.InspectConfig(model=str(tiny_model), neuron="1.3", scan_dir=str(out))
    result = inspect_cmd.run(icfg, tmp_path / "inspect", model=model, progress=False)
    assert result.settings["forward_from_store"] is True
    t = result.activity.tokens
    assert len(t) == 3 * 15 and t["analysed"].sum() == first.settings["n_tokens_analysed"]
    # the ablation value is the mean over every cached position (the authors'), as in the scan
    acts = np.load(out / "activations" / "acts.npy")[:, 3]
    assert result.activity.mean_activation == pytest.approx(float(acts.mean()), rel=1e-6)
    assert first.neurons.loc[3, "mean_activation"] == pytest.approx(result.activity.mean_activation, rel=1e-6)


def test_inspect_refuses_a_scan_of_another_model(stored_scan, tmp_path, capsys, monkeypatch):
    _, out, _ = stored_scan
    monkeypatch.setattr(checks, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["inspect", "--neuron", "1.3", "--scan", str(tmp_path), "--out", str(tmp_path / "i"), "--quiet"]) == 2
    assert "holds no finished scan" in capsys.readouterr().err


def test_a_stopped_forward_resumes_at_its_first_unwritten_batch(tiny_model, tmp_path):
    model = load_model(str(tiny_model))
    layer = final_layer(model)
    tokens = torch.randint(3, 96, (5, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = BOS_ID
    store = ActivationStore(tmp_path / "act")
    calls = []
    real = model.bridge.run_with_hooks

    def flaky(batch, **kw):
        calls.append(batch.shape[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(batch, **kw)

    model.bridge.run_with_hooks = flaky
    with pytest.raises(KeyboardInterrupt):
        run_forward(model, layer, tokens, batch_size=2, progress=False, store=store)
    assert json.loads((tmp_path / "act" / "store.json").read_text())["done"] == 1
    model.bridge.run_with_hooks = real
    calls.clear()
    model.bridge.run_with_hooks = lambda batch, **kw: (calls.append(batch.shape[0]), real(batch, **kw))[1]
    resumed = run_forward(model, layer, tokens, batch_size=2, progress=False, store=store)
    assert calls == [2, 1]  # batches 2 and 3 only
    model.bridge.run_with_hooks = real
    fresh = run_forward(model, layer, tokens, batch_size=2, progress=False)
    torch.testing.assert_close(resumed.acts, fresh.acts)
    torch.testing.assert_close(resumed.resid, fresh.resid)


def test_the_toolkit_filter_leaves_out_early_positions_and_specials():
    tokens = torch.tensor([[BOS_ID, 5, 6, 7, 8, 9, 10, 11], [BOS_ID, 5, 6, 7, 8, 50, 9, 10]])
    tokens[1, 4] = EOS_ID
    keep = analysed_tokens(tokens, "toolkit", special={BOS_ID, EOS_ID, 50}).reshape(2, 7)
    assert keep[0].tolist() == [False, False, False, True, True, True, True]
    # position 4 is EOS, 5 follows it (and is the newline-like 50), 6 follows 50
    assert keep[1].tolist() == [False, False, False, True, False, False, False]
    assert analysed_tokens(tokens, "all", special={BOS_ID}).all()


def test_scan_averages_over_the_filtered_tokens(stored_scan, tiny_model, corpus):
    config, out, first = stored_scan
    tm = first.token_metrics
    assert (tm["pos"] >= 3).all() and len(tm) == first.settings["n_tokens_analysed"] < 3 * 15
    assert first.settings["token_filter"] == "authors" and first.settings["ablation_mean"] == "all"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["token_filter"] == "authors" and cfg["settings"]["token_filter"] == "authors"
    acts = np.load(out / "activations" / "acts.npy")
    # the authors' ablation value: the mean over every cached position, BOS included
    np.testing.assert_allclose(first.neurons["mean_activation"], acts.mean(0), rtol=1e-5, atol=1e-6)
    old = scan_cmd.scan(
        load_model(str(tiny_model)), replace(config, token_filter="toolkit", ablation_mean="analysed"), progress=False
    )
    rows = old.token_metrics["seq"].to_numpy() * 15 + old.token_metrics["pos"].to_numpy()
    np.testing.assert_allclose(old.neurons["mean_activation"], acts[rows].mean(0), rtol=1e-5, atol=1e-6)
    every = scan_cmd.scan(load_model(str(tiny_model)), replace(config, token_filter="all"), progress=False)
    assert every.settings["n_tokens_analysed"] == 3 * 15
    np.testing.assert_allclose(every.neurons["mean_activation"], acts.mean(0), rtol=1e-5, atol=1e-6)


def test_out_of_memory_in_the_forward_is_one_sentence_naming_the_flag(
    tiny_model, corpus, tmp_path, capsys, monkeypatch
):
    import confidence_neurons.models.loading as loading

    real = loading.boot

    def boot_then_break(*args, **kwargs):
        model = real(*args, **kwargs)

        def oom(*a, **k):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        model.bridge.run_with_hooks = oom
        return model

    monkeypatch.setattr(loading, "boot", boot_then_break)
    argv = scan_argv(tiny_model, corpus)
    assert main([*argv, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory in the forward pass" in err and "--batch-size" in err, err
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    assert record["status"] == "failed" and "out of memory" in record["error"]
