"""Runs read back as typed results, repeat from their record, and reuse an already loaded model."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import confidence_neurons as cn
from confidence_neurons.cli import main
from tests.commands.test_scan import _scan


@pytest.fixture(scope="module")
def scan_run(tiny_model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "scan"
    assert _scan(tiny_model, corpus, out) == 0
    return out


def test_load_run_gives_back_the_scan(scan_run):
    result = cn.load_run(scan_run)
    assert isinstance(result, cn.ScanResult) and result.run_dir == scan_run
    pd.testing.assert_frame_equal(result.neurons, pd.read_parquet(scan_run / "neurons.parquet"))
    assert result.config == cn.ScanConfig.from_dict(json.loads((scan_run / "config.json").read_text())["config"])
    assert result.cos_sv.shape == (len(result.neurons), len(result.singular_values))
    figures = result.figures()
    assert {f"{stem}.png" for stem in figures} == {p.name for p in (scan_run / "figures").glob("*.png")}
    html = result._repr_html_()
    assert "entropy" in html and "<table" in html


def test_load_run_refuses_what_is_not_a_finished_run(tmp_path, scan_run):
    with pytest.raises(cn.ToolkitError, match="holds no run"):
        cn.load_run(tmp_path)
    record = json.loads((scan_run / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**record, "status": "running"}))
    with pytest.raises(cn.ToolkitError, match="not complete"):
        cn.load_run(tmp_path)


def test_rerun_and_config_file_repeat_a_run(scan_run, tmp_path, capsys):
    assert main(["rerun", str(scan_run), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(
        pd.read_parquet(scan_run / "neurons.parquet"), pd.read_parquet(tmp_path / "again" / "neurons.parquet")
    )
    # --config takes a run's config.json; a flag overrides it
    assert (
        main(
            ["scan", "--config", str(scan_run / "config.json"), "--seed", "1", "--out", str(tmp_path / "s1"), "--quiet"]
        )
        == 0
    )
    config = json.loads((tmp_path / "s1" / "config.json").read_text())["config"]
    original = json.loads((scan_run / "config.json").read_text())["config"]
    assert config == {**original, "seed": 1}
    capsys.readouterr()
    assert main(["inspect", "--config", str(scan_run / "config.json"), "--neuron", "1.3", "--quiet"]) == 2
    assert "holds a scan run's settings, not a inspect's" in capsys.readouterr().err


def test_config_records_versions_and_hardware(scan_run):
    record = json.loads((scan_run / "config.json").read_text())
    prov = record["provenance"]
    assert prov["toolkit"] == cn.__version__ and prov["versions"]["torch"] and prov["hardware"]["cpu_count"] >= 1
    assert record["kind"] == "scan"


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"confidence-neurons {cn.__version__}"


def test_notebook_api_reuses_a_loaded_model(tiny_model, corpus, tmp_path, monkeypatch):
    model = cn.load_model(str(tiny_model))
    import confidence_neurons.commands.checks as checks

    monkeypatch.setattr(checks, "load_model", lambda *a, **k: pytest.fail("the model was loaded again"))
    config = cn.InspectConfig(model=str(tiny_model), dataset=str(corpus), neuron="1.3", n_seqs=2, seq_len=16)
    result = cn.run_inspect(config, tmp_path / "inspect", model=model, progress=False)
    assert cn.load_run(tmp_path / "inspect").activity.tokens.equals(result.activity.tokens)
    pure = cn.inspect_neuron(model, config, progress=False)
    pd.testing.assert_frame_equal(pure.activity.tokens, result.activity.tokens)
    assert "Neuron 1.3" in pure._repr_html_()
