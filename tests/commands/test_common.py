"""A run that stops half-way loses nothing: kill -9 or Ctrl-C, then the same command, gives the
uninterrupted result; a second process on the same --out is refused; a failure is recorded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

import confidence_neurons.studies.scan as scan_study
from confidence_neurons.cli import main
from tests.tiny import assert_same_table

# Each finished chunk is followed by a pause, so that the test can stop the run between chunks.
DRIVER = textwrap.dedent("""
    import sys, time
    from confidence_neurons.rundir import CheckpointStore
    save = CheckpointStore.save
    def slow_save(self, *args, **kwargs):
        save(self, *args, **kwargs)
        time.sleep(0.4)
    CheckpointStore.save = slow_save
    from confidence_neurons.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _argv(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        "scan",
        "--model",
        str(model),
        "--dataset",
        str(corpus),
        "--n-seqs",
        "4",
        "--seq-len",
        "32",
        "--neuron-chunk",
        "8",
        "--out",
        str(out),
        "--quiet",
    ]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for_chunks(out: Path, proc: subprocess.Popen, n: int = 2, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while len(list((out / "checkpoints").glob("sweep_*.npz"))) < n:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def reference(tiny_model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(_argv(tiny_model, corpus, out)) == 0
    return pd.read_parquet(out / "neurons.parquet")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_stopped_run_resumes_to_the_uninterrupted_result(
    tiny_model,
    corpus,
    tmp_path,
    reference,
    sig,
    capsys,
):
    out = tmp_path / "run"
    proc = _start(_argv(tiny_model, corpus, out))
    _wait_for_chunks(out, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    done = len(list((out / "checkpoints").glob("sweep_*.npz")))
    assert 2 <= done < 16, "stopped half-way"
    status = json.loads((out / "config.json").read_text())["status"]
    if sig == signal.SIGINT:
        assert (
            proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
        )
        assert status == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL and status == "running"
    capsys.readouterr()
    assert main(_argv(tiny_model, corpus, out)) == 0
    assert f"resumed: reused {done} finished sweep chunks" in capsys.readouterr().out
    assert_same_table(pd.read_parquet(out / "neurons.parquet"), reference)  # identical on the C and torch kernels
    assert json.loads((out / "config.json").read_text())["status"] == "complete"


def test_a_second_process_on_the_same_out_is_refused(tiny_model, corpus, tmp_path, reference, capsys):
    out = tmp_path / "run"
    first = _start(_argv(tiny_model, corpus, out))
    _wait_for_chunks(out, first, n=1)
    assert main(_argv(tiny_model, corpus, out)) == 2
    assert "is in use by another confidence-neurons process" in capsys.readouterr().err
    assert first.wait(timeout=180) == 0
    assert_same_table(pd.read_parquet(out / "neurons.parquet"), reference)  # identical on the C and torch kernels
    assert not [p for p in out.rglob("*.tmp")], "no temporary file is left"


def test_two_runs_of_one_scan_are_byte_identical(tiny_model, corpus, tmp_path, reference):
    for name in ("a", "b"):
        assert main(_argv(tiny_model, corpus, tmp_path / name)) == 0
    for table in ("neurons.parquet", "neurons.csv", "token_metrics.parquet", "cos_sv.npy", "tokens.npy"):
        assert (tmp_path / "a" / table).read_bytes() == (tmp_path / "b" / table).read_bytes(), table


def test_a_failure_during_the_run_is_exit_1_and_recorded(tiny_model, corpus, tmp_path, monkeypatch, capsys):
    def broken_sweep(*args, **kwargs):
        raise RuntimeError("boom in the sweep")

    monkeypatch.setattr(scan_study, "sweep", broken_sweep)
    out = tmp_path / "run"
    assert main(_argv(tiny_model, corpus, out)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the run failed (RuntimeError: boom in the sweep)" in err
    assert "records it as failed" in err and "--debug" in err
    record = json.loads((out / "config.json").read_text())
    assert record["status"] == "failed" and "boom in the sweep" in record["traceback"]
    with pytest.raises(RuntimeError, match="boom"):
        main([*_argv(tiny_model, corpus, out), "--debug"])
