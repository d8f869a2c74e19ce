"""`compare`: finished scans side by side (table, Fig. 6-8, report), and its refusals."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import confidence_neurons as cn
from confidence_neurons.cli import main
from confidence_neurons.commands import compare as C
from confidence_neurons.commands.scan import run as run_scan
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.studies import compare as SC
from confidence_neurons.studies.scan import ScanConfig
from tests.tiny import N_SPECIAL, VOCAB_SIZE, make_tiny_dir


def _scan(model: Path, corpus: Path, out: Path, seed: int = 0) -> Path:
    run_scan(ScanConfig(model=str(model), dataset=str(corpus), n_seqs=2, seq_len=16, seed=seed), out, progress=False)
    return out


@pytest.fixture(scope="module")
def corpus_b(tmp_path_factory) -> Path:
    """Another corpus of the same words, with the opposite frequency profile."""
    rng = random.Random(1)
    words = [f"w{i}" for i in range(VOCAB_SIZE - N_SPECIAL)]
    weights = [1 / (len(words) - r) for r in range(len(words))]
    folder = tmp_path_factory.mktemp("corpus_b")
    for d in range(4):
        (folder / f"doc{d}.txt").write_text(" ".join(rng.choices(words, weights, k=300)))
    return folder


@pytest.fixture(scope="module")
def neox_model(tmp_path_factory) -> Path:
    return make_tiny_dir("neox", tmp_path_factory.mktemp("neox"), seed=3)


@pytest.fixture(scope="module")
def scans(tiny_model, neox_model, corpus, corpus_b, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("scans")
    return [
        _scan(tiny_model, corpus, root / "gpt2_a"),
        _scan(tiny_model, corpus_b, root / "gpt2_b"),
        _scan(neox_model, corpus, root / "neox"),
    ]


@pytest.fixture(scope="module")
def compared(scans, tmp_path_factory) -> cn.CompareResult:
    return C.run(C.CompareConfig(runs=tuple(map(str, scans))), tmp_path_factory.mktemp("cmp") / "out")


def test_one_row_per_scan_with_the_scans_own_numbers(compared, scans):
    table = compared.table
    assert len(table) == 3 and list(table["run_dir"]) == [str(s) for s in scans]
    # the same model on two corpora is told apart by its corpus
    assert table["label"].is_unique
    assert table["label"][0].startswith(Path(table["model"][0]).name + " / corpus")
    assert table["label"][2] == Path(table["model"][2]).name
    for row, path in zip(table.itertuples(), scans):
        scan = cn.load_run(path)
        neurons = scan.neurons
        assert row.k == scan.k and row.d_mlp == len(neurons) and row.d_model == len(scan.singular_values)
        assert row.n_entropy == int(neurons["is_entropy_neuron"].sum())
        assert row.n_token_frequency == int(neurons["is_token_frequency_neuron"].sum())
        # top entropy neuron: the flagged one with the largest TE, else the best TE x (1 - DE/TE)
        flagged = neurons[neurons["is_entropy_neuron"]]
        score = flagged["TE"] if len(flagged) else neurons["TE"] * neurons["ln_share"].clip(lower=0)
        best = neurons.loc[score.idxmax()]
        assert row.top_entropy == best["name"] and row.top_entropy_flagged == bool(len(flagged))
        assert row.top_entropy_rho == pytest.approx(best["rho"]) and row.top_entropy_ln_share == pytest.approx(
            best["ln_share"]
        )
        # percentiles by counting (no ties among float norms)
        norm = "norm_written" if "norm_written" in neurons else "w_out_norm"
        lv = "logit_var_written" if "logit_var_written" in neurons else "logit_var"
        assert row.top_entropy_norm_pct == pytest.approx(100 * (neurons[norm] <= best[norm]).mean())
        assert row.top_entropy_logit_var_pct == pytest.approx(100 * (neurons[lv] <= best[lv]).mean())
        tf = neurons[neurons["is_token_frequency_neuron"]]
        tf_score = tf["TE"] if len(tf) else neurons["TE"] * neurons["freq_share"].clip(lower=0)
        assert row.top_tf == neurons.loc[tf_score.idxmax(), "name"]


def test_spectrum_and_its_drop_match_a_fresh_svd_of_W_U(compared, scans):
    for path, label in zip(scans, compared.labels):
        scan = cn.load_run(path)
        layer = final_layer(cn.load_model(scan.settings["model"]))
        sv = torch.linalg.svdvals(layer.W_U.double()).numpy()  # descending
        got = compared.spectra[compared.spectra["label"] == label]
        np.testing.assert_allclose(got["singular_value"].to_numpy(), sv, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["rel_value"].to_numpy() * np.median(sv), sv, rtol=1e-4, atol=1e-5)
        k = scan.k
        expected = np.median(sv[len(sv) - k :]) / np.median(sv)
        row = compared.table[compared.table["label"] == label].iloc[0]
        assert row["sv_drop"] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_spectrum_drop_by_hand():
    # bottom 2 of [4, 3, 2, 1, 0.1, 0]: median 0.05; median of all (2 + 1) / 2 = 1.5
    assert SC.spectrum_drop(np.array([0.0, 4, 1, 3, 0.1, 2]), 2) == pytest.approx(0.05 / 1.5)


def test_percentiles_come_from_the_scan_when_it_has_them():
    old = pd.DataFrame({"w_out_norm": [3.0, 1.0, 2.0, 4.0]}, index=[10, 11, 12, 13])  # a scan from before norm_pct
    got = SC._percentile(old, "norm_pct", "norm_written", "w_out_norm")
    assert list(got.index) == [10, 11, 12, 13]
    np.testing.assert_allclose(got, [75, 25, 50, 100])
    old["norm_written"] = [1.0, 2.0, 3.0, 4.0]  # the written direction wins over the raw one
    np.testing.assert_allclose(SC._percentile(old, "norm_pct", "norm_written", "w_out_norm"), [25, 50, 75, 100])
    old["norm_pct"] = [5.0, 6.0, 7.0, 8.0]  # a newer scan's own column is taken as it is
    np.testing.assert_allclose(SC._percentile(old, "norm_pct", "norm_written", "w_out_norm"), [5, 6, 7, 8])


def test_figures_share_their_axes_and_are_written(compared):
    out = compared.run_dir
    figures = compared.figures()
    fig7 = sorted(s for s in figures if s.startswith("fig7_"))
    fig8 = sorted(s for s in figures if s.startswith("fig8_"))
    assert "fig6_spectra" in figures and len(fig7) == 3 and len(fig8) == 3
    for stem in figures:
        assert (out / "figures" / f"{stem}.png").is_file() and (out / "figures" / f"{stem}.html").is_file()
    for group in (fig7, fig8):
        ranges = {(tuple(figures[s].layout.xaxis.range), tuple(figures[s].layout.yaxis.range)) for s in group}
        assert len(ranges) == 1
    # every point of the flagged neurons lies inside the shared Fig. 7 range
    (x_range, y_range) = ranges_7 = (figures[fig7[0]].layout.xaxis.range, figures[fig7[0]].layout.yaxis.range)
    flagged = compared.neurons[compared.neurons["is_entropy_neuron"]]
    assert ((flagged["rho"] >= x_range[0]) & (flagged["rho"] <= x_range[1])).all() and ranges_7
    assert ((flagged["ln_share"] >= y_range[0]) & (flagged["ln_share"] <= y_range[1])).all()
    cmins = {figures[s].layout.coloraxis.cmin for s in fig7}
    assert len(cmins) == 1
    fig6 = figures["fig6_spectra"]
    assert [t.name for t in fig6.data] == compared.labels
    for trace in fig6.data:
        assert max(trace.x) < 1 and min(trace.x) == 0 and np.median(trace.y) == pytest.approx(1.0)
    html = (out / "report.html").read_text()
    for text in ("Fig. 6", "Fig. 7", "Fig. 8", *compared.labels):
        assert text in html


def test_load_run_gives_back_the_comparison(compared):
    again = cn.load_run(compared.run_dir)
    assert isinstance(again, cn.CompareResult)
    pd.testing.assert_frame_equal(again.table, compared.table)
    pd.testing.assert_frame_equal(again.neurons, compared.neurons)
    assert set(again.figures()) == set(compared.figures())
    assert again.config == compared.config and "<table" in again._repr_html_()


def test_cli_with_labels_and_positional_runs(scans, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(scans[0]), str(scans[2]), "--labels", "small,neox", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "small" in printed and "neox" in printed and "report:" in printed
    assert pd.read_csv(out / "models.csv")["label"].tolist() == ["small", "neox"]
    assert json.loads((out / "config.json").read_text())["kind"] == "compare"
    # rerun repeats it from its record
    assert main(["rerun", str(out), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert pd.read_csv(tmp_path / "again" / "models.csv")["label"].tolist() == ["small", "neox"]


def test_default_out_names_the_comparison(scans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = C.CompareConfig(runs=(str(scans[0]), str(scans[1])))
    result = C.run(config)
    assert result.run_dir == C.default_out(config) and (tmp_path / result.run_dir / "report.html").is_file()


def _fake_run(src: Path, dest: Path, **changes) -> Path:
    dest.mkdir(parents=True)
    record = json.loads((src / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**record, **changes}))
    return dest


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda src, d: d.mkdir() or d, "holds no run"),
        (lambda src, d: d, "does not exist"),
        (lambda src, d: _fake_run(src, d, kind="inspect"), "holds an inspect run, not a scan"),
        (lambda src, d: _fake_run(src, d, status="running"), "not complete (status running)"),
        (lambda src, d: _fake_run(src, d, status="failed"), "not complete (status failed)"),
    ],
)
def test_refuses_what_is_not_a_complete_scan(scans, tmp_path, capsys, make, says):
    bad = make(scans[0], tmp_path / "bad")
    with pytest.raises(ConfigError, match=re.escape(says)) as exc:
        C.run(C.CompareConfig(runs=(str(scans[0]), str(bad))), tmp_path / "out")
    assert str(bad) in str(exc.value) and not (tmp_path / "out").exists()
    assert main(["compare", str(scans[0]), str(bad), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runs: compare takes complete scans only") and str(bad) in err


def test_names_every_bad_run_at_once(scans, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="2 of the runs are not") as exc:
        C.load_scans((str(scans[0]), str(tmp_path / "empty"), str(tmp_path / "missing")))
    assert "empty holds no run" in str(exc.value) and "missing does not exist" in str(exc.value)


def test_refuses_bad_settings(scans, tmp_path, capsys):
    with pytest.raises(ConfigError, match="at least two finished scans, got 1"):
        C.CompareConfig(runs=(str(scans[0]),))
    with pytest.raises(ConfigError, match="1 labels for 2 runs"):
        C.CompareConfig(runs=(str(scans[0]), str(scans[1])), labels=("a",))
    with pytest.raises(ConfigError, match="labels repeat"):
        C.CompareConfig(runs=(str(scans[0]), str(scans[1])), labels=("a", "a"))
    with pytest.raises(ConfigError, match="more than once"):
        C.load_scans((str(scans[0]), str(scans[0]) + "/"))
    before = sorted(p.name for p in scans[1].iterdir())
    with pytest.raises(ConfigError, match="is one of the scans"):
        C.run(C.CompareConfig(runs=(str(scans[0]), str(scans[1]))), scans[1])
    with pytest.raises(ConfigError, match="inside the scan"):
        C.run(C.CompareConfig(runs=(str(scans[0]), str(scans[1]))), scans[1] / "cmp")
    assert sorted(p.name for p in scans[1].iterdir()) == before
    assert main(["compare", str(scans[0]), "--quiet"]) == 2
    assert "error: --runs: compare needs at least two" in capsys.readouterr().err
    assert main(["compare", str(scans[0]), str(scans[1]), "--out", str(scans[1]), "--quiet"]) == 2
    assert "is one of the scans" in capsys.readouterr().err


def test_a_scan_that_lost_its_files_is_refused(scans, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(scans[1], broken)
    (broken / "neurons.parquet").unlink()
    with pytest.raises(ConfigError, match="marked complete but its files cannot be read"):
        C.load_scans((str(scans[0]), str(broken)))
