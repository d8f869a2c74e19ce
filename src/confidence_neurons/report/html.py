"""One self-contained, offline HTML report for a run.

:func:`write_report` writes ``run_dir/report.html``: a title, a table of the
run's settings, and a list of :class:`ReportSection` (paragraph, interactive
Plotly figures, data table) in order.  plotly.js — the copy bundled with the
installed ``plotly`` package — is inlined exactly once in ``<head>``; each
figure is then a ``<div>`` from ``fig.to_html(full_html=False,
include_plotlyjs=False)``.  No CDN, no web fonts, no external stylesheet: the
file opens from disk with no network.  It is written atomically (temp file in
the same folder, then ``os.replace``) so a reader never sees a half-written
report.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from confidence_neurons.figures.export import plotlyjs_source

__all__ = ["ReportSection", "format_cell", "render_report"]


@dataclass
class ReportSection:
    """One section of the report, rendered in this order: title, text, html, figures, table."""

    title: str
    text: str = ""  # short explanatory paragraph (plain text, escaped; blank lines split paragraphs)
    figures: list[go.Figure] = field(default_factory=list)
    table: pd.DataFrame | None = None  # escaped; floats to 4 significant digits
    html: str = ""  # raw, trusted HTML fragment (not escaped), e.g. report.passages.passages_html


_CSS = """
:root { --ink:#1f2a37; --muted:#5b6472; --line:#e3e7ee; --bg:#ffffff; --band:#f6f8fb; --accent:#b3261e; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 64px; }
header { border-bottom: 2px solid var(--line); margin-bottom: 18px; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.25rem; margin: 36px 0 8px; padding-top: 8px; border-top: 1px solid var(--line); }
#settings h2 { border-top: none; margin-top: 18px; }
h3 { font-size: 1.0rem; margin: 18px 0 6px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
p { margin: 6px 0 12px; max-width: 80ch; }
.meta { color: var(--muted); font-size: .88rem; margin: 0 0 12px; }
nav ol { margin: 6px 0 0; padding-left: 1.4em; columns: 2; }
nav a { color: var(--ink); }
.figure { margin: 14px 0 22px; border: 1px solid var(--line); border-radius: 6px; padding: 6px; overflow-x: auto; }
.table-wrap { overflow-x: auto; margin: 10px 0 20px; max-height: 560px; overflow-y: auto; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-size: .86rem; width: 100%; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { position: sticky; top: 0; background: var(--band); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--band); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.settings { width: auto; min-width: 50%; }
table.settings th { width: 14em; background: var(--band); }
table.settings td { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-word; }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 48px; color: var(--muted); font-size: .82rem; }
"""


def format_cell(value: Any) -> tuple[str, bool]:
    """Escaped HTML text for one table cell and whether it is numeric.

    Floats get 4 significant digits (``f"{v:.4g}"``); NaN shows as ``NaN``.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return html.escape(str(bool(value))), False
    if isinstance(value, numbers.Integral):
        return html.escape(str(int(value))), True
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return "NaN", True
        return html.escape(f"{v:.4g}"), True
    return html.escape(str(value)), False


def _table_html(df: pd.DataFrame, css_class: str = "data") -> str:
    show_index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    cols = [str(c) for c in df.columns]
    head = []
    if show_index:
        head.append(f"<th>{html.escape(str(df.index.name or ''))}</th>")
    head += [f"<th>{html.escape(c)}</th>" for c in cols]
    rows = []
    for idx, row in zip(df.index, df.itertuples(index=False, name=None)):
        cells = []
        if show_index:
            text, _ = format_cell(idx)
            cells.append(f"<th>{text}</th>")
        for value in row:
            text, numeric = format_cell(value)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not rows:
        body = f'<tr><td class="empty" colspan="{max(len(head), 1)}">(no rows)</td></tr>'
    else:
        body = "\n".join(rows)
    return (
        f'<div class="table-wrap"><table class="{css_class}">'
        f"<thead><tr>{''.join(head)}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>"
    )


def _setting_text(value: Any) -> str:
    """Unescaped display text of one setting: strings as is, containers as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, indent=2, default=str, ensure_ascii=False)
    if isinstance(value, np.generic):
        value = value.item()
    return str(value)


def _settings_html(settings: dict) -> str:
    if not settings:
        return '<p class="empty">(no settings recorded)</p>'
    rows = []
    for key, value in settings.items():
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_setting_text(value))}</td></tr>")
    return '<div class="table-wrap"><table class="settings"><tbody>\n' + "\n".join(rows) + "\n</tbody></table></div>"


def _paragraphs(text: str) -> str:
    parts = [p.strip() for p in re.split(r"\n\s*\n", text or "") if p.strip()]
    return "\n".join(f"<p>{html.escape(p)}</p>" for p in parts)


def _slug(i: int, title: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40]
    return f"s{i}-{s}" if s else f"s{i}"


def _figure_div(fig: go.Figure, div_id: str) -> str:
    if not isinstance(fig, go.Figure):
        raise TypeError(f"ReportSection.figures must hold plotly Figures, got {type(fig).__name__}")
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def _safe_inline_script(js: str) -> str:
    # An inline <script> ends at the first "</script"; plotly.js has none, but be safe.
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("confidence-neurons")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


def render_report(*, title: str, settings: dict, sections: list[ReportSection]) -> str:
    """The report as one HTML string (what :func:`write_report` writes)."""
    nav, body = [], []
    for i, sec in enumerate(sections, start=1):
        if not isinstance(sec, ReportSection):
            raise TypeError(f"sections[{i - 1}] is {type(sec).__name__}, expected ReportSection")
        anchor = _slug(i, sec.title)
        nav.append(f'<li><a href="#{anchor}">{html.escape(sec.title)}</a></li>')
        parts = [f'<section id="{anchor}">', f"<h2>{html.escape(sec.title)}</h2>", _paragraphs(sec.text)]
        if sec.html:
            parts.append(f'<div class="fragment">{sec.html}</div>')
        for j, fig in enumerate(sec.figures, start=1):
            parts.append(f'<div class="figure">{_figure_div(fig, f"{anchor}-fig{j}")}</div>')
        if sec.table is not None:
            parts.append(_table_html(sec.table))
        parts.append("</section>")
        body.append("\n".join(p for p in parts if p))

    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{_safe_inline_script(plotlyjs_source())}</script>
</head>
<body>
<main>
<header>
<h1>{html.escape(title)}</h1>
<p class="meta">Generated {html.escape(stamp)} by confidence-neurons {html.escape(_version())}.
Reproduces the entropy-neuron analysis of Stolfo et al. (2024), “Confidence Regulation Neurons in Language Models”.</p>
</header>
<section id="settings">
<h2>Run settings</h2>
{_settings_html(settings)}
</section>
{"<nav><h3>Sections</h3><ol>" + "".join(nav) + "</ol></nav>" if nav else ""}
{chr(10).join(body)}
<footer>Self-contained report: plotly.js is embedded, no network access is needed to view it.</footer>
</main>
</body>
</html>
"""
