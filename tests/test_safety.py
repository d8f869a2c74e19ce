"""Safer loading: a compiled kernel is loaded only from a private place, run files share one mode."""

from __future__ import annotations

import os
import stat

import pytest

from confidence_neurons.analysis.kernel import _safe_to_load
from confidence_neurons.rundir import RunDir


def test_kernel_library_loaded_only_when_private(tmp_path):
    folder = tmp_path / "kernels"
    folder.mkdir(mode=0o700)
    lib = folder / "ablation_kernel_x.so"
    lib.write_bytes(b"\x7fELF")
    lib.chmod(0o755)
    assert _safe_to_load(lib)
    lib.chmod(0o777)
    assert not _safe_to_load(lib), "a library others can write is not loaded"
    lib.chmod(0o755)
    folder.chmod(0o777)
    assert not _safe_to_load(lib), "nor one in a folder others can write"
    folder.chmod(0o700)
    if os.getuid() != 0:
        pytest.skip("changing a file's owner needs root; the other checks ran")
    os.chown(lib, 12345, 12345)
    assert not _safe_to_load(lib), "nor one another user owns"


def test_run_files_are_written_with_one_mode(tmp_path):
    import numpy as np
    import pandas as pd

    rd = RunDir.open(tmp_path / "run", kind="scan", fingerprint={})
    rd.write_config(status="running")
    rd.table("t", pd.DataFrame({"a": [1]}), csv=True)
    rd.array("a", np.zeros(3))
    rd.checkpoints.save("c", {}, {"x": np.zeros(2)})
    rd.close()
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (tmp_path / "run").rglob("*")
        if p.is_file() and p.name != ".lock"
    }
    assert set(modes.values()) == {0o644}, modes
