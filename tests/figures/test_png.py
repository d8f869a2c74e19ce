"""The matplotlib PNG converter: one test per Plotly feature it supports, plus what it refuses.

Each test builds a small Plotly figure, converts it with ``figure_to_matplotlib`` and checks the
matplotlib artists (positions, colours, styles, text), so a feature that stops being drawn fails.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import PathPatch, Rectangle

from confidence_neurons.figures.png import figure_to_matplotlib, figure_to_png
from tests.figures.pngcheck import png_size

PT = 0.75  # CSS pixel -> point


def convert(*traces, **layout):
    fig = go.Figure(list(traces))
    if layout:
        fig.update_layout(**layout)
    return figure_to_matplotlib(fig)


def main_axes(mfig):
    return mfig.axes[0]


def twin_axes(mfig):
    found = [a for a in mfig.axes[1:] if a.get_label() != "<colorbar>"]
    assert len(found) == 1, mfig.axes
    return found[0]


def colorbar_axes(mfig):
    return [a for a in mfig.axes if a.get_label() == "<colorbar>"]


def legend_labels(mfig) -> list[str]:
    if not mfig.legends:
        return []
    (legend,) = mfig.legends
    return [t.get_text() for t in legend.get_texts()]


def display_xy(transform, xy):
    return tuple(np.round(transform.transform(xy), 6))


# --------------------------------------------------------------------------- scatter


def test_scatter_markers_positions_colour_and_size():
    mfig = convert(go.Scatter(x=[1, 2, 3], y=[4, 5, 6], mode="markers", marker={"color": "#ff0000", "size": 10}))
    (points,) = main_axes(mfig).collections
    np.testing.assert_allclose(points.get_offsets(), [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_allclose(points.get_facecolors(), [to_rgba("#ff0000")])
    np.testing.assert_allclose(points.get_sizes(), [(10 * PT) ** 2])
    assert not main_axes(mfig).lines  # markers only


def test_scatter_marker_outline_opacity_and_per_point_size():
    mfig = convert(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="markers",
            opacity=0.5,
            marker={
                "color": "rgba(0, 0, 255, 1)",
                "size": [4, 8],
                "opacity": 0.8,
                "line": {"color": "#7f0000", "width": 2},
            },
        )
    )
    (points,) = main_axes(mfig).collections
    np.testing.assert_allclose(points.get_sizes(), [(4 * PT) ** 2, (8 * PT) ** 2])
    np.testing.assert_allclose(points.get_edgecolors()[0][:3], to_rgba("#7f0000")[:3])
    np.testing.assert_allclose(points.get_linewidths(), [2 * PT])
    assert points.get_alpha() == pytest.approx(0.4)


def test_numeric_marker_colours_on_own_colour_scale_with_colorbar():
    mfig = convert(
        go.Scatter(
            x=[0, 1, 2],
            y=[0, 1, 2],
            mode="markers",
            marker={
                "color": [0.2, 0.5, 0.8],
                "colorscale": "Viridis",
                "cmin": 0,
                "cmax": 1,
                "showscale": True,
                "colorbar": {"title": {"text": "RR"}},
            },
        )
    )
    (points,) = main_axes(mfig).collections
    np.testing.assert_allclose(points.get_array(), [0.2, 0.5, 0.8])
    assert (points.norm.vmin, points.norm.vmax) == (0, 1)
    np.testing.assert_allclose(points.cmap(0.0), to_rgba("#440154"), atol=0.01)  # Viridis starts dark purple
    (cbar,) = colorbar_axes(mfig)
    assert cbar.get_ylabel() == "RR"
    hidden = convert(go.Scatter(x=[0, 1], y=[0, 1], mode="markers", marker={"color": [0.0, 1.0], "showscale": False}))
    assert colorbar_axes(hidden) == []


def test_shared_coloraxis_gives_one_colorbar_and_one_norm():
    mfig = convert(
        go.Scatter(x=[0, 1], y=[0, 1], mode="markers", marker={"color": [1.0, 2.0], "coloraxis": "coloraxis"}),
        go.Scatter(x=[2, 3], y=[2, 3], mode="markers", marker={"color": [3.0, 4.0], "coloraxis": "coloraxis"}),
        coloraxis={"colorscale": "Viridis", "cmin": 0.0, "cmax": 5.0, "colorbar": {"title": {"text": "|ΔH|"}}},
    )
    first, second = main_axes(mfig).collections
    assert (first.norm.vmin, first.norm.vmax) == (second.norm.vmin, second.norm.vmax) == (0.0, 5.0)
    (cbar,) = colorbar_axes(mfig)
    assert cbar.get_ylabel() == "|ΔH|"


@pytest.mark.parametrize("dash, style", [("solid", "-"), ("dash", "--"), ("dot", ":"), ("dashdot", "-.")])
def test_lines_colour_width_and_dash(dash, style):
    line = {"color": "#2ca02c", "width": 4, "dash": dash}
    mfig = convert(go.Scatter(x=[0, 1, 2], y=[3, 1, 2], mode="lines", line=line))
    (line,) = main_axes(mfig).lines
    np.testing.assert_allclose(line.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(line.get_ydata(), [3, 1, 2])
    assert line.get_linewidth() == pytest.approx(4 * PT)
    assert line.get_linestyle() == style
    assert to_rgba(line.get_color()) == to_rgba("#2ca02c")
    assert not main_axes(mfig).collections  # lines only


def test_default_mode_and_colorway():
    few = go.Scatter(y=[1.0, 2.0, 3.0])  # no x: index; no mode: lines+markers under 20 points
    many = go.Scatter(y=np.arange(25.0))  # 20 points or more: lines only
    mfig = convert(few, many, colorway=["#123456", "#abcdef"])
    ax = main_axes(mfig)
    first, second = ax.lines
    np.testing.assert_allclose(first.get_xdata(), [0, 1, 2])
    assert to_rgba(first.get_color()) == to_rgba("#123456") and to_rgba(second.get_color()) == to_rgba("#abcdef")
    (points,) = ax.collections
    assert len(points.get_offsets()) == 3


def test_text_labels_follow_textposition():
    mfig = convert(
        go.Scatter(
            x=[1, 2, 3],
            y=[1, 2, 3],
            mode="markers+text",
            text=["up", "down", ""],
            textposition=["top center", "bottom left", "middle right"],
            textfont={"color": "#d62728", "size": 12},
            marker={"size": 8},
        )
    )
    labels = {a.get_text(): a for a in main_axes(mfig).texts}
    assert set(labels) == {"up", "down", ""}
    up, down, right = labels["up"], labels["down"], labels[""]
    assert up.xy == (1.0, 1.0) and (up.get_ha(), up.get_va()) == ("center", "bottom")
    assert up.xyann[0] == 0 and up.xyann[1] > 0
    assert down.xy == (2.0, 2.0) and (down.get_ha(), down.get_va()) == ("right", "top")
    assert down.xyann[0] < 0 and down.xyann[1] < 0
    assert (right.get_ha(), right.get_va()) == ("left", "center") and right.xyann[0] > 0
    assert to_rgba(up.get_color()) == to_rgba("#d62728") and up.get_fontsize() == pytest.approx(12 * PT)


def test_secondary_y_axis_is_a_twin_with_its_own_data_and_title():
    mfig = convert(
        go.Scatter(x=[0, 1], y=[1.0, 2.0], mode="lines", name="left"),
        go.Scatter(x=[0, 1], y=[100.0, 300.0], mode="lines", name="right", yaxis="y2"),
        yaxis2={"title": {"text": "nats"}, "overlaying": "y", "side": "right", "range": [0, 400]},
    )
    ax, ax2 = main_axes(mfig), twin_axes(mfig)
    assert ax.get_shared_x_axes().joined(ax, ax2)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1.0, 2.0])
    (right,) = ax2.lines
    np.testing.assert_allclose(right.get_ydata(), [100.0, 300.0])
    assert ax2.get_ylabel() == "nats" and ax2.get_ylim() == (0, 400)


# --------------------------------------------------------------------------- box


def box_patches(ax) -> list[tuple[float, float, float]]:
    """(x centre, lower quartile, upper quartile) of every drawn box, left to right."""
    out = []
    for p in ax.patches:
        if isinstance(p, PathPatch):
            v = p.get_path().vertices
            centre = round(float(v[:, 0].min() + v[:, 0].max()) / 2, 6)
            out.append((centre, float(v[:, 1].min()), float(v[:, 1].max())))
    return sorted(out)


def test_boxes_categorical_x_grouped_side_by_side():
    y = [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    x = ["group"] * 5 + ["random"] * 5
    mfig = convert(
        go.Box(x=x, y=y, name="TE", boxpoints=False),
        go.Box(x=x, y=[v * 2 for v in y], name="DE", boxpoints=False),
        boxmode="group",
    )
    ax = main_axes(mfig)
    boxes = box_patches(ax)
    assert [b[0] for b in boxes] == [-0.175, 0.175, 0.825, 1.175]  # two traces side by side in each category
    assert boxes[0][1:] == (2.0, 4.0) and boxes[1][1:] == (4.0, 8.0)  # quartiles of TE, DE in "group"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["group", "random"]
    np.testing.assert_allclose(ax.get_xticks(), [0, 1])
    assert legend_labels(mfig) == ["TE", "DE"]
    overlaid = convert(go.Box(x=x, y=y, name="TE"), go.Box(x=x, y=y, name="DE"))  # no boxmode: same place
    assert sorted({b[0] for b in box_patches(main_axes(overlaid))}) == [0.0, 1.0]


@pytest.mark.parametrize(
    "boxpoints, n_points, fliers",
    [("all", 6, []), ("outliers", 0, [100.0]), ("suspectedoutliers", 0, [100.0]), (False, 0, None)],
)
def test_box_points_all_outliers_or_none(boxpoints, n_points, fliers):
    y = [1.0, 2.0, 3.0, 4.0, 5.0, 100.0]
    mfig = convert(
        go.Box(
            x=["a"] * 6,
            y=y,
            name="b",
            boxpoints=boxpoints,
            jitter=0.3,
            pointpos=0,
            marker={"color": "#4c72b0", "size": 4},
        )
    )
    ax = main_axes(mfig)
    drawn = sum(len(c.get_offsets()) for c in ax.collections)
    assert drawn == n_points
    if n_points:
        (points,) = ax.collections
        offsets = np.asarray(points.get_offsets())
        np.testing.assert_allclose(sorted(offsets[:, 1]), y)
        assert np.all(np.abs(offsets[:, 0]) < 0.7 / 2)  # jittered around the category
    flier_data = [list(line.get_ydata()) for line in ax.lines if line.get_marker() == "o"]
    if fliers is None:
        assert flier_data == []
    else:
        assert [v for data in flier_data for v in data] == fliers


# --------------------------------------------------------------------------- axes


def test_log_axes_and_log_ranges():
    mfig = convert(
        go.Scatter(x=[1, 10, 100], y=[0.01, 0.1, 1], mode="markers"),
        xaxis={"type": "log", "range": [0, 2]},
        yaxis={"type": "log"},
    )
    ax = main_axes(mfig)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    np.testing.assert_allclose(ax.get_xlim(), (1, 100))  # plotly gives log ranges as log10


def test_axis_titles_ranges_and_grid():
    mfig = convert(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines"),
        xaxis={"title": {"text": "position <i>p</i>"}, "range": [-1, 5], "showgrid": False},
        yaxis={"title": {"text": "activation"}, "range": [0, 2]},
    )
    ax = main_axes(mfig)
    assert ax.get_xlabel() == "position p" and ax.get_ylabel() == "activation"
    assert ax.get_xlim() == (-1, 5) and ax.get_ylim() == (0, 2)
    assert not any(line.get_visible() for line in ax.xaxis.get_gridlines())
    assert all(line.get_visible() for line in ax.yaxis.get_gridlines())


def test_category_order_array():
    x = ["b", "a", "c", "a"]
    mfig = convert(go.Box(x=x, y=[1, 2, 3, 4], name="v"), xaxis={"categoryorder": "array", "categoryarray": ["c", "a"]})
    ax = main_axes(mfig)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["c", "a", "b"]  # array first, then first appearance
    assert [b[0] for b in box_patches(ax)] == [0.0, 1.0, 2.0]


@pytest.mark.parametrize("angle, rotation, ha", [(-60, 60, "right"), (45, 315, "left")])
def test_tickvals_ticktext_and_tickangle(angle, rotation, ha):
    mfig = convert(
        go.Scatter(x=[0, 1, 2], y=[0, 1, 2], mode="markers"),
        xaxis={"tickvals": [0, 2], "ticktext": ["L0", "mlp<br>2"], "tickangle": angle},
    )
    ax = main_axes(mfig)
    np.testing.assert_allclose(ax.get_xticks(), [0, 2])
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == ["L0", "mlp\n2"]
    assert all(t.get_rotation() == pytest.approx(rotation) and t.get_ha() == ha for t in labels)


# --------------------------------------------------------------------------- layout


def test_layout_title_as_plain_text():
    mfig = convert(go.Scatter(x=[0], y=[0]), title={"text": "Fig. 5a <b>analogue</b><br>ΔH &amp; loss"})
    assert main_axes(mfig).get_title(loc="left") == "Fig. 5a analogue\nΔH & loss"


def test_layout_size_and_backgrounds():
    mfig = convert(go.Scatter(x=[0], y=[0]), width=400, height=300, paper_bgcolor="#eeeeee", plot_bgcolor="#fafafa")
    np.testing.assert_allclose(mfig.get_size_inches() * mfig.dpi, (400, 300))
    assert mfig.get_facecolor() == to_rgba("#eeeeee")
    assert main_axes(mfig).get_facecolor() == to_rgba("#fafafa")


@pytest.mark.parametrize("orientation", ["v", "h"])
def test_legend_vertical_right_or_horizontal_below(orientation):
    traces = [go.Scatter(x=[0, 1], y=[k, k + 1], mode="lines", name=f"line {k}") for k in range(3)]
    traces.append(go.Scatter(x=[0, 1], y=[0, 0], mode="lines", name="hidden", showlegend=False))
    mfig = convert(*traces, legend={"orientation": orientation})
    assert legend_labels(mfig) == ["line 0", "line 1", "line 2"]
    mfig.draw_without_rendering()
    legend = mfig.legends[0].get_window_extent()
    axes = main_axes(mfig).get_window_extent()
    entries = [t.get_window_extent() for t in mfig.legends[0].get_texts()]
    if orientation == "h":
        assert legend.y1 <= axes.y0  # below the plot, entries side by side
        assert entries[0].x1 < entries[1].x0 < entries[2].x0 and entries[0].y0 == pytest.approx(entries[2].y0)
    else:
        assert legend.x0 >= axes.x1  # right of the plot, entries stacked
        assert entries[0].y0 > entries[1].y1 and entries[1].y0 > entries[2].y1
        assert entries[0].x0 == pytest.approx(entries[2].x0)


def test_single_trace_has_no_legend_unless_asked():
    assert legend_labels(convert(go.Scatter(x=[0], y=[0], name="only"))) == []
    assert legend_labels(convert(go.Scatter(x=[0], y=[0], name="only"), showlegend=True)) == ["only"]


def test_hidden_traces_are_skipped():
    mfig = convert(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="shown"),
        go.Scatter(x=[0, 1], y=[1, 0], mode="lines", name="off", visible=False),
        go.Scatter(x=[0, 1], y=[2, 2], mode="lines", name="legendonly", visible="legendonly"),
    )
    (line,) = main_axes(mfig).lines
    np.testing.assert_allclose(line.get_ydata(), [0, 1])


def test_rect_and_line_shapes():
    fig = go.Figure(go.Scatter(x=[0, 10], y=[0, 5], mode="markers"))
    fig.add_shape(
        type="rect",
        xref="x",
        yref="paper",
        x0=2,
        x1=6,
        y0=0,
        y1=1,
        fillcolor="rgba(214, 39, 40, 0.10)",
        line={"width": 0},
        layer="below",
    )
    fig.add_shape(
        type="line",
        xref="paper",
        yref="y",
        x0=0,
        x1=1,
        y0=3,
        y1=3,
        line={"color": "rgba(60,60,60,0.6)", "width": 2, "dash": "dash"},
    )
    mfig = figure_to_matplotlib(fig)
    ax = main_axes(mfig)
    (rect,) = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert rect.get_xy() == (2.0, 0.0) and (rect.get_width(), rect.get_height()) == (4.0, 1.0)
    np.testing.assert_allclose(rect.get_facecolor(), (214 / 255, 39 / 255, 40 / 255, 0.10))
    assert rect.get_zorder() < 1  # below the data
    # x in data units, y in paper (axes) units
    assert display_xy(rect.get_data_transform(), (2, 1)) == (
        display_xy(ax.transData, (2, 0))[0],
        display_xy(ax.transAxes, (0, 1))[1],
    )
    (line,) = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert list(line.get_xdata()) == [0.0, 1.0] and list(line.get_ydata()) == [3.0, 3.0]
    assert line.get_linewidth() == pytest.approx(2 * PT)
    assert display_xy(line.get_transform(), (1, 3)) == (
        display_xy(ax.transAxes, (1, 0))[0],
        display_xy(ax.transData, (0, 3))[1],
    )


def test_annotations_in_data_and_paper_coordinates():
    fig = go.Figure(go.Scatter(x=[1, 100], y=[0, 1], mode="markers"))
    fig.update_xaxes(type="log")
    fig.add_annotation(
        text="second copy",
        xref="x",
        yref="paper",
        x=1,
        y=1.0,
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
        font={"size": 11, "color": "#1f77b4"},
    )
    fig.add_annotation(
        text="no data",
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.98,
        xanchor="center",
        yanchor="top",
        showarrow=False,
        bgcolor="rgba(255,255,255,0.85)",
        bordercolor="#bbbbbb",
        borderwidth=1,
    )
    fig.add_annotation(text="peak", x=2, y=1, showarrow=True)
    mfig = figure_to_matplotlib(fig)
    ax = main_axes(mfig)
    notes = {a.get_text(): a for a in ax.texts}
    data_note, paper_note, arrow_note = notes["second copy"], notes["no data"], notes["peak"]
    assert data_note.xy == (10.0, 1.0)  # log axis: plotly's x=1 means 10**1
    assert (data_note.get_ha(), data_note.get_va()) == ("left", "bottom")
    assert to_rgba(data_note.get_color()) == to_rgba("#1f77b4") and data_note.get_fontsize() == pytest.approx(11 * PT)
    assert display_xy(data_note.xycoords, (10, 1)) == (
        display_xy(ax.transData, (10, 0))[0],
        display_xy(ax.transAxes, (0, 1))[1],
    )
    assert paper_note.xy == (0.5, 0.98) and (paper_note.get_ha(), paper_note.get_va()) == ("center", "top")
    assert display_xy(paper_note.xycoords, (0.5, 0.98)) == display_xy(ax.transAxes, (0.5, 0.98))
    assert paper_note.get_bbox_patch() is not None and data_note.get_bbox_patch() is None
    assert arrow_note.arrow_patch is not None and data_note.arrow_patch is None


def test_shapes_and_annotations_on_y2_and_in_axis_domain():
    fig = go.Figure([go.Scatter(x=[0, 1], y=[0, 1]), go.Scatter(x=[0, 1], y=[10, 20], yaxis="y2")])
    fig.update_layout(yaxis2={"overlaying": "y", "side": "right"})
    fig.add_shape(type="line", xref="x domain", yref="y2", x0=0, x1=1, y0=15, y1=15, line={"dash": "dot"})
    fig.add_annotation(text="on y2", xref="x", yref="y2", x=0.5, y=15, showarrow=False)
    mfig = figure_to_matplotlib(fig)
    ax, ax2 = main_axes(mfig), twin_axes(mfig)
    (line,) = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert display_xy(line.get_transform(), (1, 15)) == (
        display_xy(ax.transAxes, (1, 0))[0],
        display_xy(ax2.transData, (0, 15))[1],
    )
    (note,) = [a for a in ax.texts if a.get_text() == "on y2"]
    assert display_xy(note.xycoords, (0.5, 15)) == (
        display_xy(ax.transData, (0.5, 0))[0],
        display_xy(ax2.transData, (0, 15))[1],
    )


# --------------------------------------------------------------------------- refusals and the PNG


@pytest.mark.parametrize(
    "trace",
    [go.Heatmap(z=[[1, 2], [3, 4]]), go.Bar(x=[1, 2], y=[3, 4]), go.Histogram(x=[1, 2, 2])],
    ids=["heatmap", "bar", "histogram"],
)
def test_unsupported_trace_types_raise(trace):
    with pytest.raises(NotImplementedError, match="trace type"):
        figure_to_matplotlib(go.Figure(trace))


@pytest.mark.parametrize(
    "build",
    [
        lambda: go.Figure(go.Scatter(x=[0], y=[0], yaxis="y3")),
        lambda: go.Figure(go.Scatter(x=[0], y=[0], xaxis="x2")),
        lambda: go.Figure(go.Scatter(x=["a", "b"], y=[0, 1])),
        lambda: go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="markers", marker={"color": ["red", "blue"]})),
        lambda: go.Figure(go.Box(y=[1, 2], x=["a", "b"], orientation="h")),
        lambda: go.Figure(go.Box(y=[1, 2], yaxis="y2")),
        lambda: go.Figure(go.Scatter(x=[0], y=[0])).add_shape(type="circle", x0=0, x1=1, y0=0, y1=1),
        lambda: go.Figure(go.Scatter(x=[0], y=[0])).add_annotation(text="t", xref="x2", x=0, y=0),
    ],
    ids=[
        "axis y3",
        "axis x2",
        "categorical scatter",
        "colour strings",
        "horizontal box",
        "box on y2",
        "circle shape",
        "annotation on x2",
    ],
)
def test_unsupported_parts_raise(build):
    with pytest.raises(NotImplementedError):
        figure_to_matplotlib(build())


@pytest.mark.parametrize("width, height, scale", [(900, 560, 2.0), (400, 300, 1.5), (640, 480, 1.0)])
def test_figure_to_png_returns_png_bytes_of_the_layout_size_times_scale(width, height, scale, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1]))
    fig.update_layout(width=width, height=height)
    data = figure_to_png(fig, scale=scale)
    assert isinstance(data, bytes) and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_size(data) == (round(width * scale), round(height * scale))
    assert list(tmp_path.iterdir()) == []  # pure: nothing written


def test_figure_to_png_checks_its_arguments():
    with pytest.raises(TypeError):
        figure_to_png({"data": []})
    with pytest.raises(ValueError):
        figure_to_png(go.Figure(), scale=0)
    with pytest.raises(TypeError):
        figure_to_matplotlib("not a figure")
