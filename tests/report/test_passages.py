"""Example passages coloured by a neuron's activation (Fig. 4b analogue) and their place in the report."""

from __future__ import annotations

import re

import plotly.graph_objects as go
import pytest

from confidence_neurons.report import publish
from confidence_neurons.report.html import ReportSection
from confidence_neurons.report.passages import passages_html
from confidence_neurons.rundir import RunDir

TOKENS = ["The", " patient", " needs", " Mes", "otherapy", " <script>alert(1)</script>", "\n", " & more"]
N = len(TOKENS)


def write_report(run_dir, **kwargs):
    """The report as a run directory writes it."""
    return publish.write_report(RunDir(run_dir), **kwargs)


def make_passage(**over) -> dict:
    p = {
        "title": "C4 example <1>",
        "tokens": list(TOKENS),
        "activation": [0.1, 0.2, 0.0, 2.5, -1.0, 0.3, float("nan"), 0.1],
        "loss_clean": [3.0, 2.0, 4.0, 6.5, 0.5, 1.0, 2.0, float("nan")],
        "loss_ablated": [3.1, 2.0, 4.1, 8.25, 0.4, 1.0, 2.0, float("nan")],
        "top_predictions": [[("x", 0.5)]] * N,
        "highlight": 3,
    }
    p["top_predictions"] = list(p["top_predictions"])
    p["top_predictions"][3] = [
        ("othe", 0.61),
        ("<b>", 0.12),
        (" ther", 0.05),
        ("a&b", 0.04),
        ("\n", 0.03),
        ("zz6", 0.01),
    ]
    p.update(over)
    return p


def spans(fragment: str) -> list[str]:
    return re.findall(r'<span class="cnp-tok[^"]*"[^>]*>', fragment)


def test_escapes_marks_highlight_and_lists_predictions():
    out = passages_html([make_passage()], mean_activation=0.1, neuron_name="11.2378 <x>")
    # no raw markup from tokens, titles or names
    assert "<script>" not in out and "alert(1)</script>" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "<b>" not in out.replace("<b>11.2378 &lt;x&gt;</b>", "") and "&lt;b&gt;" in out
    assert "C4 example &lt;1&gt;" in out and "11.2378 &lt;x&gt;" in out
    assert "<html" not in out and "<head" not in out and "<script" not in out
    # one span per token; exactly the highlighted one is boxed
    s = spans(out)
    assert len(s) == N
    boxed = [i for i, tag in enumerate(s) if "cnp-hl" in tag]
    assert boxed == [3]
    assert 'data-pos="3"' in s[3]
    # visible whitespace: leading spaces and newlines
    assert '<span class="cnp-ws">·</span>Mes' in out
    assert '<span class="cnp-ws">↵</span>' in out and "·&amp;" in out.replace('<span class="cnp-ws">·</span>', "·")
    # the table: highlight row with top-5 predictions (6th dropped), losses with/without the neuron
    table = out[out.index('<table class="cnp-table">') :]
    hl = re.search(r'<tr class="cnp-hl-row">(.*?)</tr>', table).group(1)
    for shown in ("othe", "0.610", "&lt;b&gt;", "0.120", "ther", "a&amp;b", "6.500", "8.250", "+1.750", "2.500"):
        assert shown in hl, shown
    assert "zz6" not in out
    # neighbours: positions 1..5 with context 2
    assert re.findall(r'<tr[^>]*><td class="cnp-num">(\d+)</td>', table) == ["1", "2", "3", "4", "5"]
    # colour: above the mean red, below blue, NaN transparent; strongest is full colour
    assert "background:rgba(214,39,40,0.800)" in s[3]
    assert "background:rgba(31,119,180," in s[4]
    assert "background:transparent" in s[6]
    # tooltips via title=, escaped and with details
    assert 'title="pos 3: ·Mes' in s[3] and "loss 6.500 (clean) → 8.250 (ablated)" in s[3]
    assert "&lt;script&gt;" in s[5]
    # CSS scoped by the prefix
    style = re.search(r"<style>(.*?)</style>", out, re.S).group(1)
    selectors = [r.split("{")[0].strip() for r in style.split("}") if r.strip()]
    assert selectors and all(sel.startswith(".cnp") for sel in selectors)


def test_shared_scale_context_and_validation():
    a = make_passage(activation=[0.0] * N, highlight=0)
    b = make_passage(title="", highlight=N - 1)
    out = passages_html([a, b], mean_activation=0.0, neuron_name="n", context=1)
    assert "Passage 2" in out  # fallback title
    assert out.count('class="cnp-tok cnp-hl"') == 2
    tables = re.findall(r'<table class="cnp-table">.*?</table>', out, re.S)
    assert re.findall(r'<td class="cnp-num">(\d+)</td><td><code>', tables[0]) == ["0", "1"]
    assert re.findall(r'<td class="cnp-num">(\d+)</td><td><code>', tables[1]) == [str(N - 2), str(N - 1)]
    assert "rgba(214,39,40,0.000)" in out  # passage a at the mean: no colour
    with pytest.raises(ValueError):
        passages_html([make_passage(highlight=N)], 0.0, "n")
    with pytest.raises(ValueError):
        passages_html([make_passage(loss_clean=[1.0])], 0.0, "n")
    with pytest.raises(KeyError):
        passages_html([{"tokens": ["a"]}], 0.0, "n")
    assert "(no passages)" in passages_html([], 0.0, "n")


def test_report_renders_section_html_fragment(tmp_path):
    fragment = passages_html([make_passage()], 0.1, "11.2378")
    sections = [
        ReportSection("Fig. 4b", "Text <first>.", [go.Figure(go.Scatter(x=[1], y=[2]))], html=fragment),
        ReportSection("Plain", "No fragment."),
    ]
    text = write_report(tmp_path, title="t", settings={}, sections=sections).read_text(encoding="utf-8")
    sec = text[text.index("<h2>Fig. 4b</h2>") : text.index("<h2>Plain</h2>")]
    assert fragment in sec  # raw, not escaped
    assert sec.index("Text &lt;first&gt;.") < sec.index('<div class="cnp">') < sec.index('class="plotly-graph-div"')
    assert text.count('<div class="cnp">') == 1
    assert ReportSection("x").html == ""
