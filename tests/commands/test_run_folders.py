"""Run folders that cannot silently lie (issue 17, items 2 and 3).

A complete scan is copied, one of its stored pieces is damaged the way a tester did it, and the
same command is run on the copy: the damaged piece is named in one warning, recomputed, and the
table equals the undamaged run's. A full disk or a size that memory cannot hold is one sentence,
exit 2, config.json "failed", and the same command afterwards resumes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import confidence_neurons.commands.checks as checks
import confidence_neurons.files as files
from confidence_neurons.cli import main

N_CHUNKS = 4  # the tiny GPT-2's 128 neurons in chunks of 32


def _argv(model: Path, corpus: Path, out: Path, *, quiet: bool = True) -> list[str]:
    """The tiny scan; without ``quiet`` its warnings (the integrity findings) are logged."""
    return [
        "scan",
        "--model",
        str(model),
        "--dataset",
        str(corpus),
        "--n-seqs",
        "5",
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--neuron-chunk",
        "32",
        "--out",
        str(out),
    ] + (["--quiet"] if quiet else [])


@pytest.fixture(scope="module")
def complete(tiny_model, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("complete") / "run"
    assert main(_argv(tiny_model, corpus, out)) == 0
    return out


@pytest.fixture
def rerun(tiny_model, corpus, complete, tmp_path, capsys, caplog):
    """A copy of the complete run, and a function that reruns the scan on it: (exit code, stdout, stderr, warnings)."""
    copy = tmp_path / "run"
    shutil.copytree(complete, copy)
    (copy / ".lock").unlink(missing_ok=True)

    def again(out: Path = copy) -> tuple[int, str, str, list[str]]:
        capsys.readouterr()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            code = main(_argv(tiny_model, corpus, out, quiet=False))
        printed = capsys.readouterr()
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.name == "confidence_neurons.stores"
        ]
        return code, printed.out, printed.err, warnings

    return copy, again


def _same_table(out: Path, reference: Path) -> None:
    for table in ("neurons", "token_metrics"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / f"{table}.parquet"),
            pd.read_parquet(reference / f"{table}.parquet"),
            check_exact=False,
            rtol=1e-6,
            atol=1e-9,
        )


def _record(out: Path) -> dict:
    return json.loads((out / "config.json").read_text())


def _scale_in_place(path: Path, factor: float) -> None:
    """What the tester did: the array's values changed through a writable map, the file otherwise kept."""
    a = np.load(path, mmap_mode="r+")
    a[:] = a * factor
    a.flush()
    del a


def test_the_recorded_hashes_are_the_files_own(complete):
    """The store's per-batch sha256 (hashed from memory while writing) equals a plain hash of the rows read back."""
    meta = json.loads((complete / "activations" / "store.json").read_text())
    assert meta["complete"] and meta["n_batches"] == 3 and meta["done"] == 3
    for name in ("resid", "acts", "target"):
        a = np.load(complete / "activations" / f"{name}.npy")
        for b, (r0, r1) in enumerate(meta["batches"]):
            assert meta["digests"][name][b] == hashlib.sha256(np.ascontiguousarray(a[r0:r1]).tobytes()).hexdigest()
    lines = [json.loads(x) for x in (complete / "checkpoints" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(x["name"] for x in lines) == [f"sweep_{k:06d}" for k in range(0, 128, 32)]
    for x in lines:
        data = (complete / "checkpoints" / f"{x['name']}.npz").read_bytes()
        assert x["bytes"] == len(data) and x["sha256"] == hashlib.sha256(data).hexdigest()
        assert len(x["stamp"]["cache_sha256"]) == len(x["stamp"]["final_layer_sha256"]) == 64


def test_a_complete_run_reruns_as_already_complete(complete, rerun):
    out, again = rerun
    code, printed, err, warnings = again()
    assert code == 0 and not warnings, warnings
    assert f"already complete: verified and reused {N_CHUNKS} finished sweep chunks" in printed
    assert "resumed" not in printed
    record = _record(out)
    assert record["status"] == "complete" and record["settings"]["forward_from_store"] is True
    assert "integrity" not in record
    _same_table(out, complete)


def test_an_edited_checkpoint_array_is_named_and_recomputed(complete, rerun):
    out, again = rerun
    path = out / "checkpoints" / "sweep_000032.npz"
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files}
    arrays["TE"] = arrays["TE"] * 50  # the stamp kept
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    code, printed, err, warnings = again()
    assert code == 0
    assert warnings == [
        "checkpoints/sweep_000032.npz differs from the sha256 recorded when it was written (edited, truncated or "
        "damaged); recomputing it"
    ]
    assert f"reused {N_CHUNKS - 1} finished sweep chunks" in printed
    _same_table(out, complete)
    record = _record(out)
    assert record["status"] == "complete" and record["integrity"] == warnings


def test_a_truncated_checkpoint_is_named_and_recomputed(complete, rerun):
    out, again = rerun
    path = out / "checkpoints" / "sweep_000064.npz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, printed, err, warnings = again()
    assert code == 0 and len(warnings) == 1 and "checkpoints/sweep_000064.npz differs" in warnings[0]
    assert "Traceback" not in err and "BadZipFile" not in err
    _same_table(out, complete)
    assert _record(out)["status"] == "complete"
    code, printed, err, warnings = again()  # and the next rerun finds everything intact
    assert code == 0 and not warnings and f"reused {N_CHUNKS} finished sweep chunks" in printed


def test_a_deleted_checkpoint_and_a_deleted_manifest_are_named(complete, rerun):
    out, again = rerun
    (out / "checkpoints" / "sweep_000000.npz").unlink()
    code, printed, err, warnings = again()
    assert code == 0
    assert warnings == ["checkpoints/sweep_000000.npz is recorded in manifest.jsonl but missing; recomputing it"]
    _same_table(out, complete)
    (out / "checkpoints" / "manifest.jsonl").unlink()
    code, printed, err, warnings = again()
    assert code == 0 and len(warnings) == 1
    assert (
        "checkpoints/manifest.jsonl is missing, so the 4 checkpoint files beside it cannot be verified" in warnings[0]
    )
    assert "repaired: 1 damaged or unverifiable piece recomputed" in printed
    _same_table(out, complete)


def test_edited_activations_are_named_and_recomputed(complete, rerun):
    out, again = rerun
    _scale_in_place(out / "activations" / "acts.npy", 3.0)
    code, printed, err, warnings = again()
    assert code == 0
    assert warnings == [
        "activations/acts.npy differs in 3 of 3 batches from the sha256 recorded when they were written (edited or "
        "damaged); recomputing those batches"
    ]
    record = _record(out)
    assert record["settings"]["forward_from_store"] is False and record["integrity"] == warnings
    assert "already complete" not in printed and "repaired" in printed
    np.testing.assert_allclose(
        np.load(out / "activations" / "acts.npy"), np.load(complete / "activations" / "acts.npy"), rtol=1e-6
    )
    _same_table(out, complete)


def test_an_edited_target_is_named_and_only_its_batch_recomputed(complete, rerun, monkeypatch):
    out, again = rerun
    target = np.load(out / "activations" / "target.npy", mmap_mode="r+")
    target[20] = (target[20] + 1) % 96  # row 20: the first batch (rows 0-29: two sequences of 15 predictions)
    target.flush()
    del target
    import confidence_neurons.analysis.forward as forward

    batches = []
    real = forward._forward_batches
    monkeypatch.setattr(forward, "_forward_batches", lambda *a, **k: (batches.extend(a[5]), real(*a, **k))[1])
    code, printed, err, warnings = again()
    assert code == 0 and batches == [0], batches
    assert warnings == [
        "activations/target.npy differs in 1 of 3 batches from the sha256 recorded when they were written (edited "
        "or damaged); recomputing those batches"
    ]
    _same_table(out, complete)


def test_a_deleted_activation_file_rebuilds_the_store(complete, rerun):
    out, again = rerun
    (out / "activations" / "resid.npy").unlink()
    code, printed, err, warnings = again()
    assert code == 0 and warnings == ["activations/resid.npy is missing; recomputing the forward pass"]
    _same_table(out, complete)
    (out / "activations" / "acts.npy").write_bytes(b"\x93NUMPY")  # truncated
    code, printed, err, warnings = again()
    assert code == 0 and len(warnings) == 1 and "activations/acts.npy has 6 bytes where" in warnings[0]
    _same_table(out, complete)


def _fake_disk(free_where: dict[str, int]):
    """shutil.disk_usage whose free bytes are ``free_where[part]`` for a path containing that folder name."""
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        for part, free in free_where.items():
            if part in Path(path).parts:
                return usage._replace(free=free)
        return usage

    return disk_usage


def test_no_space_for_the_checkpoints_is_one_sentence_and_the_run_resumes(
    tiny_model, corpus, complete, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.setattr(shutil, "disk_usage", _fake_disk({"checkpoints": files.RESERVE + 100}))
    assert main(_argv(tiny_model, corpus, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: not enough disk space for the sweep's checkpoints"), (
        err
    )
    assert "rerun the same command to resume" in err
    record = _record(out)
    assert record["status"] == "failed" and "not enough disk space" in record["error"]
    monkeypatch.undo()
    assert main(_argv(tiny_model, corpus, out)) == 0
    assert _record(out)["status"] == "complete" and _record(out)["settings"]["forward_from_store"] is True
    _same_table(out, complete)


def test_a_disk_that_fills_while_activations_are_written_is_one_sentence(
    tiny_model, corpus, complete, tmp_path, capsys, monkeypatch
):
    """A real ENOSPC from the write (where a memory-mapped write died of SIGBUS): exit 2, the batches
    written before it kept, and the same command resumes at the first unwritten batch.
    """
    out = tmp_path / "run"
    real, calls = os.pwrite, []

    def pwrite(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("activations/resid.npy") and offset > 1000:
            calls.append(offset)  # past the header and the first batch's rows: the second batch
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(files.os, "pwrite", pwrite)
    assert main(_argv(tiny_model, corpus, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: not enough disk space for activations/resid.npy"), err
    assert _record(out)["status"] == "failed"
    assert json.loads((out / "activations" / "store.json").read_text())["done"] == 1
    monkeypatch.undo()
    assert main(_argv(tiny_model, corpus, out)) == 0
    _same_table(out, complete)


def test_a_disk_that_fills_during_the_sweep_keeps_the_finished_chunks(
    tiny_model, corpus, complete, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        return Full(fh) if ".sweep_000064.npz." in os.readlink(f"/proc/self/fd/{fd}") else fh

    monkeypatch.setattr(files.os, "fdopen", fdopen)
    assert main(_argv(tiny_model, corpus, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: not enough disk space for sweep_000064.npz") and len(err.splitlines()) == 1, err
    assert _record(out)["status"] == "failed"
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    assert main(_argv(tiny_model, corpus, out)) == 0
    assert "resumed: reused 2 finished sweep chunks" in capsys.readouterr().out
    _same_table(out, complete)


def test_steer_ece_bins_are_bounded_by_the_predictions(tiny_model, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(checks, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "steer"
    argv = ["steer", "--model", str(tiny_model), "--dataset", str(corpus), "--n-seqs", "4", "--seq-len", "24"]
    assert main([*argv, "--neurons", "1.3", "--ece-bins", "1000000000", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: --ece-bins: 1,000,000,000 bins are more than the 46 predictions the measuring half holds "
        "(2 sequences of 23); give at most 46"
    )
    assert not out.exists()


def test_more_bins_than_tokens_give_the_table_of_one_bin_per_token():
    from confidence_neurons.analysis.steering import expected_calibration_error, reliability_bins

    rng = np.random.default_rng(0)
    conf, correct = rng.random(37), rng.random(37) < 0.5
    pd.testing.assert_frame_equal(reliability_bins(conf, correct, 10**12), reliability_bins(conf, correct, 37))
    assert expected_calibration_error(conf, correct, 10**12) == pytest.approx(
        expected_calibration_error(conf, correct, 37)
    )


def test_a_forward_pass_memory_cannot_hold_is_one_sentence(tiny_model, corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files, "available_memory", lambda: 10_000)
    out = tmp_path / "steer"
    argv = ["steer", "--model", str(tiny_model), "--dataset", str(corpus), "--n-seqs", "4", "--seq-len", "24"]
    assert main([*argv, "--neurons", "1.3", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holding the forward pass of 92 tokens in memory needs about" in err, err
    assert "lower --n-seqs or --seq-len" in err
    assert _record(out)["status"] == "failed"


def test_a_finished_store_serves_another_batch_size_without_the_model(tiny_model, rerun):
    from confidence_neurons.analysis.forward import run_forward
    from confidence_neurons.models.final_layer import final_layer
    from confidence_neurons.models.loading import load_model
    from confidence_neurons.stores import ActivationStore

    out, _ = rerun
    model = load_model(str(tiny_model))
    model.bridge.run_with_cache = lambda *a, **k: pytest.fail("the model was run")
    tokens = torch.from_numpy(np.load(out / "tokens.npy"))
    store = ActivationStore(out / "activations")
    cache = run_forward(model, final_layer(model), tokens, batch_size=3, progress=False, store=store)
    assert cache.from_store and not store.problems
    np.testing.assert_allclose(cache.acts.numpy(), np.load(out / "activations" / "acts.npy"), rtol=0, atol=0)
