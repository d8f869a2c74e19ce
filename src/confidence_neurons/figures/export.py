"""Save Plotly figures as offline HTML and as PNG, with no browser and no network.

HTML
----
:func:`figure_html` gives a figure's HTML page.  By default the page refers to one
shared ``plotly.min.js`` (the copy bundled inside the installed ``plotly`` package)
by a relative ``<script src="plotly.min.js">``.  Why not ``include_plotlyjs=True``
per file?  plotly.js is ~4.8 MB; a scan writes five or more figures, so inlining
it in every file would cost ~25 MB per run for identical bytes.  The run's
``report.html`` (see :mod:`confidence_neurons.report.html`) is the single
self-contained file to hand around; the per-figure HTML files are working copies
that live in the run directory beside their ``plotly.min.js``.  Pass
``standalone=True`` when a figure file must travel on its own: plotly.js is then
inlined in that page.  Either way nothing is fetched from a CDN, so the files
open offline.

PNG
---
Drawn with matplotlib by :func:`confidence_neurons.figures.png.figure_to_png`
(re-exported here), which supports only the Plotly subset listed in
:mod:`confidence_neurons.figures.png`.

:func:`save_figure` writes both files of one figure into a folder.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import plotly.graph_objects as go

from confidence_neurons.figures.png import figure_to_png

__all__ = [
    "PLOTLYJS_FILENAME",
    "atomic_write_bytes",
    "figure_html",
    "figure_to_png",
    "plotlyjs_source",
    "save_figure",
]

PLOTLYJS_FILENAME = "plotly.min.js"
_CONFIG = {"displaylogo": False}


# --------------------------------------------------------------------------- file helpers


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def plotlyjs_source() -> str:
    """The plotly.js bundle shipped inside the installed ``plotly`` package."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _ensure_plotlyjs(directory: Path) -> Path:
    """Write ``plotly.min.js`` into ``directory`` unless an identical copy is there."""
    target = directory / PLOTLYJS_FILENAME
    data = plotlyjs_source().encode("utf-8")
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return target
    except FileNotFoundError:
        pass
    return atomic_write_bytes(target, data)


def figure_html(fig: go.Figure, *, standalone: bool = False) -> str:
    """The figure as a full HTML page that opens offline.

    ``standalone``: plotly.js is inlined (~4.8 MB).  Otherwise the page loads
    :data:`PLOTLYJS_FILENAME` from its own folder (see :func:`plotlyjs_source`);
    RuntimeError if plotly did not emit that reference.
    """
    if standalone:
        return fig.to_html(include_plotlyjs=True, full_html=True, config=_CONFIG)
    html = fig.to_html(include_plotlyjs="directory", full_html=True, config=_CONFIG)
    if f'src="{PLOTLYJS_FILENAME}"' not in html:  # plotly changed its "directory" output
        raise RuntimeError("plotly did not reference the shared plotly.min.js as expected")
    return html


def save_figure(
    fig: go.Figure,
    directory: Path,
    stem: str,
    *,
    standalone_html: bool = False,
    png_scale: float = 2.0,
) -> dict[str, Path]:
    """Write ``directory/stem.html`` (interactive, offline) and ``directory/stem.png``.

    Returns ``{"html": ..., "png": ...}`` and, unless ``standalone_html``, also
    ``{"plotlyjs": directory/plotly.min.js}`` — the shared bundle the HTML loads by
    relative path (see the module docstring for why).  Both files are written
    atomically.  ``png_scale`` multiplies the pixel size (layout width/height,
    default 900x560) of the PNG.
    """
    if not stem or Path(stem).name != stem or stem in {".", ".."}:
        raise ValueError(f"stem must be a plain file name without folders, got {stem!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    html = figure_html(fig, standalone=standalone_html)
    if not standalone_html:
        out["plotlyjs"] = _ensure_plotlyjs(directory)
    out["html"] = atomic_write_bytes(directory / f"{stem}.html", html.encode("utf-8"))
    out["png"] = atomic_write_bytes(directory / f"{stem}.png", figure_to_png(fig, scale=png_scale))
    return out
