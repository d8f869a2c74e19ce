"""Studies and sharded sweeps on a real local Ray (two worker CPUs, one session for the module): a
study of two tiny models x two revisions x one corpus, its rerun and lock, a worker killed mid-scan,
and the sharded sweep against the plain one.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from confidence_neurons.commands import study as S
from confidence_neurons.commands.scan import run as run_scan
from confidence_neurons.rundir import RunDir, RunDirError
from confidence_neurons.studies.scan import ScanConfig
from tests.study.conftest import SCAN, study_toml
from tests.tiny import widened

ray = pytest.importorskip(
    "ray", reason="Ray is an optional extra: pip install 'confidence-neurons[ray]' (make test has it)"
)

#: Sweep columns of the neuron table (analysis.table.NEURON_COLUMNS) that the sweep computes.
SWEEP_COLUMNS = ("TE", "DE", "ln_share", "mean_delta_loss", "abs_delta_entropy", "top1_change_frac", "DE_freq")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def study_run(ray_local, models, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    path = root / "study.toml"
    path.write_text(study_toml(models, corpus))
    result = S.run(S.StudyConfig(study=str(path)), root / "out", progress=False)
    return path, root / "out", result


def kill_once_mid_scan(marker: Path):
    """A task hook: on the first attempt anywhere, SIGKILL the worker right after it checkpoints its
    second sweep chunk (the marker file records that the kill happened).
    """

    def hook():
        from confidence_neurons.rundir import CheckpointStore

        save = CheckpointStore.save

        def save_then_die(self, name, stamp, arrays):
            save(self, name, stamp, arrays)
            if name == "sweep_000032" and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        CheckpointStore.save = save_then_die

    return hook


def test_a_study_runs_every_scan_on_ray_and_compares_them(study_run):
    _, out, result = study_run
    t = result.table
    assert list(t["status"]) == ["complete"] * 4
    assert list(t["label"]) == [f"{a}@{r} / words" for a in ("gpt2", "neox") for r in ("step100", "step200")]
    assert not (t["pid"] == os.getpid()).any()  # every scan ran in a Ray worker
    for row in t.itertuples():
        record = json.loads((Path(row.folder) / "config.json").read_text())
        assert record["status"] == "complete" and record["settings"]["revision"] == row.revision
        assert Path(row.folder).parent == out / "scans"
    record = json.loads((out / "config.json").read_text())
    assert record["kind"] == "study" and record["status"] == "complete"
    assert record["study"]["models"][0]["revisions"] == ["step100", "step200"]
    # scans of one architecture are matched by index; the two architectures are not mixed
    assert [m.labels for m in result.matched] == [list(t["label"][:2]), list(t["label"][2:])]
    for m in result.matched:
        assert sorted(m.neurons["step"].unique()) == [100, 200] and len(m.overlap) == 2
    overlap = pd.read_csv(out / "flagged_overlap.csv")
    assert len(overlap) == 4 and set(overlap["set"]) == {"entropy", "token_frequency"}
    assert len(result.comparison.table) == 4
    for stem in ("study_1_rho", "study_2_ln_share", "fig6_spectra"):
        assert (out / "figures" / f"{stem}.png").is_file()
    assert "neox@step200" in (out / "report.html").read_text()


def test_a_rerun_skips_finished_scans(study_run):
    path, out, first = study_run
    stamps = {f: (Path(f) / "neurons.parquet").stat().st_mtime_ns for f in first.table["folder"]}
    again = S.run(S.StudyConfig(study=str(path)), out, progress=False)
    assert list(again.table["status"]) == ["skipped"] * 4
    assert stamps == {f: (Path(f) / "neurons.parquet").stat().st_mtime_ns for f in again.table["folder"]}


def test_a_second_study_on_the_same_folder_is_refused(study_run):
    path, out, _ = study_run
    held = RunDir(out)._lock()  # as a running study holds it
    try:
        with pytest.raises(RunDirError, match="in use by another confidence-neurons process"):
            S.run(S.StudyConfig(study=str(path)), out, progress=False)
    finally:
        held.close()


def test_a_worker_killed_mid_scan_is_retried_and_resumes_to_the_same_numbers(study_run, models, corpus, tmp_path):
    _, _, uninterrupted = study_run
    path = tmp_path / "study.toml"
    path.write_text(study_toml(models, corpus, archs=("gpt2",), revisions=("step200",)))
    marker = tmp_path / "killed"
    result = S.run(S.StudyConfig(study=str(path)), tmp_path / "out", progress=False, hook=kill_once_mid_scan(marker))
    assert marker.is_file()  # a worker was killed
    (row,) = result.table.itertuples()
    assert row.status == "complete" and row.pid != int(marker.read_text())  # finished by another worker
    record = json.loads((Path(row.folder) / "config.json").read_text())
    assert record["settings"]["sweep_chunks_reused"] == 2  # the retry resumed from the two saved chunks
    mine = pd.read_parquet(Path(row.folder) / "neurons.parquet")
    ref_folder = uninterrupted.table.set_index("label").loc["gpt2@step200 / words", "folder"]
    ref = pd.read_parquet(Path(ref_folder) / "neurons.parquet")
    for col in SWEEP_COLUMNS + ("rho",):
        np.testing.assert_allclose(mine[col], ref[col], err_msg=col, **widened(rtol=1e-6, atol=1e-12))
    assert (mine["is_entropy_neuron"] == ref["is_entropy_neuron"]).all()


def test_the_sharded_sweep_equals_the_plain_scan(ray_local, models, corpus, tmp_path):
    common = dict(model=str(models["gpt2"]), revision="step100", dataset=str(corpus), **SCAN)
    plain = run_scan(ScanConfig(**common), tmp_path / "plain", progress=False)
    sharded = run_scan(ScanConfig(**common, ray=True, ray_workers=2), tmp_path / "sharded", progress=False)
    shards = sharded.settings["sweep_shards"]
    assert (shards["workers"], shards["chunks"], shards["chunks_reused"], shards["merge_reused"]) == (2, 4, 0, 4)
    assert sharded.settings["sweep_chunks_reused"] == 0
    # Each neuron chunk is computed by the same code on the same token chunks (the workers read the scan's
    # own memory-mapped activations) and read back from checkpoints; the workers run with one thread
    # and this process with all of its own, and torch's multithreaded float64 sums round by thread
    # count, so the tables agree to float tolerance (bit-identical on this tiny model here; the
    # benchmark on SmolLM2 found 4.8e-07 at most).
    tol = widened(rtol=1e-5, atol=1e-7)  # wider on the compiled kernel, which rounds by what it compiled before
    for col in SWEEP_COLUMNS:
        np.testing.assert_allclose(sharded.neurons[col], plain.neurons[col], err_msg=col, **tol)
    for col in ("is_entropy_neuron", "is_token_frequency_neuron", "name", "rho"):
        assert (sharded.neurons[col] == plain.neurons[col]).all(), col  # rho: weights only, not the sweep


def test_ctrl_c_cancels_every_task_and_the_study_says_how_to_resume(study_run, models, corpus, tmp_path, monkeypatch):
    path = tmp_path / "study.toml"
    path.write_text(study_toml(models, corpus, archs=("neox",)))
    cancelled = []
    real_cancel = ray.cancel

    def interrupted_wait(*args, **kwargs):
        raise KeyboardInterrupt

    def spy_cancel(ref, **kwargs):
        cancelled.append(kwargs.get("force"))
        real_cancel(ref, **kwargs)

    monkeypatch.setattr(ray, "wait", interrupted_wait)
    monkeypatch.setattr(ray, "cancel", spy_cancel)
    with pytest.raises(KeyboardInterrupt):
        S.run(S.StudyConfig(study=str(path)), tmp_path / "out", progress=False)
    assert cancelled == [True, True]  # both scans' tasks, forcefully
    record = json.loads((tmp_path / "out" / "config.json").read_text())
    assert record["status"] == "interrupted" and "rerun the same command to resume" in record["error"]


def test_a_killed_shard_worker_is_retried_and_the_merge_is_the_plain_sweep(ray_local, models, corpus, tmp_path):
    from confidence_neurons.analysis.sweep import sweep
    from confidence_neurons.models.final_layer import final_layer
    from confidence_neurons.models.loading import load_model
    from confidence_neurons.rundir import CheckpointStore
    from confidence_neurons.study.sharded import open_cache, sharded_sweep

    common = dict(model=str(models["gpt2"]), revision="step200", dataset=str(corpus), **SCAN)
    plain = run_scan(ScanConfig(**common), tmp_path / "plain", progress=False)
    layer = final_layer(load_model(str(models["gpt2"]), revision="step200"))
    store = RunDir(tmp_path / "plain").activations
    prefix = "analysed_" if (store.folder / "analysed_acts.npy").is_file() else ""
    marker = tmp_path / "killed"

    def kill_first_attempt():
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    chunks = CheckpointStore(tmp_path / "chunks")
    mean = torch.tensor(plain.neurons["mean_activation"].to_numpy(), dtype=torch.float32)  # the scan's ablation mean
    kw = dict(neuron_chunk=SCAN["neuron_chunk"], token_chunk=256, mean_act=mean)
    record = sharded_sweep(
        layer, store.folder, prefix, 16, chunks, freq=None, workers=2, progress=False, hook=kill_first_attempt, **kw
    )
    assert marker.is_file() and (record["workers"], record["chunks"]) == (2, 4)
    merged = sweep(layer, open_cache(store.folder, prefix, 16), checkpoints=chunks, progress=False, **kw)
    assert merged.chunks_reused == 4
    for field in ("TE", "DE"):  # the scan's sweep also took DE_freq: same code path for TE and DE, to float tolerance
        np.testing.assert_allclose(
            getattr(merged, field).numpy(), plain.neurons[field].to_numpy(), **widened(rtol=1e-6, atol=0.0)
        )
