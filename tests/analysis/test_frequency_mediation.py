"""DE_freq (Eq. 7-8) and KL(P_freq || P_model) in closed form equal real forward passes, and the
sweep's fast DE_freq (taken in the TE pass by a bounded series, kernel.series_orders) equals the
exact third pass.

Layers of checks, each against a slower twin:
  * the error bound of the series holds, in float64, for every order;
  * the kernel's logsumexp(y + G w) matches float64 logits built from the definition, at every
    order it picks (series, second exponential, separate pass), in C and in torch;
  * per_token_effects (exact third pass) matches brute_force_ablation with Eq. 7 applied to the
    real logits, for every architecture, including Gemma 3's post-MLP norm;
  * the sweep's DE_freq matches per_token_effects; it resumes from checkpoints to the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from confidence_neurons.analysis.closed_form import ablated_values, chunks, de_freq_shift, de_logits, te_logits
from confidence_neurons.analysis.effects import FREQ_SERIES_TOL, per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import (
    EXACT_ORDER,
    FAR_ORDER,
    NMOM,
    c_kernel_available,
    resolve_backend,
    series_error_bound,
    series_orders,
    softmax_stats,
)
from confidence_neurons.analysis.reference import brute_force_ablation, clean_token_stats
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.data.unigrams import v_freq
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.rundir import CheckpointStore
from tests.analysis.test_closed_form import _kernel_problem
from tests.tiny import ARCHITECTURES, load_tiny, random_tokens

TOL = 1e-4
BACKENDS = ["c", "torch"]


def zipf_freq(vocab_size: int, seed: int = 0, exponent: float = 1.0) -> FreqDirection:
    """A Zipf unigram distribution over a random ranking of the vocabulary."""
    rank = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))
    p = (rank + 1.0).pow(-exponent)
    p = (p / p.sum()).double()
    return FreqDirection(p=p, v=v_freq(p))


def _need_c(backend: str) -> None:
    if backend == "c" and not c_kernel_available():
        pytest.skip("no working C compiler (gcc/cc or $CC): the fused kernel cannot be built here")


# --- the series and its bound -------------------------------------------------------------------


def test_series_error_bound_holds():
    """|log E_p[exp(G w)] - log(series cut after G^n)| <= series_error_bound(|G| max|w|, n), in float64,
    over distributions from flat to peaked, and the bound is within a few orders of the real error.
    """
    gen = torch.Generator().manual_seed(0)
    V = 500
    w = 4 * torch.rand(V, generator=gen, dtype=torch.float64) - 2
    w[0], w[1] = -2.0, 2.0
    G = torch.logspace(-4, 0, 60, dtype=torch.float64)
    G = torch.cat([G, -G])
    tight = 0
    for temperature in (0.1, 1.0, 5.0):
        p = torch.softmax(temperature * torch.randn(V, generator=gen, dtype=torch.float64), 0)
        exact = torch.logsumexp(p.log() + G[:, None] * w, -1)
        moments = torch.stack([(p * w**m).sum() for m in range(1, NMOM + 1)])
        for n in range(1, NMOM + 1):
            series = 1 + sum(G**m / math.factorial(m) * moments[m - 1] for m in range(1, n + 1))
            err = (exact - series.log()).abs()
            bound = series_error_bound(G.abs() * w.abs().max(), n)
            assert (err <= bound * (1 + 1e-9) + 1e-15).all(), f"order {n}: error above the bound"
            tight += int(((err > bound / 1e3) & (err > 1e-12)).sum())
    assert tight > 0, "the bound should not be vacuous"


def test_series_orders_pick_the_cheapest_safe_order():
    G = torch.tensor([[0.0, 1e-9, 1e-4, 1e-2, 0.1, 1.0, 30.0]])
    order = series_orders(G, w_max=1.0, tol=1e-7)
    assert order[0, 0] == 0 and order[0, -1] == FAR_ORDER and order[0, -2] == EXACT_ORDER
    x = G.abs()
    for j, n in enumerate(order[0].tolist()):
        if 1 <= n <= NMOM:
            assert series_error_bound(x[0, j], n) <= 1e-7
            assert n == 1 or series_error_bound(x[0, j], n - 1) > 1e-7, "a lower order would have done"
    assert order[0, 1:5].tolist() == sorted(order[0, 1:5].tolist()), "larger tilts need higher orders"


# --- the kernel ---------------------------------------------------------------------------------


def _tilt_problem(T=16, K=9, V=3001, post=False, seed=0):
    """test_closed_form's kernel problem (far from the clean maximum in column 0: the recompute path),
    with a vector w and a tilt G per pair spanning every order, up to |G| max|w| = 40.
    """
    gen = torch.Generator().manual_seed(seed)
    problem = _kernel_problem(T, K, V, far=True, gen=gen)
    w = 4 * torch.rand(V, generator=gen) - 2
    sign = torch.where(torch.rand(T, K, generator=gen) < 0.5, -1.0, 1.0)
    G = torch.logspace(-7, 1.3, T * K).view(T, K) * sign
    G[0, 1] = 0.0
    extra = {}
    if post:
        extra = {"P": torch.randn(T, V, generator=gen), "C": 0.1 * torch.randn(T, K, generator=gen)}
    return problem, w, G, extra


@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_tilted_logsumexp_matches_definition(backend, post):
    _need_c(backend)
    problem, w, G, extra = _tilt_problem(post=post)
    L, U, bias, A, B, _ = problem
    z = A.double()[:, :, None] * L.double()[:, None] + B.double()[:, :, None] * U.double()[None] + bias.double()
    if post:
        z = z + extra["C"].double()[:, :, None] * extra["P"].double()[:, None]
    exact = (z + G.double()[:, :, None] * w.double()).logsumexp(-1) - z.logsumexp(-1)
    st = softmax_stats(*problem, w=w, G=G, backend=backend, **extra)
    # The tilt is small where the series serves it, so it is compared far below the logits' rounding.
    err = (st.tilt.double() - exact).abs()
    assert err.max() < 2e-5, f"max error {err.max():.3g}"
    torch.testing.assert_close(st.logsumexp.double(), z.logsumexp(-1), atol=TOL, rtol=1e-6)
    if backend == "c":  # the torch twin takes every tilt exactly
        series = (st.order >= 1) & (st.order <= NMOM)
        assert err[series].max() < 2e-7, f"series: max error {err[series].max():.3g}"
        used = set(st.order.unique().tolist())
        assert used == {0, *range(1, NMOM + 1), EXACT_ORDER, FAR_ORDER}, f"orders used: {sorted(used)}"


def test_tilt_arguments_are_checked():
    problem, w, G, _ = _tilt_problem(T=2, K=2, V=50)
    with pytest.raises(ValueError, match="together"):
        softmax_stats(*problem, w=w)
    with pytest.raises(ValueError, match="soft-capping"):
        softmax_stats(*problem, w=w, G=G, softcap=30.0)


# --- closed form against real forward passes ---------------------------------------------------


@dataclass
class Setup:
    name: str
    model: LoadedModel
    layer: FinalLayer
    tokens: torch.Tensor
    cache: ForwardCache
    freq: FreqDirection


def _setup(name: str, model: LoadedModel, seed: int = 2) -> Setup:
    layer = final_layer(model)
    tokens = random_tokens(4, 16, seed=seed)
    return Setup(
        name,
        model,
        layer,
        tokens,
        run_forward(model, layer, tokens, progress=False),
        zipf_freq(layer.d_vocab, seed=seed),
    )


@pytest.fixture(scope="module", params=[*ARCHITECTURES, "gemma3-post-norm"])
def setup(request, tmp_path_factory) -> Setup:
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "gemma3-post-norm":
        return _setup(request.param, load_tiny("gemma3", directory))
    return _setup(request.param, load_tiny(request.param, directory))


def test_de_freq_and_kl_equal_brute_force(setup: Setup):
    """per_token_effects' DE_freq loss and KL(P_freq || P_model), clean and ablated, against a hooked
    forward pass with Eq. 7 applied to its real logits.
    """
    layer, cache, freq = setup.layer, setup.cache, setup.freq
    neurons = cache.acts.std(0).argsort(descending=True)[:2].tolist()
    mean = cache.acts.mean(0)
    eff = per_token_effects(layer, cache, neurons, freq=freq)
    clean = clean_token_stats(setup.model, setup.tokens, p_freq=freq.p)
    torch.testing.assert_close(eff.kl.double(), clean["kl"], atol=TOL, rtol=0)
    for j, neuron in enumerate(neurons):
        te = brute_force_ablation(setup.model, layer, setup.tokens, neuron, float(mean[neuron]), p_freq=freq.p)
        de_freq = brute_force_ablation(setup.model, layer, setup.tokens, neuron, float(mean[neuron]), v_freq=freq.v)
        msg = f"{setup.name} neuron {neuron}"
        torch.testing.assert_close(eff.kl_TE[:, j].double(), te["kl"], atol=TOL, rtol=0, msg=lambda m: f"{msg} KL: {m}")
        torch.testing.assert_close(
            eff.DE_freq.loss[:, j].double(), de_freq["loss"], atol=TOL, rtol=0, msg=lambda m: f"{msg} DE_freq: {m}"
        )
        # Meaningful only if holding the v_freq component changes the loss.
        assert (de_freq["loss"] - te["loss"]).abs().max() > 1e-3, msg


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma3-post-norm"])
def test_sweep_de_freq_equals_the_exact_pass(arch, tmp_path):
    """The sweep's DE_freq (series or second exponential inside the TE pass) equals the exact third
    pass of per_token_effects, for every neuron; on data where the series and the exact path both run.
    """
    model = load_tiny("gemma3", tmp_path) if arch == "gemma3-post-norm" else load_tiny(arch, tmp_path)
    s = _setup(arch, model, seed=5)
    freq = zipf_freq(s.layer.d_vocab, seed=5, exponent=2.0)
    eff = per_token_effects(s.layer, s.cache, list(range(s.layer.d_mlp)), freq=freq)
    dloss = (eff.DE_freq.loss - eff.loss[:, None]).double()
    dkl = (eff.kl_TE - eff.kl[:, None]).double().abs().mean(0)
    exact_share = {}
    for tol in (FREQ_SERIES_TOL, 1e-12, 0.0):  # 0: every pair by exact exponentials
        res = sweep(s.layer, s.cache, freq=freq, neuron_chunk=24, token_chunk=20, progress=False, freq_tol=tol)
        msg = lambda m: f"tol {tol}: {m}"  # noqa: E731
        torch.testing.assert_close(res.DE_freq.double(), dloss.abs().mean(0), atol=1e-6, rtol=1e-4, msg=msg)
        torch.testing.assert_close(res.mean_delta_loss_DE_freq.double(), dloss.mean(0), atol=1e-6, rtol=1e-4, msg=msg)
        torch.testing.assert_close(res.abs_delta_kl.double(), dkl, atol=1e-6, rtol=1e-4, msg=msg)
        exact_share[tol] = float(res.de_freq_exact_share.mean())
    assert res.DE_freq.max() > 1e-3
    twin = sweep(s.layer, s.cache, freq=freq, neuron_chunk=24, token_chunk=20, progress=False, backend="torch")
    torch.testing.assert_close(twin.DE_freq.double(), dloss.abs().mean(0), atol=1e-6, rtol=1e-4)
    assert float(twin.de_freq_exact_share.mean()) > 0.95, "the torch twin takes every pair exactly"
    if resolve_backend("auto") == "c":  # the torch twin is always exact (and is "auto" under that env setting)
        assert exact_share[FREQ_SERIES_TOL] < 0.5, "the series should serve most pairs"
        assert 0 < exact_share[1e-12] < 1 and exact_share[0.0] > 0.95, exact_share


def test_sweep_with_freq_resumes_from_checkpoints(tmp_path):
    s = _setup("gpt2", load_tiny("gpt2", tmp_path / "m"))
    reference = sweep(s.layer, s.cache, freq=s.freq, neuron_chunk=32, progress=False)

    def fail_after_first(k0, n):
        raise KeyboardInterrupt("interrupted by the test")

    ckpt = tmp_path / "ckpt"
    sweep(s.layer, s.cache, neuron_chunk=32, checkpoints=CheckpointStore(ckpt), progress=False)  # a run without P_freq
    with pytest.raises(KeyboardInterrupt):
        sweep(
            s.layer,
            s.cache,
            freq=s.freq,
            neuron_chunk=32,
            checkpoints=CheckpointStore(ckpt),
            progress=False,
            on_chunk=fail_after_first,
        )
    done: list[int] = []
    res = sweep(
        s.layer,
        s.cache,
        freq=s.freq,
        neuron_chunk=32,
        checkpoints=CheckpointStore(ckpt),
        progress=False,
        on_chunk=lambda k0, n: done.append(k0),
    )
    assert done == list(range(32, s.layer.d_mlp, 32)), "only the first chunk is read back"
    for f in ("DE_freq", "mean_delta_loss_DE_freq"):
        torch.testing.assert_close(getattr(res, f), getattr(reference, f), atol=0, rtol=0)
    torch.testing.assert_close(res.abs_delta_kl, reference.abs_delta_kl, atol=0, rtol=0)


def test_named_eq5_eq6_eq7_logits_equal_brute_force(setup: Setup):
    """te_logits, de_logits and the TE logits plus de_freq_shift x v_freq, formed in full, give the
    per-token losses of hooked forwards (free scale, frozen scale, Eq. 7 on the real logits).
    """
    layer, cache, freq = setup.layer, setup.cache, setup.freq
    neurons = cache.acts.std(0).argsort(descending=True)[:2].tolist()
    mean = cache.acts.mean(0)
    idx = torch.tensor(neurons)
    new = ablated_values(cache.acts[:, idx], mean[idx], "mean")
    ((_, c),) = list(chunks(layer, cache, idx, new, token_chunk=cache.n_tokens))
    te = te_logits(c, layer)
    named = {"TE": te.materialize(c, layer), "DE": de_logits(c, layer).materialize(c, layer)}
    named["DE_freq"] = named["TE"] + de_freq_shift(c, layer, te, freq)[..., None] * freq.v
    for j, neuron in enumerate(neurons):
        kwargs = {"TE": {}, "DE": {"freeze_scale": True}, "DE_freq": {"v_freq": freq.v}}
        for variant, logits in named.items():
            brute = brute_force_ablation(
                setup.model, layer, setup.tokens, neuron, float(mean[neuron]), **kwargs[variant]
            )
            loss = -logits[:, j].double().log_softmax(-1).gather(-1, cache.target[:, None])[:, 0]
            torch.testing.assert_close(
                loss, brute["loss"], atol=TOL, rtol=0, msg=lambda m: f"{setup.name} {variant} neuron {neuron}: {m}"
            )
