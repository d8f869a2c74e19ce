"""Plotly figures as offline HTML and as PNG bytes, with no browser and no network.

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

Files are written by the run directory (:meth:`confidence_neurons.rundir.RunDir.figure`); nothing here
touches the disk.
"""

from __future__ import annotations

import plotly.graph_objects as go

from confidence_neurons.figures.png import figure_to_png

__all__ = ["PLOTLYJS_FILENAME", "figure_html", "figure_to_png", "plotlyjs_source"]

PLOTLYJS_FILENAME = "plotly.min.js"
_CONFIG = {"displaylogo": False}


def plotlyjs_source() -> str:
    """The plotly.js bundle shipped inside the installed ``plotly`` package."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


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
