"""`scan --revision`: a hub revision goes to from_pretrained; a local model's revisions are its subfolders;
the revision is recorded in config.json and in every label (MODEL@REVISION).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from confidence_neurons.cli import main
from confidence_neurons.commands.scan import run as run_scan
from confidence_neurons.errors import ConfigError
from confidence_neurons.models import loading
from confidence_neurons.studies.scan import ScanConfig
from tests.study.conftest import SCAN


def test_a_local_revision_is_the_subfolder_and_is_recorded(models, corpus, tmp_path):
    folder = models["gpt2"]
    at_rev = run_scan(
        ScanConfig(model=str(folder), revision="step200", dataset=str(corpus), **SCAN), tmp_path / "r", progress=False
    )
    direct = run_scan(
        ScanConfig(model=str(folder / "step200"), dataset=str(corpus), **SCAN), tmp_path / "d", progress=False
    )
    record = json.loads((tmp_path / "r" / "config.json").read_text())
    assert record["config"]["revision"] == "step200" and record["settings"]["revision"] == "step200"
    assert record["settings"]["model"] == f"{folder}@step200"
    assert record["settings"]["model_source"]["path"] == str((folder / "step200").resolve())
    assert "@step200" in (tmp_path / "r" / "report.html").read_text()
    # the same weights as naming the subfolder itself
    for col in ("rho", "TE", "DE", "ln_share"):
        np.testing.assert_allclose(at_rev.neurons[col], direct.neurons[col], rtol=1e-6, atol=1e-9)
    # and not the other revision's
    other = run_scan(
        ScanConfig(model=str(folder), revision="step100", dataset=str(corpus), **SCAN), tmp_path / "o", progress=False
    )
    assert not np.allclose(other.neurons["rho"], at_rev.neurons["rho"])


def test_a_missing_revision_is_one_sentence_and_exit_2(models, corpus, tmp_path, capsys):
    argv = ["scan", "--model", str(models["gpt2"]), "--revision", "step999", "--dataset", str(corpus)]
    assert main([*argv, "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has no revision step999" in err and "step999/config.json" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_revision_of_a_gguf_file_or_the_embedded_model_is_refused():
    with pytest.raises(loading.ModelLoadError, match="GGUF"):
        loading._resolve("model.gguf", "step1")
    with pytest.raises(loading.ModelLoadError, match="embedded"):
        loading._resolve(None, "step1")


def test_a_hub_revision_reaches_from_pretrained(monkeypatch):
    monkeypatch.setattr(loading, "hub_cached", lambda repo, revision=None: revision == "step1000")
    seen = {}

    class Loader:
        @staticmethod
        def from_pretrained(location, **kwargs):
            seen.update(location=location, **kwargs)
            return "loaded"

    r = loading._resolve("EleutherAI/pythia-70m", "step1000")
    assert r.kind == "hub" and r.description["name"] == "EleutherAI/pythia-70m@step1000"
    assert loading._from_pretrained(Loader, r, dtype="x") == "loaded"
    assert seen == {"location": "EleutherAI/pythia-70m", "revision": "step1000", "dtype": "x"}
    # not cached and the hub unreachable: one sentence that says so
    monkeypatch.setattr(loading, "hub_reachable", lambda: False)
    with pytest.raises(loading.ModelLoadError, match="at revision step2000 is not in the Hugging Face cache"):
        loading._resolve("EleutherAI/pythia-70m", "step2000")


def test_fingerprint_without_a_revision_is_unchanged_so_older_runs_resume():
    assert "revision" not in ScanConfig().fingerprint()
    assert ScanConfig(revision="step1").fingerprint()["revision"] == "step1"
    # the engine settings only change speed
    assert ScanConfig(ray=True, ray_workers=3).fingerprint() == ScanConfig().fingerprint()


def test_ray_settings_without_ray_are_refused():
    with pytest.raises(ConfigError, match="--ray-workers only applies to a sharded sweep"):
        ScanConfig(ray_workers=2)
