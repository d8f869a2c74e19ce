"""User text (labels, model and corpus names, neuron labels, token strings) never becomes live markup
in a figure or the report: Plotly renders its pseudo-HTML (``<a href>``, ``<b>``) in titles, legends
and hover text, so every such string goes through ``figures.style.escape_text``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import plotly.graph_objects as go
import pytest

import confidence_neurons as cn
from confidence_neurons.cli import main
from confidence_neurons.commands.scan import run as run_scan
from confidence_neurons.figures.png import _plain
from confidence_neurons.figures.style import escape_text
from confidence_neurons.studies.scan import ScanConfig

PHISH = "<a href='https://evil.example/phish'>see details</a>"
# a folder name cannot hold "/", so a model folder can carry only an opening tag
FOLDER = "<a href=https:evil.example>model"
LIVE = re.compile(r"<a\s", re.IGNORECASE)  # our figures make no links, so any <a in one is user text
#: the user's link as a live tag (the report's own navigation links are <a href="#...">)
LIVE_USER = re.compile(r"<a\s+href=['\"]?https:(//)?evil\.example", re.IGNORECASE)


def _strings(obj) -> list[str]:
    """Every string inside a figure's JSON."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def _live_tags(fig: go.Figure) -> list[str]:
    return [s for s in _strings(json.loads(fig.to_json())) if LIVE.search(s)]


def _report_scripts_decoded(path: Path) -> str:
    """An HTML page with the JSON escapes of its embedded figures undone (Plotly writes '<' as u003c)."""
    text = path.read_text()
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)


@pytest.fixture(scope="module")
def scans(tiny_model, corpus, tmp_path_factory) -> list[Path]:
    """Two scans: one of the tiny model, one of the same model in a folder whose name is markup."""
    root = tmp_path_factory.mktemp("scans")
    evil_model = shutil.copytree(tiny_model, root / FOLDER)
    out = []
    for name, model in (("plain", tiny_model), ("evil", evil_model)):
        config = ScanConfig(model=str(model), dataset=str(corpus), n_seqs=2, seq_len=16)
        run_scan(config, root / name, progress=False)
        out.append(root / name)
    return out


@pytest.mark.parametrize("labels", [[f"{PHISH},x"], []], ids=["--labels", "default labels"])
def test_compare_report_and_figures_hold_no_live_link_from_user_text(scans, tmp_path, capsys, labels):
    out = tmp_path / "cmp"
    argv = ["compare", *map(str, scans), "--out", str(out), "--quiet"]
    argv += ["--labels", *labels] if labels else []
    assert main(argv) == 0, capsys.readouterr().err
    result = cn.load_run(out)
    user = PHISH if labels else FOLDER
    assert user in result.labels  # the label itself is kept as typed ...
    figures = result.figures()
    for stem, fig in figures.items():  # ... but no figure string holds it as a tag
        assert not _live_tags(fig), (stem, _live_tags(fig))
    shown = [s for fig in figures.values() for s in _strings(json.loads(fig.to_json())) if "evil.example" in s]
    assert shown and all("&lt;a href=" in s for s in shown)
    for page in [out / "report.html", *(out / "figures").glob("*.html")]:
        assert not LIVE_USER.search(_report_scripts_decoded(page)), page
    assert "evil.example" in _report_scripts_decoded(out / "report.html")


def test_escape_text_is_inert_in_plotly_and_html_and_reads_back_as_typed():
    for text in (PHISH, "<b>bold</b> & 'quotes' \"too\"", "100% %{customdata[0]}", "", "plain w1"):
        escaped = escape_text(text)
        assert "<" not in escaped and ">" not in escaped and "%{" not in escaped
        assert _plain(escaped) == text  # the PNG export draws the characters the user typed
    assert escape_text(None) == "" and escape_text(3) == "3"


def test_neuron_and_token_text_in_figures_is_escaped():
    import numpy as np
    import pandas as pd

    from confidence_neurons.figures.activity import fig_loss_change_vs_initial
    from confidence_neurons.figures.entropy import fig_rho_vs_ln_share

    tokens = pd.DataFrame(
        {
            "seq": [0, 0],
            "pos": [1, 2],
            "token": [PHISH, "w1"],
            "target": ["w2", "<b>x</b>"],
            "initial_loss": [1.0, 2.0],
            "delta_loss": [0.1, -0.2],
            "reciprocal_rank": [0.5, 1.0],
            "clipped": [True, True],
        }
    )
    fig = fig_loss_change_vs_initial(tokens, FOLDER)
    assert not _live_tags(fig) and "evil.example" in fig.to_json()
    neurons = pd.DataFrame(
        {
            "name": [PHISH, "1.2"],
            "rho": [0.9, 0.1],
            "ln_share": [0.8, 0.1],
            "abs_delta_entropy": [0.3, 0.01],
            "is_entropy_neuron": [True, False],
            "TE": [1.0, 0.1],
            "DE": [0.2, 0.1],
        }
    )
    fig = fig_rho_vs_ln_share(neurons, 2, "RMS")
    assert not _live_tags(fig) and "evil.example" in fig.to_json()
    assert np.isfinite(fig.data[0].x).all()
