"""The closed-form mediation (Sec. 3.2, Eq. 4-6) equals real forward passes with hooks.

For every architecture, per-token loss and entropy after mean and clipped ablation of a
neuron, with the final norm's scale free (TE) or frozen (DE), must match
``reference.brute_force_ablation`` to 1e-4. Also: an ablation that changes no activation
changes nothing, the sweep agrees with the per-token effects and resumes from its
checkpoints to the same numbers, and the fused C kernel agrees with its torch twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.kernel import c_kernel_available, softmax_stats, softmax_stats_torch
from confidence_neurons.analysis.reference import brute_force_ablation, clean_token_stats
from confidence_neurons.analysis.sweep import BASE_FIELDS, sweep
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.rundir import CheckpointStore
from tests.tiny import ARCHITECTURES, load_tiny, random_tokens

TOL = 1e-4
SUFFIX = {"TE": "", "DE": "_DE"}  # NeuronEffects field suffix per variant
VARIANT_FREEZE = {"TE": False, "DE": True}


@dataclass
class Setup:
    arch: str
    model: LoadedModel
    layer: FinalLayer
    tokens: torch.Tensor
    cache: ForwardCache


@pytest.fixture(scope="module", params=ARCHITECTURES)
def setup(request, tmp_path_factory) -> Setup:
    arch = request.param
    model = load_tiny(arch, tmp_path_factory.mktemp(arch))
    layer = final_layer(model)
    tokens = random_tokens(4, 16, seed=2)
    cache = run_forward(model, layer, tokens, progress=False)
    return Setup(arch, model, layer, tokens, cache)


def most_active(cache: ForwardCache, n: int) -> list[int]:
    """The neurons whose activation varies most: their ablation moves the output the most."""
    return cache.acts.std(0).argsort(descending=True)[:n].tolist()


def test_run_forward_reproduces_model_logits(setup: Setup):
    assert setup.cache.n_tokens == setup.tokens.shape[0] * (setup.tokens.shape[1] - 1)
    assert setup.cache.logits_check < TOL
    torch.testing.assert_close(setup.cache.target, setup.tokens[:, 1:].reshape(-1))


def test_logits_check_samples_every_batch_and_catches_a_wrong_closed_form(setup: Setup, monkeypatch):
    from dataclasses import replace

    from confidence_neurons.analysis import forward

    rows = forward.check_rows(1000, 256)
    assert len(rows) == 256 and rows[0] == 0 and rows[-1] == 999 and bool((rows.diff() > 0).all())
    assert torch.equal(forward.check_rows(10, 256), torch.arange(10))
    # the check reads only some positions of each batch: a closed form wrong at every position is caught
    monkeypatch.setattr(forward.check_rows, "__defaults__", (3,))
    noise = torch.randn(setup.layer.b_U.shape, generator=torch.Generator().manual_seed(0))
    wrong = replace(setup.layer, b_U=setup.layer.b_U + noise)
    with pytest.raises(RuntimeError, match="closed-form logits differ"):
        run_forward(setup.model, wrong, setup.tokens, progress=False)


@pytest.mark.parametrize("mode", ["mean", "clip"])
def test_closed_form_equals_brute_force(setup: Setup, mode: str):
    neurons = most_active(setup.cache, 2)
    mean = setup.cache.acts.mean(0)
    eff = per_token_effects(setup.layer, setup.cache, neurons, mode=mode)
    clean = clean_token_stats(setup.model, setup.tokens)
    for key in ("loss", "entropy"):
        torch.testing.assert_close(getattr(eff, key).double(), clean[key], atol=TOL, rtol=0)
    for j, neuron in enumerate(neurons):
        brute = {
            v: brute_force_ablation(
                setup.model, setup.layer, setup.tokens, neuron, float(mean[neuron]), mode=mode, freeze_scale=freeze
            )
            for v, freeze in VARIANT_FREEZE.items()
        }
        for v in VARIANT_FREEZE:
            for key in ("loss", "entropy"):
                torch.testing.assert_close(
                    getattr(eff.variant(v), key)[:, j].double(),
                    brute[v][key],
                    atol=TOL,
                    rtol=0,
                    msg=lambda m: f"{setup.arch} {mode} {v} {key} neuron {neuron}: {m}",
                )
        # The comparison means something only if the ablation moves the output, and freezing the scale matters.
        assert (brute["TE"]["loss"] - clean["loss"]).abs().max() > 1e-3
        assert (brute["TE"]["loss"] - brute["DE"]["loss"]).abs().max() > 1e-5


def test_ablation_that_changes_nothing_has_no_effect(setup: Setup):
    layer, cache = setup.layer, setup.cache
    neurons = most_active(cache, 3)
    # Clipping at a value above every activation leaves every activation as it is.
    above = cache.acts.max(0).values + 1.0
    eff = per_token_effects(layer, cache, neurons, mode="clip", mean_act=above)
    # Mean ablation over a single token sets each activation to itself.
    one = ForwardCache(cache.resid[:1], cache.acts[:1], cache.target[:1], cache.seq_len)
    eff_one = per_token_effects(layer, one, neurons, mode="mean")
    for e in (eff, eff_one):
        for v in VARIANT_FREEZE:
            for key in ("loss", "entropy"):
                diff = (getattr(e.variant(v), key) - getattr(e, key)[:, None]).abs().max().item()
                assert diff < 1e-6, f"{v} {key} moved by {diff} under an empty ablation"
            assert not e.variant(v).top1_changed.any()
    brute = brute_force_ablation(
        setup.model, layer, setup.tokens, neurons[0], float(above[neurons[0]]), mode="clip", freeze_scale=False
    )
    clean = clean_token_stats(setup.model, setup.tokens)
    for key in ("loss", "entropy"):
        assert (brute[key] - clean[key]).abs().max() < 1e-6


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Setup:
    model = load_tiny("gpt2", tmp_path_factory.mktemp("gpt2_sweep"))
    layer = final_layer(model)
    tokens = random_tokens(3, 16, seed=3)
    return Setup("gpt2", model, layer, tokens, run_forward(model, layer, tokens, progress=False))


def assert_same_sweep(a, b):
    torch.testing.assert_close(a.mean_activation, b.mean_activation, atol=0, rtol=0)
    for f in BASE_FIELDS:
        torch.testing.assert_close(getattr(a, f), getattr(b, f), atol=1e-9, rtol=1e-6, msg=lambda m: f"{f}: {m}")


def test_sweep_agrees_with_per_token_effects(gpt2: Setup):
    layer, cache = gpt2.layer, gpt2.cache
    res = sweep(layer, cache, neuron_chunk=48, token_chunk=20, progress=False)
    eff = per_token_effects(layer, cache, list(range(layer.d_mlp)))
    torch.testing.assert_close(res.mean_activation, cache.acts.mean(0))
    for v in VARIANT_FREEZE:
        dloss = (eff.variant(v).loss - eff.loss[:, None]).double()
        torch.testing.assert_close(getattr(res, v).double(), dloss.abs().mean(0), atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(
            getattr(res, f"mean_delta_loss{SUFFIX[v]}").double(), dloss.mean(0), atol=1e-6, rtol=1e-4
        )
        dent = (eff.variant(v).entropy - eff.entropy[:, None]).double().abs().mean(0)
        torch.testing.assert_close(getattr(res, f"abs_delta_entropy{SUFFIX[v]}").double(), dent, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(
            getattr(res, f"top1_change_frac{SUFFIX[v]}").double(), eff.variant(v).top1_changed.double().mean(0)
        )
    assert res.TE.max() > 1e-3


def test_sweep_resumes_from_checkpoints(gpt2: Setup, tmp_path: Path):
    layer, cache = gpt2.layer, gpt2.cache
    chunk = 32
    starts = list(range(0, layer.d_mlp, chunk))
    assert len(starts) >= 3
    reference = sweep(layer, cache, neuron_chunk=chunk, progress=False)

    def run(directory: Path, mode="mean", fail_after: int | None = None):
        done: list[int] = []

        def on_chunk(k0, n):
            done.append(k0)
            if fail_after is not None and len(done) >= fail_after:
                raise KeyboardInterrupt("interrupted by the test")

        res = sweep(
            layer,
            cache,
            mode=mode,
            neuron_chunk=chunk,
            checkpoints=CheckpointStore(directory),
            progress=False,
            on_chunk=on_chunk,
        )
        return res, done

    full = tmp_path / "full"
    res, done = run(full)
    assert done == starts
    assert_same_sweep(res, reference)
    files = sorted(full.glob("sweep_*.npz"))
    assert len(files) == len(starts)

    files[1].unlink()  # a lost chunk is recomputed, the others are read back
    res, done = run(full)
    assert done == [starts[1]]
    assert_same_sweep(res, reference)

    res, done = run(full)  # everything read back
    assert done == []
    assert_same_sweep(res, reference)

    res, done = run(full, mode="clip")  # checkpoints of other settings are not reused
    assert done == starts
    assert_same_sweep(res, sweep(layer, cache, mode="clip", neuron_chunk=chunk, progress=False))

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        run(interrupted, fail_after=1)
    assert len(list(interrupted.glob("sweep_*.npz"))) == 1
    res, done = run(interrupted)
    assert done == starts[1:]
    assert_same_sweep(res, reference)


def _kernel_problem(T=6, K=5, V=3001, far=False, seed=0, gen: torch.Generator | None = None):
    """(L, U, bias, A, B, target) drawn from ``gen`` (default: a generator seeded with ``seed``)."""
    gen = gen if gen is not None else torch.Generator().manual_seed(seed)
    L = 2 * torch.randn(T, V, generator=gen)
    U = 2 * torch.randn(K, V, generator=gen)
    bias = torch.randn(V, generator=gen)
    A = 0.5 + torch.rand(T, K, generator=gen)
    B = torch.randn(T, K, generator=gen)
    if far:  # ablated logits far (> 60 nats) from the clean maximum: the kernel's recompute path
        B[:, 0] = 40.0
    target = torch.randint(0, V, (T,), generator=gen)
    return L, U, bias, A, B, target


def _exact_stats(L, U, bias, A, B, target, softcap):
    """Loss and entropy of the ablated logits in float64, straight from the definition."""
    z = A.double()[:, :, None] * L.double()[:, None] + B.double()[:, :, None] * U.double()[None] + bias.double()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    logp = z.log_softmax(-1)
    at = lambda idx: z.gather(-1, idx.view(-1, 1, 1).expand(-1, z.shape[1], 1)).squeeze(-1)  # noqa: E731
    loss = -logp.gather(-1, target.view(-1, 1, 1).expand(-1, z.shape[1], 1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    ref = (L + bias).argmax(-1)  # the kernel's default reference token: the clean top-1
    changed = z.argmax(-1) != ref[:, None]
    top2 = z.topk(2, dim=-1).values
    # float32 cannot decide near-ties (e.g. saturated soft-caps): only pairs with a clear answer count
    clear = torch.where(changed, top2[..., 0] - at(ref) > 1e-3, top2[..., 0] - top2[..., 1] > 1e-3)
    return loss, entropy, changed, clear


def _need_c(backend: str) -> None:
    if backend == "c" and not c_kernel_available():
        pytest.skip("no working C compiler (gcc/cc or $CC): the fused kernel cannot be built here")


BACKENDS = ["c", "torch"]
SOFTCAPS = [None, 30.0]


@pytest.mark.parametrize("softcap", SOFTCAPS)
@pytest.mark.parametrize("far", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_loss_and_entropy_match_definition(backend, far, softcap):
    """Both backends (and the twin called directly) against float64 logits built from the definition."""
    _need_c(backend)
    problem = _kernel_problem(far=far)
    loss, entropy, _, _ = _exact_stats(*problem, softcap)
    results = [softmax_stats(*problem, softcap=softcap, backend=backend)]
    if backend == "torch":
        results.append(softmax_stats_torch(*problem, softcap=softcap))
    for stats in results:
        torch.testing.assert_close(stats.loss.double(), loss, atol=TOL, rtol=1e-5)
        torch.testing.assert_close(stats.entropy.double(), entropy, atol=TOL, rtol=1e-5)


def test_c_kernel_agrees_with_torch_twin():
    _need_c("c")
    for softcap in SOFTCAPS:
        for far in (False, True):
            problem = _kernel_problem(T=9, K=11, far=far, seed=1)
            c = softmax_stats(*problem, softcap=softcap, backend="c")
            t = softmax_stats(*problem, softcap=softcap, backend="torch")
            for name in ("loss", "entropy", "logsumexp", "max", "y_target"):
                torch.testing.assert_close(
                    getattr(c, name),
                    getattr(t, name),
                    atol=TOL,
                    rtol=1e-5,
                    msg=lambda m: f"softcap={softcap} far={far} {name}: {m}",
                )


@pytest.mark.parametrize(("backend", "softcap"), [(b, s) for b in BACKENDS for s in SOFTCAPS])
def test_kernel_top1_changed(backend, softcap):
    """top1_changed is False for an empty ablation (A = 1, B = 0) and right wherever float32 can tell."""
    _need_c(backend)
    L, U, bias, A, B, target = _kernel_problem(T=32, K=8)
    empty = softmax_stats(L, U, bias, torch.ones_like(A), torch.zeros_like(B), target, softcap=softcap, backend=backend)
    assert not empty.top1_changed.any(), f"{int(empty.top1_changed.sum())} spurious top-1 changes"
    for far in (False, True):
        problem = _kernel_problem(far=far)
        _, _, changed, clear = _exact_stats(*problem, softcap)
        assert clear.float().mean() > 0.8 and changed.any() and not changed.all()
        stats = softmax_stats(*problem, softcap=softcap, backend=backend)
        torch.testing.assert_close(stats.top1_changed[clear], changed[clear])


def test_te_only_equals_the_te_of_the_full_computation(setup: Setup):
    neurons = most_active(setup.cache, 2)
    full = per_token_effects(setup.layer, setup.cache, neurons, mode="clip")
    te = per_token_effects(setup.layer, setup.cache, neurons, mode="clip", te_only=True)
    assert te.DE is None and full.DE is not None
    for key in ("loss", "entropy"):
        torch.testing.assert_close(getattr(te.TE, key), getattr(full.TE, key), atol=1e-6, rtol=0)
        torch.testing.assert_close(getattr(te, key), getattr(full, key), atol=1e-6, rtol=0)


def test_mixed_clipping_directions_equal_one_call_per_direction(setup: Setup):
    above, below = most_active(setup.cache, 2)
    mean = setup.cache.acts.mean(0)
    mixed = per_token_effects(
        setup.layer, setup.cache, [above, below], mode="clip", mean_act=mean, te_only=True, below=[False, True]
    )
    up = per_token_effects(setup.layer, setup.cache, [above], mode="clip", mean_act=mean, te_only=True)
    down = per_token_effects(setup.layer, setup.cache, [below], mode="clip_below", mean_act=mean, te_only=True)
    for key in ("loss", "entropy"):
        torch.testing.assert_close(getattr(mixed.TE, key)[:, :1], getattr(up.TE, key), atol=1e-6, rtol=0)
        torch.testing.assert_close(getattr(mixed.TE, key)[:, 1:], getattr(down.TE, key), atol=1e-6, rtol=0)
    assert (mixed.TE.loss[:, 1] - mixed.loss).abs().max() > 1e-6  # clipping from below does something
    with pytest.raises(ValueError, match="one flag per neuron"):
        per_token_effects(setup.layer, setup.cache, [above], mode="mean", below=[True])
