"""Calibration metrics against hand-computed cases, the implied temperature against a known T,
and the bracketed minimum search.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from confidence_neurons.analysis import steering as S


def test_ece_by_hand():
    conf = np.array([0.9, 0.8, 0.6, 0.3])
    correct = np.array([1, 0, 1, 0])
    # 2 equal-mass bins: {0.3, 0.6} (conf 0.45, acc 0.5) and {0.8, 0.9} (conf 0.85, acc 0.5)
    assert S.expected_calibration_error(conf, correct, 2) == pytest.approx(0.5 * 0.05 + 0.5 * 0.35)
    # 1 bin: |0.5 - 0.65|
    assert S.expected_calibration_error(conf, correct, 1) == pytest.approx(0.15)
    # 3 bins of sizes 2, 1, 1: {0.3, 0.6}, {0.8}, {0.9}
    bins = S.reliability_bins(conf, correct, 3)
    assert bins["n"].tolist() == [2, 1, 1]
    assert S.expected_calibration_error(conf, correct, 3) == pytest.approx(0.5 * 0.05 + 0.25 * 0.8 + 0.25 * 0.1)
    # more bins than tokens: empty bins are dropped, each token its own bin
    assert S.expected_calibration_error(conf, correct, 10) == pytest.approx(np.mean([0.1, 0.8, 0.4, 0.3]))


def test_brier_by_hand_and_from_logits():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    target = np.array([0, 1])
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.5^2 + 0.5^2) = 0.5
    assert S.brier_score(probs, target) == pytest.approx(0.32)
    z = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]]))
    m = S.token_metrics(z, torch.tensor([0, 2]))
    assert m["brier"].tolist() == pytest.approx([0.14, 0.25 + 0.16 + 0.81], abs=1e-6)
    assert m["rank"].tolist() == [1, 3]
    assert m["correct"].tolist() == [1, 0]
    assert m["confidence"].tolist() == pytest.approx([0.7, 0.5], abs=1e-6)
    assert m["nll"].tolist() == pytest.approx([-math.log(0.7), -math.log(0.1)], abs=1e-6)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    logp = z.double().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def test_implied_temperature_recovers_a_known_temperature():
    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(6, 500, generator=gen, dtype=torch.float64)
    T0 = torch.tensor([0.07, 0.5, 0.93, 1.0, 1.7, 15.0], dtype=torch.float64)
    T = S.implied_temperature(z, _entropy(z / T0[:, None]))
    torch.testing.assert_close(T, T0, rtol=1e-5, atol=0)
    # out of the bracket: an entropy above that of T_MAX, and below that of T_MIN
    too_hot = _entropy(z[:1] / (2 * S.T_MAX))
    too_cold = _entropy(z[1:2] / (0.2 * S.T_MIN))
    out = S.implied_temperature(z[:2], torch.cat([too_hot, too_cold]))
    assert torch.isnan(out).all()


def test_refinement_converges_on_a_smooth_minimum():
    f = lambda x: (x - 0.37) ** 2 + 0.1 * (x - 0.37) ** 4  # noqa: E731
    points = {x: f(x) for x in (-1.0, 0.0, 1.0, 2.0)}
    for _ in range(4):
        xs = S.refine_candidates(points, -1.0, 2.0)
        assert all(-1.0 <= x <= 2.0 for x in xs) and xs
        points.update({x: f(x) for x in xs})
    best = min(points, key=points.get)
    assert abs(best - 0.37) < 2 * (2 / 9) ** 4  # the bracket's width after 4 rounds
