"""The study file, the matched-neuron comparison, the chunk split, and a study without Ray (in-process)."""

from __future__ import annotations

import json
import logging
import re
import sys

import numpy as np
import pandas as pd
import pytest

from confidence_neurons.cli import main
from confidence_neurons.commands import load_run
from confidence_neurons.commands import study as S
from confidence_neurons.errors import ConfigError
from confidence_neurons.study import runner
from confidence_neurons.study.matched import match, training_step
from confidence_neurons.study.sharded import split_chunks
from confidence_neurons.study.spec import read_study
from tests.study.conftest import study_toml


def _write(tmp_path, text: str):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_every_model_revision_and_corpus_is_one_scan(tmp_path):
    text = """
[scan]
n_seqs = 3
seq_len = 32

[[models]]
model = "EleutherAI/pythia-410m"
revisions = ["step1000", "step143000"]

[[models]]
model = "base/dir"
label = "base"
dtype = "bfloat16"

[[corpora]]
dataset = "NeelNanda/pile-10k"
label = "pile"

[[corpora]]
dataset = "texts/"
seed = 3
"""
    study = read_study(_write(tmp_path, text))
    got = [(t.model_label, t.revision, t.corpus_label) for t in study.tasks]
    assert got == [
        ("pythia-410m", "step1000", "pile"),
        ("pythia-410m", "step143000", "pile"),
        ("pythia-410m", "step1000", "texts"),
        ("pythia-410m", "step143000", "texts"),
        ("base", None, "pile"),
        ("base", None, "texts"),
    ]
    first, last = study.tasks[0], study.tasks[-1]
    assert (
        first.config.revision == "step1000"
        and first.config.n_seqs == 3
        and first.config.dataset == "NeelNanda/pile-10k"
    )
    assert first.folder == "pythia-410m@step1000--pile" and first.config.dtype == "auto"
    assert last.config.dtype == "bfloat16" and last.config.seed == 3 and last.folder == "base--texts"
    assert len({t.folder for t in study.tasks}) == len(study.tasks)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[models]]\nlabel = 'x'\n", "has no model"),
        ("[scan]\nmodel = 'x'\n[[models]]\nmodel = 'y'\n", "which the study decides per scan"),
        ("[[models]]\nmodel = 'y'\nn_seq = 3\n", "neither model keys nor scan settings: n_seq"),
        ("[[models]]\nmodel = 'y'\nrevisions = 'step1'\n", "revisions must be a non-empty list"),
        ("[[models]]\nmodel = 'a/m'\n[[models]]\nmodel = 'b/m'\n", "gives two scans the same folder"),
        ("[models]\nmodel = 'y'\n", "must be an array of tables"),
        ("[study]\n", "sections a study does not know: study"),
        ("[scan]\nn_seqs = 0\n[[models]]\nmodel = 'y'\n", "n_seqs = 0 must be at least 1"),
        ("models = [", "is not valid TOML"),
        ("", "names no model"),
        ("[[models]]\nmodel = 'y'\n[[corpora]]\ndataset = 'd'\nseq_len = 3\n", "a corpus does not take: seq_len"),
    ],
)
def test_a_bad_study_file_is_one_sentence_naming_it(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        read_study(path)
    assert str(path) in str(info.value)


def test_cli_refuses_a_missing_study_file_with_exit_2(tmp_path, capsys):
    assert main(["study", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nope.toml does not exist" in err and not (tmp_path / "out").exists()


def test_training_steps_are_read_from_revisions():
    assert training_step("step143000") == 143000 and training_step("ckpt-20") == 20 and training_step("300") == 300
    assert training_step("main") is None and training_step(None) is None and training_step("v1-step") is None


def _table(flags: list[int], rho: float) -> pd.DataFrame:
    n = 6
    return pd.DataFrame(
        {
            "neuron": np.arange(n),
            "name": [f"1.{i}" for i in range(n)],
            "rho": np.full(n, rho),
            "TE": np.linspace(0.1, 0.6, n),
            "DE": np.linspace(0.05, 0.3, n),
            "ln_share": np.full(n, 0.5),
            "is_entropy_neuron": np.isin(np.arange(n), flags),
            "is_token_frequency_neuron": np.zeros(n, dtype=bool),
        }
    )


def test_matched_neurons_order_by_step_and_overlap_is_iou():
    m = match("g", ["late", "early"], ["step20", "step10"], [_table([1, 2, 3], 0.2), _table([2, 3, 4, 5], 0.1)])
    assert m.labels == ["early", "late"]
    ent = m.overlap[m.overlap["set"] == "entropy"].iloc[0]
    # {2,3,4,5} vs {1,2,3}: intersection 2, union 5 (counts: exact by construction)
    assert (ent["label_a"], ent["n_a"], ent["n_b"], ent["n_both"]) == ("early", 4, 3, 2)
    assert ent["iou"] == pytest.approx(2 / 5)
    tf = m.overlap[m.overlap["set"] == "token_frequency"].iloc[0]
    assert np.isnan(tf["iou"])  # both empty
    # the top neurons are flagged somewhere, ranked by their largest TE x (1 - DE/TE): 5, 4, 3, 2, 1
    assert m.top == ["1.5", "1.4", "1.3", "1.2", "1.1"]
    early = m.neurons[m.neurons["label"] == "early"]
    assert (early["step"] == 10).all() and (early["order"] == 0).all() and early["rho"].iloc[0] == pytest.approx(0.1)


def test_split_chunks_covers_every_chunk_once_in_order():
    starts = list(range(0, 1536, 128))
    for workers in (1, 2, 5, 12, 40):
        plan = split_chunks(starts, workers)
        assert [s for part in plan for s in part] == starts
        assert len(plan) == min(workers, len(starts)) and all(plan)
        assert max(map(len, plan)) - min(map(len, plan)) <= 1


def test_without_ray_the_study_runs_in_process_and_says_how_to_parallelise(
    models, corpus, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(runner, "ray_available", lambda: False)
    path = _write(tmp_path, study_toml(models, corpus, archs=("gpt2",)))
    with caplog.at_level(logging.WARNING):
        result = S.run(S.StudyConfig(study=str(path)), tmp_path / "out", progress=False)
    assert "pip install 'confidence-neurons[ray]'" in caplog.text
    assert list(result.table["status"]) == ["complete", "complete"]
    assert list(result.table["revision"]) == ["step100", "step200"]
    (m,) = result.matched
    assert m.labels == ["gpt2@step100 / words", "gpt2@step200 / words"]
    # the matched table holds each scan's own numbers, neuron by neuron
    for label, folder in zip(result.table["label"], result.table["folder"]):
        own = pd.read_parquet(f"{folder}/neurons.parquet")
        mine = m.neurons[m.neurons["label"] == label].sort_values("neuron")
        np.testing.assert_allclose(mine["TE"].to_numpy(), own["TE"].to_numpy(), rtol=1e-7)
        np.testing.assert_array_equal(mine["is_entropy_neuron"].to_numpy(), own["is_entropy_neuron"].to_numpy())
    out = tmp_path / "out"
    for name in ("config.json", "report.html", "scans.csv", "models.csv", "matched_neurons.parquet"):
        assert (out / name).is_file(), name
    assert (out / "figures" / "study_1_rho.png").is_file()
    assert "gpt2@step200" in (out / "report.html").read_text()
    assert list(result.comparison.table["label"]) == list(result.table["label"])
    # the typed result reads back from the folder
    loaded = load_run(out)
    assert isinstance(loaded, S.StudyResult) and list(loaded.table["label"]) == list(result.table["label"])
    assert [x.top for x in loaded.matched] == [m.top] and len(loaded.comparison.table) == 2
    np.testing.assert_allclose(loaded.matched[0].neurons["TE"], m.neurons["TE"], rtol=1e-7)


def test_ctrl_c_in_process_leaves_the_study_resumable(models, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "ray_available", lambda: False)

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_scan_task", stop)
    path = _write(tmp_path, study_toml(models, corpus, archs=("gpt2",)))
    assert main(["study", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert record["status"] == "interrupted"


def test_without_ray_scan_ray_is_refused_before_anything_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["scan", "--ray", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--ray needs Ray, which is not installed; pip install 'confidence-neurons[ray]'" in err
    assert not (tmp_path / "x").exists()
