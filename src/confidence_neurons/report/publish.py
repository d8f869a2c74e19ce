"""Publishing a run's figures and report into its run directory: ``figures/STEM.html`` (interactive,
beside one shared plotly.min.js) and ``figures/STEM.png`` for each figure, then ``report.html``.
The run directory stores bytes; this module draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confidence_neurons.figures.export import PLOTLYJS_FILENAME, figure_html, plotlyjs_source
from confidence_neurons.figures.png import figure_to_png
from confidence_neurons.files import atomic_write, require_space
from confidence_neurons.report.html import ReportSection, render_report
from confidence_neurons.rundir import FIGURES, REPORT, RunDir


def write_figure(rd: RunDir, stem: str, fig: Any) -> None:
    """``figures/stem.html`` and ``figures/stem.png``, both drawn before either is written."""
    if not stem or Path(stem).name != stem or stem in {".", ".."}:
        raise ValueError(f"a figure's stem must be a plain file name, got {stem!r}")
    html, png = figure_html(fig).encode("utf-8"), figure_to_png(fig)
    folder = rd.path / FIGURES
    js = folder / PLOTLYJS_FILENAME
    script = None if js.is_file() else plotlyjs_source().encode("utf-8")
    require_space(rd.path, len(html) + len(png) + len(script or b""), f"the figure {stem}")
    if script is not None:
        atomic_write(js, script)
    atomic_write(folder / f"{stem}.html", html)
    atomic_write(folder / f"{stem}.png", png)


def write_report(rd: RunDir, *, title: str, settings: dict, sections: list[ReportSection]) -> Path:
    """``report.html``: one self-contained page with the figures, tables and settings."""
    text = render_report(title=title, settings=settings, sections=sections)
    return atomic_write(rd.path / REPORT, text.encode("utf-8"))


def publish(rd: RunDir, figures: dict[str, Any], *, title: str, settings: dict, sections: list[ReportSection]) -> Path:
    """Every figure (by file stem), then the report that shows them."""
    for stem, fig in figures.items():
        write_figure(rd, stem, fig)
    return write_report(rd, title=title, settings=settings, sections=sections)
