"""Issue 17's wrong words and wrong numbers: exact count totals, sparse counts said sensibly, the
final norm named by its type, the baseline-head warning in grammar, the cache variable checked.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from confidence_neurons.data.unigrams import count_sparsity, count_total, read_count_file
from confidence_neurons.errors import ToolkitError
from confidence_neurons.figures.entropy import fig_rho_vs_ln_share
from confidence_neurons.induction.heads import choose_heads
from confidence_neurons.paths import check_cache_dir


def test_totals_past_int64_are_exact(tmp_path):
    counts = np.r_[np.full(3, 2**62, dtype=np.int64), np.ones(93, dtype=np.int64)]
    assert int(counts.sum()) < 0  # what an int64 sum records
    path = tmp_path / "huge.npy"
    np.save(path, counts)
    loaded = read_count_file(path)
    assert loaded.meta["n_tokens"] == 3 * 2**62 + 93 == count_total(counts) == sum(int(c) for c in counts)
    assert count_sparsity(loaded).n_tokens == 3 * 2**62 + 93 and count_sparsity(loaded).reliable


def test_sparse_counts_say_how_many_ids_were_unseen_not_a_rounded_share():
    from confidence_neurons.data.unigrams import UnigramCounts

    counts = np.zeros(49_152, dtype=np.int64)
    counts[:190] = 14
    counts[190:197] = 27  # 2,849 tokens over 197 ids: 48,955 ids never seen (99.6%)
    sparsity = count_sparsity(UnigramCounts(counts=counts))
    text = sparsity.problem()
    assert "2,849 tokens were counted for 49,152 token ids, so 48,955 ids were never seen" in text, text
    assert "100%" not in text
    assert "--flag-token-frequency" in sparsity.warning(flag_hint=True)
    assert "--flag-token-frequency" not in sparsity.warning(flag_hint=False)
    assert count_sparsity(UnigramCounts(counts=np.full(10, 100))).warning(flag_hint=True) is None


@pytest.mark.parametrize(("norm", "words"), [("LN", "final LayerNorm"), ("RMS", "final RMSNorm"), (None, "final norm")])
def test_fig2e_names_the_models_own_final_norm(norm, words):
    import pandas as pd

    neurons = pd.DataFrame(
        {
            "name": ["1.0", "1.1"],
            "rho": [0.9, 0.1],
            "ln_share": [0.8, 0.1],
            "abs_delta_entropy": [0.3, 0.01],
            "is_entropy_neuron": [True, False],
            "TE": [1.0, 0.1],
            "DE": [0.2, 0.1],
        }
    )
    fig = fig_rho_vs_ln_share(neurons, 2, norm)
    assert words in fig.layout.yaxis.title.text
    wrong = {"LN": "RMSNorm", "RMS": "LayerNorm", None: "LayerNorm"}[norm]
    assert wrong not in fig.layout.yaxis.title.text and wrong not in fig.layout.title.text


@pytest.mark.parametrize(
    ("qualifying", "words"),
    [
        (0, "no head has BOS attention > 0.6 and prefix score < 0.1, so there are no baseline heads (of the 6"),
        (1, "only 1 head meets BOS attention > 0.6 and prefix score < 0.1, fewer than the 6 baseline heads"),
        (2, "only 2 heads meet BOS attention > 0.6 and prefix score < 0.1"),
    ],
)
def test_too_few_baseline_heads_is_said_in_grammar(caplog, qualifying, words):
    prefix = torch.zeros(2, 4)
    prefix[1, 0] = 0.9  # the induction head
    bos = torch.zeros(2, 4)
    bos[1, 1 : 1 + qualifying] = 0.9  # qualifying heads in layer 1, beside the induction head (1, 0)
    with caplog.at_level(logging.WARNING):
        _, baseline = choose_heads(prefix, bos, n_induction=1, n_baseline=6)
    assert len(baseline) == qualifying
    said = [r.getMessage() for r in caplog.records]
    assert any(words in m for m in said), said
    assert not any(w in m for m in said for w in ("only 0", "1 heads", "1 baseline heads")), said


def test_an_unusable_cache_variable_is_named(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("CONFIDENCE_NEURONS_CACHE", str(blocker / "cache"))
    with pytest.raises(ToolkitError, match=r"^CONFIDENCE_NEURONS_CACHE=.*a-file/cache is not a writable directory"):
        check_cache_dir()
    monkeypatch.setenv("CONFIDENCE_NEURONS_CACHE", str(tmp_path / "new" / "cache"))
    assert check_cache_dir() == tmp_path / "new" / "cache" and not list((tmp_path / "new" / "cache").iterdir())


def test_settings_from_python_are_normalised_or_refused_like_flags(tmp_path):
    import json

    from confidence_neurons.errors import ConfigError
    from confidence_neurons.studies.scan import ScanConfig

    config = ScanConfig(n_seqs=np.int64(3), seed=np.int64(2), dataset=tmp_path)
    assert type(config.n_seqs) is int and config.dataset == str(tmp_path)
    assert json.loads(json.dumps(config.to_dict()))["n_seqs"] == 3
    for bad, words in (
        ({"n_seqs": np.float64("nan")}, "n_seqs = "),
        ({"unigram_max_tokens": 3.5}, "must be a whole number"),
        ({"token_filter": "some"}, "must be one of 'authors', 'toolkit', 'all'"),
        ({"batch_size": True}, "must be a whole number"),
    ):
        with pytest.raises(ConfigError, match=words):
            ScanConfig(**bad)


@pytest.mark.parametrize("nll", [float("nan"), 2.5])
def test_steer_gives_no_verdict_on_non_finite_numbers(nll):
    from types import SimpleNamespace

    import pandas as pd

    from confidence_neurons.report.steer import verdict

    table = pd.DataFrame(
        {
            "kind": ["clean", "temperature", "neuron dial"],
            "fitted": [False, True, True],
            "dial": ["", "", "1.3"],
            "alpha": [1.0, 1.0, 2.0],
            "T": [1.0, 1.2, 1.0],
            "fit_nll": [3.0, 2.9, 2.8],
            "nll": [3.0, 2.9, nll],
            "ece": [0.05, 0.02, 0.03],
            "brier": [0.5, 0.4, 0.45],
        }
    )
    said = verdict(SimpleNamespace(table=table, settings={"model": "tiny"}))
    if np.isfinite(nll):
        assert said.startswith("Temperature scaling calibrates better"), said
    else:
        assert said.startswith("No verdict: some of the numbers below are not finite"), said
