"""``forward_at`` (a few positions, cut forwards, no unembedding) equals ``run_forward``'s rows, and
the one plain-text pass equals its two slow twins (``mean_bos_attention``, ``plain_text_mean``).
"""

from __future__ import annotations

import pytest
import torch

from confidence_neurons.analysis.forward import forward_at, run_forward
from confidence_neurons.induction.heads import bos_attention_and_mean_activation, mean_bos_attention
from confidence_neurons.induction.neurons import (
    natural_activation_change,
    natural_induction_effects,
    plain_text_mean,
    repeat_rows,
)
from confidence_neurons.models.final_layer import final_layer
from tests.tiny import ARCHITECTURES, load_tiny, random_tokens

TOL = 1e-5


@pytest.fixture(scope="module", params=ARCHITECTURES)
def tiny(request, tmp_path_factory):
    model = load_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, model, final_layer(model)


def test_forward_at_equals_the_rows_of_the_whole_forward(tiny):
    arch, model, layer = tiny
    tokens = random_tokens(5, 14, seed=4)
    full = run_forward(model, layer, tokens, progress=False)
    P = tokens.shape[1] - 1
    rows = torch.tensor([0, 3, 2 * P + 1, 2 * P + 5, 3 * P + P - 1, 4 * P + 7])  # sequence 1 not read at all
    real, shapes = model.bridge.run_with_hooks, []
    model.bridge.run_with_hooks = lambda batch, **kw: (shapes.append(tuple(batch.shape)), real(batch, **kw))[1]
    try:
        got = forward_at(model, layer, tokens, rows, batch_size=2)
    finally:
        model.bridge.run_with_hooks = real
    # batched by last position, longest first: sequences 3 and 4 (to P - 1 and 7), then 2 and 0 (5 and 3)
    assert shapes == [(2, P), (2, 6)], shapes
    assert torch.equal(got.rows, rows) and got.logits_check < 1e-4, arch
    torch.testing.assert_close(got.target, full.target[rows], rtol=0, atol=0)
    for name in ("resid", "acts") + (("mlp_out",) if full.mlp_out is not None else ()):
        torch.testing.assert_close(getattr(got, name), getattr(full, name)[rows], rtol=0, atol=TOL, msg=name)


def test_forward_at_refuses_rows_out_of_order_or_range(tiny):
    _, model, layer = tiny
    tokens = random_tokens(2, 6)
    for bad in ([3, 1], [1, 1], [], [10]):
        with pytest.raises(ValueError, match="sorted, unique"):
            forward_at(model, layer, tokens, torch.tensor(bad, dtype=torch.long))


def test_natural_induction_on_the_repeat_rows_equals_the_whole_cache(tiny):
    arch, model, layer = tiny
    tokens = random_tokens(3, 20, seed=6)
    repeats = [(1, 8), (2, 10), (0, 12)]
    full = run_forward(model, layer, tokens, progress=False)
    part = forward_at(model, layer, tokens, repeat_rows(repeats, n=3, seq_len=20))
    ref = full.acts.mean(0)
    a = natural_induction_effects(layer, full, repeats, [0, 2], reference_mean=ref, n=3)
    b = natural_induction_effects(layer, part, repeats, [0, 2], reference_mean=ref, n=3)
    for col in ("activation", "entropy", "loss", "delta_entropy", "delta_loss"):
        torch.testing.assert_close(
            torch.tensor(b[col].to_numpy()), torch.tensor(a[col].to_numpy()), rtol=0, atol=1e-4, msg=f"{arch} {col}"
        )
    torch.testing.assert_close(
        torch.tensor(natural_activation_change(part, repeats, n=3)),
        torch.tensor(natural_activation_change(full, repeats, n=3)),
        rtol=0,
        atol=TOL,
    )
    missing = forward_at(model, layer, tokens, repeat_rows(repeats[:1], n=3, seq_len=20))
    with pytest.raises(ValueError, match="does not hold every position"):
        natural_activation_change(missing, repeats, n=3)


def test_one_plain_text_pass_equals_its_two_slow_twins(tiny):
    arch, model, layer = tiny
    tokens = random_tokens(5, 12, seed=8)
    bos, mean = bos_attention_and_mean_activation(model, tokens, batch_size=2)
    torch.testing.assert_close(bos, mean_bos_attention(model, tokens, batch_size=3), rtol=0, atol=TOL)
    torch.testing.assert_close(mean, plain_text_mean(model, layer, tokens, batch_size=3), rtol=0, atol=TOL)


def test_run_forward_checking_the_first_batch_only_gives_the_same_cache(tiny):
    arch, model, layer = tiny
    tokens = random_tokens(5, 10, seed=9)
    every = run_forward(model, layer, tokens, batch_size=2, progress=False)
    first = run_forward(model, layer, tokens, batch_size=2, progress=False, check="first batch")
    for name in ("resid", "acts", "target") + (("mlp_out",) if every.mlp_out is not None else ()):
        torch.testing.assert_close(getattr(first, name), getattr(every, name), rtol=0, atol=TOL, msg=f"{arch} {name}")
    assert first.logits_check <= every.logits_check + 1e-6 and first.logits_check < 1e-4
    with pytest.raises(ValueError, match="first batch"):
        run_forward(model, layer, tokens, progress=False, check="never")
