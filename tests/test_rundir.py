"""The run directory: the one writer of a run's files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from confidence_neurons.files import OutOfSpaceError
from confidence_neurons.rundir import CheckpointStore, RunDir, RunDirError

FP = {"model": "m", "seed": 0}


def test_open_creates_resumes_and_refuses(tmp_path):
    out = tmp_path / "run"
    rd = RunDir.open(out, kind="scan", fingerprint=FP)
    assert not rd.resumed and out.is_dir()
    rd.write_config(config={"seed": 0}, status="running")
    with pytest.raises(RunDirError, match="in use by another confidence-neurons process"):
        RunDir.open(out, kind="scan", fingerprint=FP)  # the lock is held until close()
    rd.close()
    again = RunDir.open(out, kind="scan", fingerprint=FP)
    assert again.resumed
    again.close()
    with pytest.raises(RunDirError, match="already holds a different run"):
        RunDir.open(out, kind="scan", fingerprint={**FP, "seed": 1})
    with pytest.raises(RunDirError, match="already holds a different run"):
        RunDir.open(out, kind="inspect", fingerprint=FP)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(RunDirError, match="holds no run"):
        RunDir.open(tmp_path / "other", kind="scan", fingerprint=FP)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file"):
        RunDir.open(tmp_path / "file", kind="scan", fingerprint=FP)


def test_config_records_merge_and_status(tmp_path):
    rd = RunDir.open(tmp_path, kind="scan", fingerprint=FP)
    rd.write_config(config={"seed": 0}, status="running")
    rd.set_status("complete", settings={"k": 3})
    record = json.loads((tmp_path / "config.json").read_text())
    assert record == {
        "kind": "scan",
        "fingerprint": FP,
        "config": {"seed": 0},
        "status": "complete",
        "settings": {"k": 3},
    }
    assert RunDir(tmp_path).read_config() == record


def test_tables_arrays_json_round_trip_with_no_temporary_files(tmp_path):
    rd = RunDir.open(tmp_path, kind="scan", fingerprint=FP)
    df = pd.DataFrame({"name": ["1.2", "1.3"], "TE": [0.5, np.nan], "flag": [True, False]})
    rd.table("neurons", df, csv=True)
    rd.array("tokens", np.arange(6).reshape(2, 3))
    rd.json("passages", [{"a": 1}])
    pd.testing.assert_frame_equal(rd.read_table("neurons"), df)
    pd.testing.assert_frame_equal(rd.read_csv("neurons", dtype={"name": str}), df)
    np.testing.assert_array_equal(rd.read_array("tokens"), np.arange(6).reshape(2, 3))
    assert rd.read_json("passages") == [{"a": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lock",
        "neurons.csv",
        "neurons.parquet",
        "passages.json",
        "tokens.npy",
    ]


def test_checkpoints_are_read_back_only_under_the_same_stamp(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.load("sweep_000000", {"format": 3}) is None
    store.save("sweep_000000", {"format": 3, "n": 5}, {"TE": np.ones(4)})
    np.testing.assert_array_equal(store.load("sweep_000000", {"format": 3, "n": 5})["TE"], np.ones(4))
    assert store.load("sweep_000000", {"format": 3, "n": 6}) is None
    assert store.load("sweep_000000", {"format": 2, "n": 5}) is None
    assert sorted(p.name for p in store.folder.iterdir()) == ["manifest.jsonl", "sweep_000000.npz"]


def test_a_line_torn_by_a_crash_costs_only_its_own_chunk(tmp_path):
    CheckpointStore(tmp_path).save("a", {"n": 1}, {"TE": np.ones(2)})
    with open(tmp_path / "manifest.jsonl", "a") as fh:
        fh.write('{"name": "b", "byt')  # the process died mid-line
    CheckpointStore(tmp_path).save("c", {"n": 1}, {"TE": np.zeros(2)})
    again = CheckpointStore(tmp_path)
    np.testing.assert_array_equal(again.load("a", {"n": 1})["TE"], np.ones(2))
    np.testing.assert_array_equal(again.load("c", {"n": 1})["TE"], np.zeros(2))
    assert not again.problems


def test_a_full_disk_is_one_sentence_and_the_failure_is_still_recorded(tmp_path, monkeypatch):
    rd = RunDir.open(tmp_path / "run", kind="scan", fingerprint=FP)
    rd.write_config(config={"seed": 0}, status="running")
    full = shutil.disk_usage(tmp_path)._replace(free=0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    with pytest.raises(
        OutOfSpaceError,
        match=r"^not enough disk space for neurons.parquet in .*: it needs .* and 0 bytes is free; free some space",
    ):
        rd.table("neurons", pd.DataFrame({"TE": [0.5]}))
    rd.set_status("failed", error="out of space")  # atomic_write refuses: overwritten in place instead
    assert json.loads((tmp_path / "run" / "config.json").read_text())["status"] == "failed"
    assert not list((tmp_path / "run").glob("*.tmp"))
    rd.close()
