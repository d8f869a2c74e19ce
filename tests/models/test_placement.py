"""Device, dtype and device map (issue 9): resolved against this machine, refused in one sentence,
and giving the float32 CPU numbers where they should.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.cli import main
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import boot, load_model
from confidence_neurons.models.placement import parse_device_map, parse_max_memory, resolve_placement
from confidence_neurons.studies.scan import ScanConfig, scan
from tests.analysis.test_planted import NEURON_A, plant
from tests.tiny import build_tiny_hf, random_tokens, save_tiny, scan_argv


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (no ties in continuous effects)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


NO_CUDA = not torch.cuda.is_available()
NO_MPS = not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def test_auto_is_float32_on_the_cpu_without_a_gpu():
    if not NO_CUDA:
        pytest.skip("this machine has a CUDA GPU, so auto is cuda here")
    p = resolve_placement("auto", "auto")
    assert (p.device, p.dtype) == ("cpu", torch.float32)
    assert p.describe() == {"device": "cpu", "dtype": "float32"}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"device": "tpu"}, "is not a device: use auto, cpu, cuda, cuda:N or mps"),
        ({"dtype": "float64"}, "--dtype 'float64' is not one of auto, float32, bfloat16, float16"),
        ({"device_map": "{bad"}, "--device-map is not valid JSON"),
        ({"device_map": "everywhere"}, "is not one of auto, balanced"),
        ({"device_map": "auto", "max_memory": "0:70GiB"}, "is not DEVICE=SIZE"),
        ({"max_memory": "cpu=1GiB"}, "--max-memory only applies with --device-map"),
    ],
)
def test_bad_placements_are_one_sentence(kwargs, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("{", r"\{")):
        resolve_placement(**kwargs)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU: asking for one is not an error here")
def test_cuda_where_there_is_none():
    with pytest.raises(ConfigError, match="has no CUDA GPU that torch can use"):
        resolve_placement("cuda")


@pytest.mark.skipif(not NO_MPS, reason="this machine has an Apple GPU: asking for it is not an error here")
def test_mps_where_there_is_none():
    with pytest.raises(ConfigError, match="no Apple GPU"):
        resolve_placement("mps")


def test_maps_and_budgets_parse():
    assert parse_device_map('{"": "cpu"}') == {"": "cpu"}
    assert parse_device_map("sequential") == "sequential"
    assert parse_max_memory("cpu=2GiB") == {"cpu": "2GiB"}


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU: --device cuda is valid here")
@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--device", "cuda"], "--device cuda was asked for but this machine has no CUDA GPU"),
        (["--device-map", "{oops"], "--device-map is not valid JSON"),
        (["--max-memory", "cpu=1GiB"], "--max-memory only applies with --device-map"),
    ],
)
def test_cli_refuses_placements_before_loading(tiny_model, corpus, tmp_path, capsys, monkeypatch, extra, words):
    import confidence_neurons.commands.checks as checks

    monkeypatch.setattr(checks, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "run"
    argv = scan_argv(tiny_model, corpus)
    assert main([*argv, "--out", str(out), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


def test_a_map_that_offloads_is_refused_in_one_sentence(tiny_model):
    # CPU + disk: TransformerLens cannot apply App. C processing to offloaded modules.
    from confidence_neurons.models.loading import ModelLoadError

    dmap = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu", "transformer.h": "disk",
            "transformer.ln_f": "cpu", "lm_head": "cpu"}  # fmt: skip
    with pytest.raises((ModelLoadError, ConfigError)) as info:
        load_model(str(tiny_model), device_map=dmap)
    assert len(str(info.value).splitlines()) == 1


def test_a_cpu_device_map_scans_to_the_same_numbers(tiny_model, corpus):
    config = ScanConfig(model=str(tiny_model), dataset=str(corpus), n_seqs=2, seq_len=16)
    plain = scan(load_model(str(tiny_model), device="cpu"), config, progress=False)
    mapped_model = load_model(str(tiny_model), device_map="auto")
    assert mapped_model.placement.device_map == "auto"
    mapped = scan(mapped_model, config, progress=False)
    for col in ("TE", "DE", "DE_freq", "rho", "abs_delta_entropy"):
        np.testing.assert_allclose(mapped.neurons[col], plain.neurons[col], rtol=1e-5, atol=1e-7, err_msg=col)
    assert mapped.settings["placement"]["device_map"] == "auto"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bfloat16_scan_ranks_agree_with_float32_and_find_the_planted_neuron(arch, tmp_path):
    hf = build_tiny_hf(arch)
    plant(hf)
    path = save_tiny(hf, tmp_path / arch)
    tokens = random_tokens(6, 24, seed=1)
    te = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model(str(path), dtype=dtype)
        assert next(model.bridge.original_model.parameters()).dtype == getattr(torch, dtype)
        layer = final_layer(model)
        cache = run_forward(model, layer, tokens, progress=False)
        effects = sweep(layer, cache, progress=False)
        assert torch.isfinite(effects.TE).all() and torch.isfinite(effects.DE).all()
        te[dtype] = effects
    rho = spearman(te["float32"].TE.numpy(), te["bfloat16"].TE.numpy())
    assert rho >= 0.95, rho
    for dtype, e in te.items():  # the planted entropy neuron acts only through the scale, in both
        ratio = 1 - e.DE[NEURON_A] / e.TE[NEURON_A]
        assert ratio > 0.9, (dtype, float(ratio))
        assert int(e.TE.argmax()) == NEURON_A or e.TE[NEURON_A] >= e.TE.quantile(0.9), dtype


def test_boot_accepts_a_device(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = boot(hf, AutoTokenizer.from_pretrained(tiny_model), str(tiny_model), device="cpu")
    assert str(model.cfg.device) == "cpu"


def test_a_map_for_an_architecture_accelerate_cannot_split(tiny_model, monkeypatch):
    # transformers refuses device_map for classes without _no_split_modules (the current release
    # splits them anyway, so the refusal is replayed with the message older releases give)
    from transformers import AutoModelForCausalLM

    from confidence_neurons.models.loading import ModelLoadError

    def refuse(*args, **kwargs):
        raise ValueError(
            "GPT2LMHeadModel does not support `device_map='auto'`. To implement support, the model class "
            "needs to implement the `_no_split_modules` attribute."
        )

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(ModelLoadError, match="cannot be split over devices by Accelerate") as info:
        load_model(str(tiny_model), device_map="auto")
    assert len(str(info.value).splitlines()) == 1
