"""Saving figures: offline HTML (shared or inlined plotly.js) and PNG, written atomically."""

from __future__ import annotations

import re
import time

import plotly.graph_objects as go
import pytest

from confidence_neurons.figures import entropy as E
from confidence_neurons.figures.export import (
    PLOTLYJS_FILENAME,
    atomic_write_bytes,
    figure_html,
    figure_to_png,
    plotlyjs_source,
    save_figure,
)
from confidence_neurons.figures.png import figure_to_png as png_figure_to_png
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


def test_atomic_write_bytes_replaces_without_leftovers(tmp_path):
    target = tmp_path / "sub" / "a.bin"
    assert atomic_write_bytes(target, b"first") == target
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]


def test_save_figure_writes_offline_html_and_png(neurons, tmp_path):
    from PIL import Image  # pillow comes with matplotlib

    fig = E.fig_rho_vs_ln_share(neurons, K)
    t0 = time.perf_counter()
    out = save_figure(fig, tmp_path / "figs", "fig2e")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, elapsed
    html = out["html"].read_text(encoding="utf-8")
    assert out["html"] == tmp_path / "figs" / "fig2e.html" and len(html) > 1000
    assert f'src="{PLOTLYJS_FILENAME}"' in html and "cdn.plot.ly" not in html
    assert out["plotlyjs"] == tmp_path / "figs" / PLOTLYJS_FILENAME
    assert out["plotlyjs"].read_text(encoding="utf-8") == plotlyjs_source()
    data = out["png"].read_bytes()
    w, h = png_size(data)
    assert (w, h) == (1800, 1120)  # 900x560 at scale 2
    with Image.open(out["png"]) as im:
        im.load()
        assert im.size == (w, h)
        # something was drawn: not a blank canvas
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100
    assert not list(tmp_path.glob("figs/*.tmp")) and not list(tmp_path.glob("figs/.*"))


def test_save_figure_standalone_inlines_plotlyjs(neurons, tmp_path):
    out = save_figure(E.fig_norm_vs_logitvar(neurons), tmp_path, "fig2a", standalone_html=True, png_scale=1)
    html = out["html"].read_text(encoding="utf-8")
    assert "plotlyjs" not in out and not (tmp_path / PLOTLYJS_FILENAME).exists()
    assert html.count("* plotly.js v") == 1
    assert png_size(out["png"].read_bytes()) == (900, 560)


def test_save_figure_refuses_folders_in_the_stem_and_unsupported_figures(tmp_path):
    with pytest.raises(ValueError):
        save_figure(go.Figure(), tmp_path, "../escape")
    with pytest.raises(NotImplementedError):
        save_figure(go.Figure(go.Heatmap(z=[[1, 2], [3, 4]])), tmp_path, "heatmap")
