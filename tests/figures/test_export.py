"""Figures as offline HTML (shared or inlined plotly.js) and PNG, and as a run directory writes them."""

from __future__ import annotations

import re
import time

import plotly.graph_objects as go
import pytest

from confidence_neurons.figures import entropy as E
from confidence_neurons.figures.export import PLOTLYJS_FILENAME, figure_html, figure_to_png, plotlyjs_source
from confidence_neurons.figures.png import figure_to_png as png_figure_to_png
from confidence_neurons.report.publish import write_figure
from confidence_neurons.rundir import RunDir, atomic_write
from tests.figures.pngcheck import png_size
from tests.figures.test_entropy_figures import K, make_neurons


@pytest.fixture(scope="module")
def neurons():
    return make_neurons()


# --------------------------------------------------------------------------- figure_html


def test_figure_html_refers_to_the_shared_plotlyjs():
    html = figure_html(go.Figure(go.Scatter(x=[0, 1], y=[0, 1])))
    assert re.findall(r"<script[^>]*\ssrc=\"([^\"]*)\"", html) == [PLOTLYJS_FILENAME]
    assert "cdn.plot.ly" not in html and "* plotly.js v" not in html and len(html) < 100_000  # not inlined
    assert html.lstrip().lower().startswith("<!doctype html>") and html.rstrip().endswith("</html>")


def test_figure_html_standalone_inlines_plotlyjs():
    html = figure_html(go.Figure(go.Scatter(x=[0, 1], y=[0, 1])), standalone=True)
    assert html.count("* plotly.js v") == 1 and len(html) > 1_000_000
    assert not re.search(r"<script[^>]*\ssrc=", html)  # loads nothing


def test_figure_html_checks_that_plotly_emitted_the_reference(monkeypatch):
    monkeypatch.setattr(go.Figure, "to_html", lambda self, **kw: "<html><body>no script</body></html>")
    with pytest.raises(RuntimeError, match="plotly.min.js"):
        figure_html(go.Figure())
    assert figure_html(go.Figure(), standalone=True) == "<html><body>no script</body></html>"


def test_plotlyjs_source_is_the_bundled_library():
    src = plotlyjs_source()
    assert len(src) > 1_000_000 and "plotly.js v" in src[:1000]


def test_figure_to_png_is_reexported():
    assert figure_to_png is png_figure_to_png


# --------------------------------------------------------------------------- files


def test_atomic_write_replaces_without_leftovers(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    assert atomic_write(target, b"first") == target
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]


def test_run_dir_writes_offline_html_and_png(neurons, tmp_path):
    from PIL import Image  # pillow comes with matplotlib

    fig = E.fig_rho_vs_ln_share(neurons, K)
    t0 = time.perf_counter()
    write_figure(RunDir(tmp_path), "fig2e", fig)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, elapsed
    figs = tmp_path / "figures"
    html = (figs / "fig2e.html").read_text(encoding="utf-8")
    assert len(html) > 1000
    assert f'src="{PLOTLYJS_FILENAME}"' in html and "cdn.plot.ly" not in html
    assert (figs / PLOTLYJS_FILENAME).read_text(encoding="utf-8") == plotlyjs_source()
    data = (figs / "fig2e.png").read_bytes()
    w, h = png_size(data)
    assert (w, h) == (1800, 1120)  # 900x560 at scale 2
    with Image.open(figs / "fig2e.png") as im:
        im.load()
        assert im.size == (w, h)
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100  # something was drawn: not a blank canvas
    assert sorted(p.name for p in figs.iterdir()) == ["fig2e.html", "fig2e.png", PLOTLYJS_FILENAME]


def test_run_dir_refuses_folders_in_the_stem_and_unsupported_figures(tmp_path):
    with pytest.raises(ValueError):
        write_figure(RunDir(tmp_path), "../escape", go.Figure())
    with pytest.raises(NotImplementedError):
        write_figure(RunDir(tmp_path), "heatmap", go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])))
    assert not (tmp_path / "figures").exists(), "a figure that cannot be drawn leaves no file"
