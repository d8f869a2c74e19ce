"""The closed form of steering equals real forward passes with hooks (``analysis/steering.py``).

For every tiny architecture (and Gemma 2/3 with their post-MLP norm): setting neurons to
mean + alpha (a - mean) + shift, one at a time and several together, gives the logits of a hooked
forward pass to float tolerance; alpha = 1 changes nothing; alpha = 0 is the sweep's mean ablation.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from confidence_neurons.analysis import steering as S
from confidence_neurons.analysis.effects import per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from tests.tiny import ARCHITECTURES, VOCAB_SIZE, load_tiny, random_tokens

TOL = 1e-4
ALPHAS = (-1.0, 0.0, 0.5, 2.5)


@dataclass
class Setup:
    model: LoadedModel
    layer: FinalLayer
    tokens: torch.Tensor
    cache: ForwardCache
    neurons: list[int]

    def steerer(self) -> S.Steerer:
        return S.Steerer(self.layer, self.neurons, self.cache.acts[:, self.neurons].mean(0))


def _setup(model: LoadedModel) -> Setup:
    layer = final_layer(model)
    tokens = random_tokens(3, 16, seed=5)
    cache = run_forward(model, layer, tokens, progress=False)
    neurons = cache.acts.std(0).argsort(descending=True)[:2].tolist()
    return Setup(model, layer, tokens, cache, neurons)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def setup(request, tmp_path_factory) -> Setup:
    return _setup(load_tiny(request.param, tmp_path_factory.mktemp(request.param)))


@torch.no_grad()
def hooked_logprobs(s: Setup, neurons: list[int], new_values) -> torch.Tensor:
    """log-softmax of a real forward pass whose ``neurons`` become ``new_values(acts)``, (N, V)."""

    def hook(acts, hook):
        out = acts.clone()
        out[..., neurons] = new_values(acts[..., neurons])
        return out

    logits = s.model.bridge.run_with_hooks(s.tokens, fwd_hooks=[(s.layer.act_hook, hook)])
    return logits[:, :-1].double().log_softmax(-1).reshape(-1, logits.shape[-1])


def closed_logprobs(s: Setup, dial: S.Dial, alpha: float, shift: float = 0.0) -> torch.Tensor:
    steerer = s.steerer()
    out = []
    for base in steerer.bases(s.cache, token_chunk=7):  # chunks that do not divide N
        out.append(steerer.logits(base, dial, steerer.delta(base, dial, alpha, shift)).double().log_softmax(-1))
    return torch.cat(out)


def dials_of(s: Setup) -> list[S.Dial]:
    a, b = s.neurons
    return [S.Dial("a", (a,), (0,)), S.Dial("b", (b,), (1,)), S.Dial("a+b", (a, b), (0, 1))]


def _check_against_hooks(s: Setup, shifts=(0.0, 0.3)):
    mean = s.cache.acts[:, s.neurons].mean(0)
    moved = 0.0
    for dial in dials_of(s):
        m = mean[list(dial.cols)]
        for alpha in ALPHAS:
            for shift in shifts:
                closed = closed_logprobs(s, dial, alpha, shift)
                brute = hooked_logprobs(s, list(dial.neurons), lambda a: m + alpha * (a - m) + shift)
                torch.testing.assert_close(closed, brute, atol=TOL, rtol=0)
                moved = max(moved, (brute - closed_logprobs(s, dial, 1.0)).abs().max().item())
    assert moved > 1e-2, "the steered neurons barely move the output: the comparison proves nothing"


def test_closed_form_equals_hooked_forward(setup: Setup):
    _check_against_hooks(setup)


@pytest.mark.parametrize(("version", "softcap"), [(2, 30.0), (3, None)])
def test_closed_form_through_the_post_mlp_norm(version, softcap, tmp_path):
    s = _setup(load_tiny(f"gemma{version}", tmp_path / "m", final_logit_softcapping=softcap))
    assert s.layer.post_mlp_norm is not None and s.layer.softcap == softcap
    _check_against_hooks(s, shifts=(0.0, 0.5))


def test_alpha_one_changes_nothing(setup: Setup):
    steerer = setup.steerer()
    clean = setup.model.bridge(setup.tokens)[:, :-1].double().log_softmax(-1).reshape(-1, VOCAB_SIZE)
    for dial in dials_of(setup):
        for base, closed in zip(steerer.bases(setup.cache, 16), torch.cat([clean]).split(16)):
            z = steerer.logits(base, dial, steerer.delta(base, dial, 1.0))
            assert torch.equal(z, steerer.clean_logits(base))
            torch.testing.assert_close(z.double().log_softmax(-1), closed, atol=TOL, rtol=0)


def test_alpha_zero_is_the_sweeps_mean_ablation(setup: Setup):
    """With the mean taken over the same tokens, alpha = 0 is the sweep's mean ablation, token by token."""
    sw = sweep(setup.layer, setup.cache, progress=False)
    eff = per_token_effects(setup.layer, setup.cache, setup.neurons, mode="mean")
    steerer = setup.steerer()
    for dial in dials_of(setup)[:2]:
        (i,), (k,) = dial.neurons, dial.cols
        settings = [S.Setting("neuron dial", 0.0, dial)]
        measured = S.measure(steerer, S.Bases(steerer, setup.cache, 8, 1e9), settings, [])
        nll = torch.from_numpy(measured.metrics[settings[0].label]["nll"]).double()
        torch.testing.assert_close(nll, eff.TE.loss[:, k].double(), atol=TOL, rtol=0)
        clean = torch.from_numpy(measured.metrics["clean"]["nll"]).double()
        assert float((nll - clean).mean()) == pytest.approx(float(sw.mean_delta_loss[i]), abs=TOL)
        assert float((nll - clean).abs().mean()) == pytest.approx(float(sw.TE[i]), abs=TOL)


def test_fit_finds_the_grid_minimum_and_refines_it(setup: Setup):
    steerer = setup.steerer()
    bases = S.Bases(steerer, setup.cache, 16, 1e9)
    assert bases.kept is not None
    dials = dials_of(setup)
    alphas, temps = [-1.0, 0.0, 1.0, 2.0, 3.0], [0.5, 1.0, 2.0, 4.0]
    fit = S.fit(steerer, bases, dials, alphas, temps)
    for d in dials:
        pts = fit.points[d.name]
        assert len(pts) > len(alphas)  # refined beyond the grid
        assert fit.nll[d.name] == min(pts.values()) <= min(pts[a] for a in alphas)
        assert min(alphas) <= fit.alpha[d.name] <= max(alphas)
    # T: a one-dimensional convex problem in 1/T, checked against a fine scan
    fine = [0.5 * 8 ** (k / 400) for k in range(401)]
    nlls = S.mean_nlls(steerer, bases, [S.Setting("temperature", t) for t in fine])
    t_best = fine[int(nlls.argmin())]
    assert fit.T == pytest.approx(t_best, rel=0.02)
    assert fit.nll["T"] <= nlls.min() + 1e-6
