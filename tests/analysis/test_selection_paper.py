"""Selection as the paper selects: the Sec. 3.1 signature (norm and LogitVar percentiles), the top-n
by rho of the authors' induction code, |dKL| for token frequency neurons (Fig. 3b), sparse counts,
and the borderline list.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd
import pytest

from confidence_neurons.analysis.selection import (
    BORDERLINE_COLUMNS,
    EntropyNeuronRule,
    TokenFrequencyNeuronRule,
    borderline_neurons,
    percentile_rank,
    select_entropy_neurons,
    select_token_frequency_neurons,
)
from confidence_neurons.commands import flags as F
from confidence_neurons.errors import ConfigError
from confidence_neurons.studies.scan import ScanConfig

N = 20


def _table(**columns) -> pd.DataFrame:
    """20 ordinary neurons (rho 0.05, 1 - DE/TE 0.05, TE 1, nothing along v_freq); ``columns`` overrides."""
    base = {
        "name": [f"5.{i}" for i in range(N)],
        "w_out_norm": np.linspace(1.0, 2.0, N),
        "logit_var": np.linspace(0.2, 0.4, N),
        "rho": np.full(N, 0.05),
        "ln_share": np.full(N, 0.05),
        "TE": np.ones(N),
        "freq_share": np.full(N, 0.05),
        "abs_delta_kl": np.linspace(0.01, 0.02, N),
    }
    base.update(columns)
    return pd.DataFrame(base)


def _set(values: np.ndarray, **at: float) -> np.ndarray:
    out = np.array(values, dtype=float)
    for key, v in at.items():
        out[int(key[1:])] = v
    return out


def test_percentile_rank():
    pct = percentile_rank(np.array([3.0, 1.0, 2.0, 2.0, np.nan]))
    assert pct.tolist()[:4] == [100.0, 25.0, 75.0, 75.0] and np.isnan(pct.iloc[4])


def test_the_default_rule_is_unchanged_and_the_signature_is_opt_in():
    # neuron 0 writes into the null space and acts through the norm, but its norm is the smallest
    t = _table(
        rho=_set(np.full(N, 0.05), n0=0.9, n1=0.9),
        ln_share=_set(np.full(N, 0.05), n0=0.8, n1=0.8),
        TE=_set(np.ones(N), n0=5, n1=5),
        logit_var=_set(np.linspace(0.2, 0.4, N), n1=0.01),
        w_out_norm=_set(np.linspace(1.0, 2.0, N), n1=9.0),
    )
    assert select_entropy_neurons(t).index[select_entropy_neurons(t)].tolist() == [0, 1]
    strict = EntropyNeuronRule(min_norm_pct=90, max_logit_var_pct=10)
    assert select_entropy_neurons(t, strict).index[select_entropy_neurons(t, strict)].tolist() == [1]
    only_norm = EntropyNeuronRule(min_norm_pct=90)
    assert select_entropy_neurons(t, only_norm).tolist() == select_entropy_neurons(t, strict).tolist()
    assert "percentile >= 90" in strict.describe() and "percentile <= 10" in strict.describe()
    # the written statistics win over the raw ones when both are present
    t2 = t.assign(norm_written=_set(t["w_out_norm"], n0=9.0, n1=1.0))
    assert not select_entropy_neurons(t2, only_norm)[1] and select_entropy_neurons(t2, only_norm)[0]


def test_top_rho_takes_exactly_the_top_n_by_rho():
    rho = np.linspace(0.0, 0.95, N)
    rho[3] = rho[4] = 0.99  # a tie, broken by index
    t = _table(rho=rho, ln_share=np.zeros(N), TE=np.zeros(N))
    rule = EntropyNeuronRule(select="top-rho", top_n=3)
    flagged = select_entropy_neurons(t, rule)
    assert flagged.index[flagged].tolist() == [3, 4, 19], "ln_share and TE play no part"
    assert select_entropy_neurons(t, EntropyNeuronRule(select="top-rho", top_n=N + 5)).all()
    assert rule.describe() == "the top 3 neurons by rho"
    with_sig = EntropyNeuronRule(select="top-rho", top_n=3, min_norm_pct=90)
    assert select_entropy_neurons(t, with_sig).index[select_entropy_neurons(t, with_sig)].tolist() == [19]


def _tf_table() -> pd.DataFrame:
    """Neurons 0 and 1 are mediated by v_freq and strong; only 0 moves KL(P_freq || P_model) much."""
    return _table(
        freq_share=_set(np.full(N, 0.05), n0=0.8, n1=0.8),
        TE=_set(np.ones(N), n0=5, n1=5),
        abs_delta_kl=_set(np.linspace(0.01, 0.02, N), n0=1.0, n1=0.001),
    )


def test_token_frequency_neurons_need_a_large_dkl():
    t = _tf_table()
    flagged = select_token_frequency_neurons(t)
    assert flagged.index[flagged].tolist() == [0]
    off = select_token_frequency_neurons(t, TokenFrequencyNeuronRule(min_dkl_pct=0))
    assert off.index[off].tolist() == [0, 1]
    assert "|dKL| percentile >= 90" in TokenFrequencyNeuronRule().describe()


def test_sparse_counts_flag_nothing_unless_told():
    t = _tf_table()
    assert not select_token_frequency_neurons(t, counts_reliable=False).any()
    forced = TokenFrequencyNeuronRule(flag_sparse_counts=True)
    assert select_token_frequency_neurons(t, forced, counts_reliable=False).equals(select_token_frequency_neurons(t))


def test_entropy_neurons_stay_out_of_the_token_frequency_family():
    t = _tf_table().assign(is_entropy_neuron=[True] + [False] * (N - 1))
    assert not select_token_frequency_neurons(t).any()
    assert select_token_frequency_neurons(t, TokenFrequencyNeuronRule(exclude_entropy_neurons=False))[0]


def test_borderline_lists_near_misses_with_the_value_that_kept_them_out():
    t = _table(
        rho=_set(np.full(N, 0.05), n0=0.9, n1=0.22, n2=0.15, n3=0.22),
        ln_share=_set(np.full(N, 0.05), n0=0.8, n1=0.8, n2=0.8, n3=0.8, n4=0.8),
        TE=_set(np.ones(N), n0=5, n1=5, n2=5, n3=1.0, n4=5),
    )
    t = t.assign(rho=_set(t["rho"], n4=0.26), ln_share=_set(t["ln_share"], n4=0.27))
    # 0 passes; 1 misses rho by 12%; 2 misses rho by 40%; 3 misses rho and TE; 4 misses 1 - DE/TE by 10%
    out = borderline_neurons(t)
    assert list(out.columns) == BORDERLINE_COLUMNS
    assert out["name"].tolist() == ["5.4", "5.1"], "nearest first"
    row = out.set_index("name").loc["5.1"]
    assert row["family"] == "entropy" and row["criterion"].startswith("rho >=")
    assert row["value"] == pytest.approx(0.22) and row["threshold"] == pytest.approx(0.25)
    assert row["shortfall"] == pytest.approx(0.12)
    assert out.set_index("name").loc["5.4", "criterion"].startswith("1 - DE/TE")


def test_borderline_token_frequency_neurons_and_top_rho():
    t = _tf_table().assign(freq_share=lambda d: _set(d["freq_share"], n2=0.45), TE=lambda d: _set(d["TE"], n2=5))
    t = t.assign(abs_delta_kl=_set(t["abs_delta_kl"], n2=2.0))
    out = borderline_neurons(t, EntropyNeuronRule(), TokenFrequencyNeuronRule())
    tf = out[out["family"] == "token frequency"]
    assert tf["name"].tolist() == ["5.2"] and tf["value"].iloc[0] == pytest.approx(0.45)
    assert tf["shortfall"].iloc[0] == pytest.approx(0.1)
    assert borderline_neurons(t, EntropyNeuronRule(), TokenFrequencyNeuronRule(), counts_reliable=False).empty
    # neuron 1 misses only the |dKL| percentile, far below 90 (shortfall > 20%): not borderline
    assert "5.1" not in tf["name"].tolist()
    # top-rho: the next neuron by rho within 20% of the n-th is borderline
    rho = _set(np.full(N, 0.1), n0=0.9, n1=0.8, n2=0.7)
    out = borderline_neurons(_table(rho=rho), EntropyNeuronRule(select="top-rho", top_n=2))
    assert out["name"].tolist() == ["5.2"] and out["threshold"].iloc[0] == pytest.approx(0.8)


def test_bad_rule_settings_are_refused():
    with pytest.raises(ConfigError, match="percentile"):
        EntropyNeuronRule(min_norm_pct=120)
    with pytest.raises(ConfigError, match="percentile"):
        TokenFrequencyNeuronRule(min_dkl_pct=-1)
    with pytest.raises(ConfigError, match="top_n"):
        EntropyNeuronRule(select="top-rho", top_n=0)
    with pytest.raises(ConfigError, match="select"):
        EntropyNeuronRule(select="best")


def test_the_flags_reach_the_config():
    parser = argparse.ArgumentParser()
    F.add_options(parser, ScanConfig)
    args = parser.parse_args(
        [
            "--select",
            "top-rho",
            "--top-n",
            "12",
            "--min-norm-pct",
            "90",
            "--max-logit-var-pct",
            "10",
            "--tf-min-dkl-pct",
            "80",
            "--flag-token-frequency",
            "--padding",
            "authors",
        ]
    )
    config = F.options_from_args(ScanConfig, args)
    assert config.rule == EntropyNeuronRule(select="top-rho", top_n=12, min_norm_pct=90, max_logit_var_pct=10)
    assert config.tf_rule == TokenFrequencyNeuronRule(min_dkl_pct=80, flag_sparse_counts=True)
    assert config.padding == "authors"
    assert ScanConfig.from_dict(config.to_dict()) == config
    assert ScanConfig().padding == "exclude" and ScanConfig().rule.select == "rule"


def test_a_scan_with_sparse_counts_is_marked_and_flags_no_token_frequency_neuron(tiny_model, tmp_path, caplog):
    from confidence_neurons.commands.scan import write
    from confidence_neurons.models.loading import load_model
    from confidence_neurons.rundir import RunDir
    from confidence_neurons.studies.scan import scan

    corpus = tmp_path / "few_words.txt"
    corpus.write_text(" ".join(f"w{i % 15}" for i in range(3000)))  # 15 of 96 ids: most are never seen
    model = load_model(str(tiny_model))
    config = ScanConfig(dataset=str(corpus), n_seqs=2, seq_len=16, padding="authors")
    with caplog.at_level(logging.WARNING):
        result = scan(model, config, progress=False)
    warnings = [r for r in caplog.records if "too sparse" in r.getMessage()]
    assert len(warnings) == 1 and "--flag-token-frequency" in warnings[0].getMessage()
    s = result.settings
    assert s["token_frequency_reliable"] is False and s["unigram_padding"] == "authors"
    assert s["unigram_counts"]["zero_count_share"] > 0.5 and s["unigram_counts"]["tokens_counted"] == 3000
    t = result.neurons
    assert t["freq_share"].notna().all(), "the Sec. 4 columns are still computed"
    assert not t["is_token_frequency_neuron"].any()
    rd = RunDir.open(tmp_path / "run", kind="scan", fingerprint=result.config.fingerprint())
    write(rd, result)
    html = rd.report_path.read_text()
    assert "UNRELIABLE" in html and "Borderline neurons" in html and "abs_delta_kl (unreliable)" in html
    assert result.figures()["fig3b_freq_share_vs_dkl"].layout.title.text.startswith("UNRELIABLE")
    forced = ScanConfig(
        dataset=str(corpus),
        n_seqs=2,
        seq_len=16,
        tf_rule=TokenFrequencyNeuronRule(min_dkl_pct=0, min_freq_share=-1e9, min_te_ratio=0, flag_sparse_counts=True),
    )
    t2 = scan(model, forced, progress=False).neurons
    assert t2["is_token_frequency_neuron"].equals(~t2["is_entropy_neuron"])
