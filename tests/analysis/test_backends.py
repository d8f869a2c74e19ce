"""Every sweep backend ("c", "torch", "compiled") on device="cpu" equals real forward passes.

Layers, each against a slower twin:
  * the kernel's statistics from every backend against float64 logits built from the definition
    (soft-capping, logits far from the shift, the tilt along w at every order it takes);
  * per-token TE, DE and DE_freq from every backend against ``brute_force_ablation`` (hooked
    forwards, Eq. 7 applied to the real logits) on the five tiny architectures, to 1e-4;
  * the whole sweep from the torch and compiled backends against the C kernel's;
  * the sweep reads the cache a token chunk at a time, and an out-of-memory error becomes one
    sentence naming the flags to lower; a failed compilation falls back to eager and says so.
The compiled function is cached by the kernel module, so its compilations are shared by all tests.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest
import torch

from confidence_neurons.analysis import effects, kernel
from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import (
    CPU_TILE_ELEMENTS,
    EXACT_ORDER,
    FAR_ORDER,
    c_kernel_available,
    describe_backend,
    resolve_backend,
    softmax_stats,
    tile_elements,
)
from confidence_neurons.analysis.reference import brute_force_ablation
from confidence_neurons.analysis.sweep import effect_fields, sweep
from confidence_neurons.errors import ConfigError, ToolkitError
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from tests.analysis.test_closed_form import _exact_stats, _kernel_problem
from tests.analysis.test_frequency_mediation import _tilt_problem, zipf_freq
from tests.tiny import ARCHITECTURES, load_tiny, random_tokens

TOL = 1e-4
BACKENDS = ["c", "torch", "compiled"]


def _need(backend: str) -> None:
    if backend == "c" and not c_kernel_available():
        pytest.skip("no working C compiler (gcc/cc or $CC): the fused kernel cannot be built here")


# --- the kernel against the definition -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_matches_definition(backend):
    """Loss, entropy and top-1 against float64 logits, with and without soft-capping, near and far
    (> 60 nats) from the shift; an empty ablation changes no top-1.
    """
    _need(backend)
    for softcap in (None, 30.0):
        for far in (False, True):
            problem = _kernel_problem(T=7, K=5, far=far, seed=3)
            loss, entropy, changed, clear = _exact_stats(*problem, softcap)
            st = softmax_stats(*problem, softcap=softcap, backend=backend)
            msg = lambda m: f"{backend} softcap={softcap} far={far}: {m}"  # noqa: E731
            torch.testing.assert_close(st.loss.double(), loss, atol=TOL, rtol=1e-5, msg=msg)
            torch.testing.assert_close(st.entropy.double(), entropy, atol=TOL, rtol=1e-5, msg=msg)
            torch.testing.assert_close(st.top1_changed[clear], changed[clear], msg=msg)
            assert changed[clear].any()
        L, U, bias, A, B, target = _kernel_problem(T=7, K=5, seed=4)
        empty = softmax_stats(
            L, U, bias, torch.ones_like(A), torch.zeros_like(B), target, softcap=softcap, backend=backend
        )
        assert not empty.top1_changed.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_tilt_matches_definition(backend):
    """logsumexp(y + G w) - logsumexp(y) for |G| max|w| from 0 to 40 (series, exact, separate pass)."""
    _need(backend)
    problem, w, G, _ = _tilt_problem(T=8, K=6, V=1501, seed=1)
    L, U, bias, A, B, _ = problem
    z = A.double()[:, :, None] * L.double()[:, None] + B.double()[:, :, None] * U.double()[None] + bias.double()
    exact = (z + G.double()[:, :, None] * w.double()).logsumexp(-1) - z.logsumexp(-1)
    st = softmax_stats(*problem, w=w, G=G, backend=backend)
    err = (st.tilt.double() - exact).abs().max()
    assert err < 2e-5, f"{backend}: max tilt error {err:.3g}"
    assert (st.order == FAR_ORDER).any()
    if backend != "c":
        assert set(st.order.unique().tolist()) == {EXACT_ORDER, FAR_ORDER}


def test_torch_paths_are_tiled(monkeypatch):
    """A tile budget far below the problem splits it into many row groups, with the same numbers."""
    problem, w, G, extra = _tilt_problem(T=9, K=4, V=700, post=True, seed=2)
    whole = softmax_stats(*problem, w=w, G=G, backend="torch", **extra)
    shapes = []
    run = kernel.fused_tile

    def spy(*args):
        shapes.append((args[0].shape[0], args[1].shape[0], args[0].shape[1]))
        return run(*args)

    monkeypatch.setattr(kernel, "tile_elements", lambda device=None: 2 * 4 * 700)
    monkeypatch.setattr(kernel, "fused_tile", spy)
    tiled = softmax_stats(*problem, w=w, G=G, backend="torch", **extra)
    assert len(shapes) >= 5 and all(t * k * v <= 2 * 4 * 700 for t, k, v in shapes[:5]), shapes
    for name in ("loss", "entropy", "tilt", "y_target"):
        torch.testing.assert_close(getattr(tiled, name), getattr(whole, name), atol=1e-6, rtol=1e-6)


def test_tile_size_follows_free_memory(monkeypatch):
    assert tile_elements("cpu") == CPU_TILE_ELEMENTS
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (64 * 2**30, 80 * 2**30))
    n = tile_elements("cuda")
    # EAGER_INTERMEDIATES float32 buffers of one tile fit in TILE_MEMORY_FRACTION of the free memory
    assert n * 4 * kernel.EAGER_INTERMEDIATES <= kernel.TILE_MEMORY_FRACTION * 64 * 2**30 < (n + 1) * 4 * 8 * 1.01


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("CONFIDENCE_NEURONS_BACKEND", raising=False)  # what "auto" means by itself
    assert resolve_backend("auto", "cpu") == ("c" if c_kernel_available() else "torch")
    assert resolve_backend("auto", "cuda") == "compiled"
    assert resolve_backend("auto", "mps") == "torch"
    assert resolve_backend("compiled", "cpu") == "compiled"
    with pytest.raises(ConfigError, match="runs on the CPU"):
        resolve_backend("c", "cuda:0")
    with pytest.raises(ConfigError, match="unknown kernel backend"):
        resolve_backend("cuda", "cpu")  # type: ignore[arg-type]
    # the environment variable replaces "auto" where that backend can run, and nothing else
    monkeypatch.setenv("CONFIDENCE_NEURONS_BACKEND", "torch")
    assert resolve_backend("auto", "cpu") == "torch" and resolve_backend("c", "cpu") == "c"
    monkeypatch.setenv("CONFIDENCE_NEURONS_BACKEND", "c")
    assert resolve_backend("auto", "cuda") == "compiled", "the C kernel cannot run on CUDA"
    monkeypatch.setenv("CONFIDENCE_NEURONS_BACKEND", "fortran")
    with pytest.raises(ConfigError, match="CONFIDENCE_NEURONS_BACKEND='fortran'"):
        resolve_backend("auto", "cpu")


def test_failed_compilation_falls_back_to_eager(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no C++ compiler for inductor")

    monkeypatch.setattr(kernel, "_compiled_tile", lambda: broken)
    monkeypatch.setattr(kernel, "_COMPILE_ERROR", None)
    problem = _kernel_problem(T=5, K=3, seed=6)
    with caplog.at_level(logging.WARNING, logger=kernel.__name__):
        st = softmax_stats(*problem, backend="compiled")
        softmax_stats(*problem, backend="compiled")
    assert sum("torch.compile" in r.getMessage() for r in caplog.records) == 1, "warned once"
    assert describe_backend("compiled", "cpu") == "torch eager (torch.compile failed)"
    loss, _, _, _ = _exact_stats(*problem, None)
    torch.testing.assert_close(st.loss.double(), loss, atol=TOL, rtol=1e-5)


# --- per-token effects against hooked forward passes ----------------------------------------------


@dataclass
class Setup:
    arch: str
    model: LoadedModel
    layer: FinalLayer
    tokens: torch.Tensor
    cache: ForwardCache
    freq: FreqDirection
    neurons: list[int]
    brute: dict[str, list[dict[str, torch.Tensor]]]  # per variant, per neuron


@pytest.fixture(scope="module", params=ARCHITECTURES)
def setup(request, tmp_path_factory) -> Setup:
    arch = request.param
    model = load_tiny(arch, tmp_path_factory.mktemp(f"{arch}_backends"))
    layer = final_layer(model)
    tokens = random_tokens(4, 16, seed=2)
    cache = run_forward(model, layer, tokens, progress=False)
    freq = zipf_freq(layer.d_vocab, seed=2)
    neurons = cache.acts.std(0).argsort(descending=True)[:2].tolist()
    mean = cache.acts.mean(0)
    kwargs = {"TE": {}, "DE": {"freeze_scale": True}, "DE_freq": {"v_freq": freq.v}}
    brute = {
        v: [brute_force_ablation(model, layer, tokens, i, float(mean[i]), **kw) for i in neurons]
        for v, kw in kwargs.items()
    }
    return Setup(arch, model, layer, tokens, cache, freq, neurons, brute)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_brute_force(setup: Setup, backend: str):
    """TE, DE and DE_freq per-token loss and entropy (DE_freq: loss) on device='cpu', to 1e-4."""
    _need(backend)
    eff = per_token_effects(setup.layer, setup.cache, setup.neurons, freq=setup.freq, backend=backend, device="cpu")
    if backend == "compiled":
        assert describe_backend(backend, "cpu") == "torch.compile", "compiled, not the eager fallback"
    for v, per_neuron in setup.brute.items():
        for j, brute in enumerate(per_neuron):
            keys = ("loss",) if v == "DE_freq" else ("loss", "entropy")
            for key in keys:
                torch.testing.assert_close(
                    getattr(eff.variant(v), key)[:, j].double(),
                    brute[key],
                    atol=TOL,
                    rtol=0,
                    msg=lambda m: f"{setup.arch} {backend} {v} {key} neuron {setup.neurons[j]}: {m}",
                )
        if v == "DE_freq":  # meaningful only if holding the v_freq component changes the loss
            assert (per_neuron[j]["loss"] - setup.brute["TE"][j]["loss"]).abs().max() > 1e-3


# --- the whole sweep ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    model = load_tiny("gpt2", tmp_path_factory.mktemp("gpt2_backends_sweep"))
    layer = final_layer(model)
    cache = run_forward(model, layer, random_tokens(3, 16, seed=3), progress=False)
    return layer, cache, zipf_freq(layer.d_vocab, seed=3, exponent=2.0)


@pytest.mark.parametrize("backend", ["torch", "compiled"])
def test_sweep_on_cpu_equals_c_kernel(gpt2, backend):
    _need("c")
    layer, cache, freq = gpt2
    ref = sweep(layer, cache, freq=freq, neuron_chunk=48, token_chunk=20, progress=False, backend="c")
    res = sweep(layer, cache, freq=freq, neuron_chunk=48, token_chunk=20, progress=False, backend=backend, device="cpu")
    torch.testing.assert_close(res.mean_activation, ref.mean_activation, atol=0, rtol=0)
    for f in effect_fields(freq):
        if f == "de_freq_exact_share":  # how DE_freq was taken differs (the torch paths: always exactly)
            continue
        torch.testing.assert_close(getattr(res, f), getattr(ref, f), atol=TOL, rtol=0, msg=lambda m: f"{f}: {m}")
        assert getattr(res, f).dtype == torch.float32 and getattr(res, f).device.type == "cpu"
    assert float(res.de_freq_exact_share.mean()) > 0.95
    torch.testing.assert_close(res.clean.loss, ref.clean.loss, atol=TOL, rtol=0)
    assert ref.TE.max() > 1e-3 and ref.DE_freq.max() > 1e-3


class _RowCounter:
    """A cache tensor that records how many rows each read takes (the sweep must read chunks)."""

    def __init__(self, x: torch.Tensor, reads: list[int]):
        self.x, self.reads, self.shape = x, reads, x.shape

    def __getitem__(self, index):
        out = self.x[index]
        self.reads.append(out.shape[0])
        return out

    def mean(self, dim):
        return self.x.mean(dim)


def test_sweep_reads_the_cache_a_chunk_at_a_time(gpt2):
    """Per-chunk work touches token_chunk rows of the cache, never all N (a memory-mapped cache stays put)."""
    layer, cache, freq = gpt2
    reads: list[int] = []
    counted = ForwardCache(
        resid=_RowCounter(cache.resid, reads),
        acts=_RowCounter(cache.acts, reads),
        target=cache.target,
        seq_len=cache.seq_len,
    )
    res = sweep(layer, counted, freq=freq, neuron_chunk=64, token_chunk=10, progress=False, backend="torch")
    ref = sweep(layer, cache, freq=freq, neuron_chunk=64, token_chunk=10, progress=False, backend="torch")
    torch.testing.assert_close(res.TE, ref.TE, atol=0, rtol=0)
    assert cache.n_tokens > 10 and reads and max(reads) <= 10, f"largest read {max(reads)} rows"


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: out of memory"),
    ],
)
def test_out_of_memory_names_the_flags(gpt2, monkeypatch, error):
    layer, cache, _ = gpt2

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(effects, "softmax_stats", fail)
    with pytest.raises(
        ToolkitError, match=r"--token-chunk 16 and --neuron-chunk 32: lower --token-chunk or --neuron-chunk"
    ) as info:
        sweep(layer, cache, neuron_chunk=32, token_chunk=16, progress=False)
    assert info.value.__cause__ is error
    assert str(info.value).count(".") <= 1 and "\n" not in str(info.value)


def test_other_errors_pass_through(gpt2, monkeypatch):
    layer, cache, _ = gpt2

    def fail(*args, **kwargs):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(effects, "softmax_stats", fail)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        sweep(layer, cache, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", ["auto", "torch", "compiled"])
def test_sweep_on_cuda_equals_cpu(gpt2, backend):
    """Run where a GPU is lent: the sweep on CUDA (the cache stays on the host) equals the CPU's."""
    layer, cache, freq = gpt2
    ref = sweep(layer, cache, freq=freq, neuron_chunk=48, token_chunk=20, progress=False, backend="torch")
    res = sweep(
        layer, cache, freq=freq, neuron_chunk=48, token_chunk=20, progress=False, backend=backend, device="cuda"
    )
    for f in effect_fields(freq):
        if f == "de_freq_exact_share":
            continue
        torch.testing.assert_close(getattr(res, f), getattr(ref, f), atol=TOL, rtol=0, msg=lambda m: f"{f}: {m}")
        assert getattr(res, f).device.type == "cpu"
    assert describe_backend(backend, "cuda") == ("torch eager" if backend == "torch" else "torch.compile")


@pytest.mark.parametrize("backend", ["c", "torch"])
def test_benchmark_floor_is_the_exp_sum(backend):
    """The benchmark's floor computes what it claims: sum_v exp(A L + B U + bias)."""
    _need(backend)
    L, U, bias, A, B, _ = _kernel_problem(T=5, K=9, V=2100, seed=8)
    L, U = 0.3 * L, 0.3 * U
    z = A.double()[:, :, None] * L.double()[:, None] + B.double()[:, :, None] * U.double()[None] + bias.double()
    torch.testing.assert_close(
        kernel.exp_sum_floor(L, U, bias, A, B, backend).double(), z.exp().sum(-1), rtol=1e-5, atol=0
    )
