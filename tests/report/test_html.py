"""The self-contained HTML report."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from confidence_neurons.report import publish
from confidence_neurons.report.html import ReportSection, format_cell
from confidence_neurons.rundir import RunDir

SETTINGS = {
    "model": "gpt2-small",
    "dataset": "allenai/c4 (en, validation)",
    "tokens": 25600,
    "k": 12,
    "entropy_neuron_rule": "ln_share > 0.5 and rho > 0.3",
    "seed": 0,
}


def write_report(run_dir, **kwargs):
    """The report as a run directory writes it."""
    return publish.write_report(RunDir(run_dir), **kwargs)


def small_fig(title: str) -> go.Figure:
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2], name="pts"), layout={"title": {"text": title}})


@pytest.fixture
def sections():
    table = pd.DataFrame(
        {
            "name": ["11.584", "11.2378", "<b>x</b>"],
            "rho": [0.123456789, 0.98765, np.nan],
            "TE": [1234567.0, 0.000123456, 2.0],
            "is_entropy_neuron": [True, True, False],
        }
    )
    return [
        ReportSection("Entropy vs prediction", "Mean ablation of <final-layer> neurons & more.", [small_fig("F1")]),
        ReportSection("Null space", "Second paragraph.", [small_fig("F2d"), small_fig("F2e")], table=table),
        ReportSection("Notes only", "No figures here."),
    ]


def test_report_is_self_contained(tmp_path, sections):
    path = write_report(tmp_path / "run", title="Entropy neurons — GPT-2 <small>", settings=SETTINGS, sections=sections)
    assert path == tmp_path / "run" / "report.html"
    text = path.read_text(encoding="utf-8")
    # no external resources
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?(https?:)?//", text, re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", text, re.IGNORECASE)
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)  # all scripts inline
    # outside the inline scripts (plotly.js itself mentions URLs it never loads here), no URL at all
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", text, flags=re.IGNORECASE | re.DOTALL)
    assert "http://" not in markup and "https://" not in markup and "@import" not in markup
    # plotly.js embedded exactly once, and one div per figure
    assert text.count("* plotly.js v") == 1
    assert text.count('class="plotly-graph-div"') == 3
    # title escaped
    assert "<title>Entropy neurons — GPT-2 &lt;small&gt;</title>" in text
    # section titles, in order
    positions = [text.index(f"<h2>{html.escape(s.title)}</h2>") for s in sections]
    assert positions == sorted(positions)
    assert "Mean ablation of &lt;final-layer&gt; neurons &amp; more." in text
    # settings table shows every key and value
    for key, value in SETTINGS.items():
        assert f"<th>{html.escape(key)}</th>" in text
        assert f"<td>{html.escape(str(value))}</td>" in text
    # no temp files left behind
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.html"]


def test_report_table_escaped_and_formatted(tmp_path, sections):
    text = write_report(tmp_path, title="t", settings={}, sections=sections).read_text(encoding="utf-8")
    table = text[text.index('<table class="data">') :]
    table = table[: table.index("</table>")]
    for shown in ("0.1235", "0.9877", "1.235e+06", "0.0001235", ">2<", "NaN", "&lt;b&gt;x&lt;/b&gt;", "True"):
        assert shown in table, shown
    assert "0.123456789" not in table and "<b>x</b>" not in table
    assert "(no settings recorded)" in text


def test_report_overwrites_atomically(tmp_path, sections):
    first = write_report(tmp_path, title="first", settings=SETTINGS, sections=sections)
    second = write_report(tmp_path, title="second", settings=SETTINGS, sections=sections[:1])
    assert first == second
    text = second.read_text(encoding="utf-8")
    assert "<h1>second</h1>" in text and "Null space" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_format_cell():
    assert format_cell(0.000123456) == ("0.0001235", True)
    assert format_cell(np.float32(2.5)) == ("2.5", True)
    assert format_cell(7) == ("7", True)
    assert format_cell(float("nan")) == ("NaN", True)
    assert format_cell("<x>") == ("&lt;x&gt;", False)
    assert format_cell(np.bool_(True)) == ("True", False)


def test_report_rejects_non_sections(tmp_path):
    with pytest.raises(TypeError):
        write_report(tmp_path, title="t", settings={}, sections=["not a section"])
