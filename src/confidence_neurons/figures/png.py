"""Plotly figure -> PNG bytes with matplotlib: no browser, no network, no files.

Plotly's own static export (``fig.to_image``) needs kaleido >= 1, which drives
a Chrome/Chromium binary that a fresh machine does not have and that kaleido
would download at run time.  The old ``kaleido==0.2.1`` wheel bundles its own
Chromium, but plotly 7 refuses it (``to_image`` demands kaleido >= 1), it is a
~220 MB install, and it cannot coexist with kaleido 1.x (same distribution
name).  So PNGs are drawn here with **matplotlib** (Agg, bundled DejaVu fonts)
from the figure's own data.  :func:`figure_to_matplotlib` builds the matplotlib
figure, :func:`figure_to_png` renders it.

The rule: figures use only this subset of Plotly (``tests/figures/test_png.py``
has one test per item).

* traces: ``scatter`` and ``box`` (hidden traces, ``visible`` False or
  ``"legendonly"``, are skipped);
* ``scatter``: numeric x / y (x optional); mode ``lines`` / ``markers`` /
  ``text``; trace opacity; lines with colour, width and dash; markers with a
  scalar colour, size (scalar or per point), opacity and outline, or a numeric
  colour array on a colour scale (the marker's own or a shared ``coloraxis``)
  with a colour bar; text labels with ``textposition`` (one or per point) and
  ``textfont``; on the primary or an overlaid secondary y axis (``y2``);
* ``box``: vertical, primary axes; categorical x (or one box per trace name),
  ``boxmode="group"``, box points ``"all"`` (with jitter and pointpos) /
  ``"outliers"`` / ``"suspectedoutliers"`` / ``False``; marker, line and fill colours;
* axes ``x``, ``y`` and ``y2``: linear or log, title, range, grid, numeric
  ``tickvals`` with ``ticktext``, ``tickangle``, category order ``"array"`` (box categories);
* layout: width and height, paper and plot background, colorway, title,
  ``showlegend``, legend vertical or horizontal (``orientation="h"``, below the plot);
* ``rect`` and ``line`` shapes (fill, line colour / width / dash, opacity,
  ``layer="below"``) and text annotations (font, anchors, background and
  border, optional arrow), in data (x, y, y2), paper or axis-domain coordinates;
* text is Plotly's pseudo-HTML reduced to plain text (``<br>`` -> newline).

Anything else (other trace types, axes such as ``x2`` or ``y3``, other shape
types, categorical scatter coordinates, per-point colour strings, horizontal
boxes, boxes on ``y2``) raises :class:`NotImplementedError` instead of
producing a silently wrong picture.  Requirement: ``matplotlib>=3.8`` (pinned
in the project as ``matplotlib==3.11.2``), a pure wheel install.

This module is over 400 lines on purpose: it is one converter whose methods
each draw one item of the subset above, and the subset is the contract that
every figure module and the tests read in one place.
"""

from __future__ import annotations

import html
import io
import re
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["figure_to_matplotlib", "figure_to_png"]

_DEFAULT_WIDTH = 900
_DEFAULT_HEIGHT = 560
_PX_TO_PT = 0.75  # CSS pixel (1/96 in) -> typographic point (1/72 in)
_DEFAULT_COLORWAY = (
    "#636efa",
    "#EF553B",
    "#00cc96",
    "#ab63fa",
    "#FFA15A",
    "#19d3f3",
    "#FF6692",
    "#B6E880",
    "#FF97FF",
    "#FECB52",
)
_GRID = "#EBF0F8"
_INK = "#2a3f5f"


# --------------------------------------------------------------------------- colour helpers

_RGB_RE = re.compile(r"^\s*rgba?\(\s*([^)]*)\)\s*$", re.IGNORECASE)


def _rgba(color: Any, default: str = _INK) -> tuple[float, float, float, float]:
    """Plotly colour string (hex, CSS name, rgb(), rgba()) -> matplotlib RGBA tuple."""
    from matplotlib.colors import to_rgba

    if color is None:
        color = default
    if isinstance(color, str):
        m = _RGB_RE.match(color)
        if m:
            parts = [p.strip() for p in m.group(1).split(",")]
            r, g, b = (float(p.rstrip("%")) / (100 if p.endswith("%") else 255) for p in parts[:3])
            a = float(parts[3]) if len(parts) > 3 else 1.0
            return (r, g, b, a)
    try:
        return to_rgba(color)
    except ValueError:
        return to_rgba(default)


def _cmap(colorscale: Any):
    from matplotlib import colormaps
    from matplotlib.colors import LinearSegmentedColormap

    if colorscale is None:
        return colormaps["viridis"]
    if isinstance(colorscale, str):
        name = colorscale.lower()
        rev = name.endswith("_r")
        base = name[:-2] if rev else name
        if base in colormaps:
            cm = colormaps[base]
            return cm.reversed() if rev else cm
        import plotly.colors

        colorscale = plotly.colors.get_colorscale(colorscale)
    stops = [(float(pos), _rgba(col)) for pos, col in colorscale]
    return LinearSegmentedColormap.from_list("plotly", stops)


# --------------------------------------------------------------------------- text helpers

_TAG_RE = re.compile(r"<[^>]+>")


def _plain(text: Any) -> str:
    """Plotly's pseudo-HTML text -> plain text (``<br>`` becomes a newline)."""
    if text is None:
        return ""
    s = re.sub(r"<br\s*/?>", "\n", str(text), flags=re.IGNORECASE)
    s = _TAG_RE.sub("", s)
    return html.unescape(s)  # every entity, as Plotly draws them (``style.escape_text`` makes some)


def _wrap(text: str, width_chars: int) -> str:
    return "\n".join(textwrap.fill(line, max(width_chars, 20)) or line for line in text.split("\n"))


def _title_text(obj: Any) -> str:
    if obj is None:
        return ""
    t = getattr(obj, "title", None)
    if t is None:
        return ""
    return _plain(getattr(t, "text", None))


def _pt(px: Any, default: float) -> float:
    return (float(px) if px is not None else default) * _PX_TO_PT


# --------------------------------------------------------------------------- conversion

_SUPPORTED = {"scatter", "box"}
_DASH = {"solid": "-", "dash": "--", "dot": ":", "dashdot": "-.", "longdash": "--", "longdashdot": "-."}
_TEXTPOS = {  # plotly textposition -> (dx sign, dy sign, ha, va)
    "top left": (-1, 1, "right", "bottom"),
    "top center": (0, 1, "center", "bottom"),
    "top right": (1, 1, "left", "bottom"),
    "middle left": (-1, 0, "right", "center"),
    "middle center": (0, 0, "center", "center"),
    "middle right": (1, 0, "left", "center"),
    "bottom left": (-1, -1, "right", "top"),
    "bottom center": (0, -1, "center", "top"),
    "bottom right": (1, -1, "left", "top"),
}


def _as_float_array(values: Any) -> np.ndarray:
    if values is None:
        return np.array([], dtype=float)
    arr = np.asarray(values, dtype=object).reshape(-1)
    out = np.full(arr.shape, np.nan)
    for i, v in enumerate(arr):
        try:
            out[i] = float(v) if v is not None else np.nan
        except (TypeError, ValueError):
            raise NotImplementedError(
                f"PNG export: non-numeric coordinate {v!r} in a scatter trace is not supported"
            ) from None
    return out


class _Converter:
    def __init__(self, fig: go.Figure):
        from matplotlib.figure import Figure

        self.pfig = fig
        self.layout = fig.layout
        self.width = int(self.layout.width or _DEFAULT_WIDTH)
        self.height = int(self.layout.height or _DEFAULT_HEIGHT)
        self.mfig = Figure(figsize=(self.width / 100, self.height / 100), dpi=100, layout="constrained")
        self.mfig.patch.set_facecolor(_rgba(self.layout.paper_bgcolor, "white"))
        self.ax = self.mfig.add_subplot(1, 1, 1)
        self.ax2 = None
        self.handles: list[Any] = []
        self.colorbars: list[tuple[str, Any, Any, str]] = []  # (key, norm, cmap, title)
        template = self.layout.template
        colorway = None
        if self.layout.colorway:
            colorway = self.layout.colorway
        elif template is not None and template.layout is not None and template.layout.colorway:
            colorway = template.layout.colorway
        self.colorway = tuple(colorway or _DEFAULT_COLORWAY)

    # axes -----------------------------------------------------------------
    def _axis_for(self, yref: str | None):
        if yref in (None, "y"):
            return self.ax
        if yref == "y2":
            if self.ax2 is None:
                self.ax2 = self.ax.twinx()
            return self.ax2
        raise NotImplementedError(f"PNG export: y axis {yref!r} is not supported (only y and y2)")

    def _style_axis(self, ax, laxis, which: str, *, grid: bool) -> None:
        is_log = laxis is not None and laxis.type == "log"
        setter = ax.set_xscale if which == "x" else ax.set_yscale
        if is_log:
            setter("log")
        title = _title_text(laxis)
        if title:
            label = ax.set_xlabel if which == "x" else ax.set_ylabel
            label(_wrap(title, 70 if which == "x" else 45), color=_INK, fontsize=9.5)
        rng = laxis.range if laxis is not None else None
        if rng is not None and len(rng) == 2 and None not in rng:
            lo, hi = (10 ** float(rng[0]), 10 ** float(rng[1])) if is_log else (rng[0], rng[1])
            (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
        show_grid = grid if laxis is None or laxis.showgrid is None else bool(laxis.showgrid)
        if show_grid:
            ax.grid(True, axis=which, color=_GRID, linewidth=1.0)
        else:
            ax.grid(False, axis=which)
        ax.tick_params(axis=which, which="both", colors=_INK, labelsize=8.5, length=0)
        if laxis is not None and laxis.tickvals is not None:  # explicit ticks (numeric axes)
            vals = [float(v) for v in laxis.tickvals]
            text = [_plain(t) for t in laxis.ticktext] if laxis.ticktext is not None else None
            if text is not None and len(text) != len(vals):
                raise ValueError(f"PNG export: {len(vals)} tickvals but {len(text)} ticktext entries")
            (ax.set_xticks if which == "x" else ax.set_yticks)(vals, text)
        if laxis is not None and laxis.tickangle not in (None, "auto"):
            angle = -float(laxis.tickangle)  # plotly turns clockwise, matplotlib counter-clockwise
            ax.tick_params(axis=which, labelrotation=angle)
            if which == "x" and angle % 180:
                for label in ax.get_xticklabels():
                    label.set(ha="right" if 0 < angle % 180 < 90 else "left", rotation_mode="anchor")

    # traces ---------------------------------------------------------------
    def _color(self, i: int) -> str:
        return self.colorway[i % len(self.colorway)]

    def _legend_visible(self, trace, n_traces: int) -> bool:
        if self.layout.showlegend is False or trace.showlegend is False:
            return False
        if self.layout.showlegend is True or trace.showlegend is True:
            return True
        return n_traces > 1

    def _scatter(self, trace, i: int, n_traces: int) -> None:
        from matplotlib.colors import Normalize
        from matplotlib.lines import Line2D

        ax = self._axis_for(trace.yaxis)
        if trace.xaxis not in (None, "x"):
            raise NotImplementedError(f"PNG export: x axis {trace.xaxis!r} is not supported")
        x = _as_float_array(trace.x)
        y = _as_float_array(trace.y)
        if trace.x is None:
            x = np.arange(len(y), dtype=float)
        if len(x) != len(y):
            raise ValueError("PNG export: scatter trace with x and y of different lengths")
        mode = trace.mode or ("lines+markers" if len(y) < 20 else "lines")
        parts = set(mode.split("+"))
        base_color = self._color(i)
        alpha = 1.0 if trace.opacity is None else float(trace.opacity)
        marker, line = trace.marker, trace.line
        show_legend = self._legend_visible(trace, n_traces) and bool(trace.name)
        handle = None

        if "lines" in parts:
            color = _rgba(line.color if line.color is not None else base_color)
            lw = _pt(line.width, 2.0)
            ls = _DASH.get(line.dash or "solid", "-")
            ax.plot(x, y, color=color, linewidth=lw, linestyle=ls, alpha=alpha, zorder=2)
            handle = Line2D([], [], color=color, linewidth=max(lw, 1.0), linestyle=ls)

        if "markers" in parts:
            size_px = marker.size if marker.size is not None else 6
            if np.ndim(size_px):
                sizes = (np.asarray(size_px, dtype=float) * _PX_TO_PT) ** 2
                size_leg = float(np.nanmean(np.asarray(size_px, dtype=float)))
            else:
                sizes = (float(size_px) * _PX_TO_PT) ** 2
                size_leg = float(size_px)
            m_alpha = alpha * (1.0 if marker.opacity is None else float(marker.opacity))
            edge = marker.line
            has_edge = edge is not None and edge.color is not None and not np.ndim(edge.color)
            ec = _rgba(edge.color) if has_edge else "none"
            ew = _pt(edge.width, 0.0) if edge is not None and edge.width is not None else 0.0
            mcolor = marker.color
            if mcolor is not None and np.ndim(mcolor) and len(mcolor) == len(y) and not isinstance(mcolor, str):
                vals = _as_float_array(mcolor)
                if marker.coloraxis:
                    cax = self.layout[marker.coloraxis]
                    cscale, cmin, cmax, cbar = cax.colorscale, cax.cmin, cax.cmax, cax.colorbar
                    show = cax.showscale is not False
                    key = marker.coloraxis
                else:
                    cscale, cmin, cmax, cbar = marker.colorscale, marker.cmin, marker.cmax, marker.colorbar
                    show = bool(marker.showscale)
                    key = f"trace{i}"
                finite = vals[np.isfinite(vals)]
                lo = float(cmin) if cmin is not None else (float(finite.min()) if finite.size else 0.0)
                hi = float(cmax) if cmax is not None else (float(finite.max()) if finite.size else 1.0)
                norm, cmap = Normalize(lo, hi), _cmap(cscale)
                ax.scatter(
                    x,
                    y,
                    c=vals,
                    cmap=cmap,
                    norm=norm,
                    s=sizes,
                    alpha=m_alpha,
                    edgecolors=ec,
                    linewidths=ew,
                    zorder=3,
                    plotnonfinite=False,
                )
                if show and key not in {k for k, *_ in self.colorbars}:
                    self.colorbars.append((key, norm, cmap, _title_text(cbar)))
                face = cmap(0.6)
            else:
                if mcolor is not None and np.ndim(mcolor):
                    raise NotImplementedError("PNG export: per-point colour strings are not supported")
                face = _rgba(mcolor if mcolor is not None else base_color)
                ax.scatter(x, y, color=face, s=sizes, alpha=m_alpha, edgecolors=ec, linewidths=ew, zorder=3)
            if handle is None:
                handle = Line2D(
                    [],
                    [],
                    linestyle="none",
                    marker="o",
                    markersize=size_leg * _PX_TO_PT,
                    markerfacecolor=face,
                    markeredgecolor=ec if ec != "none" else face,
                    markeredgewidth=ew,
                    alpha=m_alpha,
                )

        if "text" in parts and trace.text is not None:
            texts = [trace.text] * len(x) if isinstance(trace.text, str) else list(trace.text)
            tf = trace.textfont
            tcolor = _rgba(tf.color if tf is not None and tf.color is not None and not np.ndim(tf.color) else _INK)
            tsize = _pt(tf.size if tf is not None and tf.size is not None and not np.ndim(tf.size) else 12, 12)
            tpos = trace.textposition
            positions = [tpos] * len(x) if tpos is None or isinstance(tpos, str) else list(tpos)
            size_px = float(marker.size) if marker.size is not None and not np.ndim(marker.size) else 6
            off = size_px * _PX_TO_PT / 2 + 2
            for xi, yi, t, pos in zip(x, y, texts, positions):
                if t is None or not (np.isfinite(xi) and np.isfinite(yi)):
                    continue
                dxs, dys, ha, va = _TEXTPOS.get(pos or "middle center", _TEXTPOS["middle center"])
                ax.annotate(
                    _plain(t),
                    (xi, yi),
                    xytext=(dxs * off, dys * off),
                    textcoords="offset points",
                    ha=ha,
                    va=va,
                    color=tcolor,
                    fontsize=tsize,
                    zorder=4,
                )

        if show_legend and handle is not None:
            handle.set_label(_plain(trace.name))
            self.handles.append(handle)

    def _boxes(self, traces: list[tuple[int, Any]], n_traces: int) -> None:
        from matplotlib import cbook
        from matplotlib.patches import Patch

        ax = self.ax
        grouped = [i for i, t in traces if t.x is not None]
        # Category order: explicit array order, then first appearance.
        cats: list[str] = []
        xaxis = self.layout.xaxis
        if xaxis.categoryorder == "array" and xaxis.categoryarray is not None:
            cats.extend(str(c) for c in xaxis.categoryarray)
        for i, t in traces:
            labels = [str(v) for v in t.x] if t.x is not None else [str(t.name if t.name is not None else f"trace {i}")]
            for c in labels:
                if c not in cats:
                    cats.append(c)
        pos_of = {c: float(j) for j, c in enumerate(cats)}
        n_group = len(grouped) if self.layout.boxmode == "group" and grouped else 1
        width = 0.7 / n_group

        for slot, (i, t) in enumerate(traces):
            if t.orientation == "h":
                raise NotImplementedError("PNG export: horizontal box plots are not supported")
            if t.yaxis not in (None, "y"):
                raise NotImplementedError("PNG export: box traces on a secondary axis are not supported")
            color = _rgba(
                t.marker.color
                if t.marker.color is not None and not np.ndim(t.marker.color)
                else (t.line.color or self._color(i))
            )
            line_color = _rgba(t.line.color) if t.line.color is not None else color
            fill = _rgba(t.fillcolor) if t.fillcolor is not None else (color[0], color[1], color[2], 0.35)
            y = _as_float_array(t.y)
            labels = np.array([str(v) for v in t.x]) if t.x is not None else np.array([str(t.name)] * len(y))
            g = grouped.index(i) if (t.x is not None and n_group > 1) else None
            shift = 0.0 if g is None else (g - (n_group - 1) / 2) * width
            rng = np.random.default_rng(slot)
            pts = "outliers" if t.boxpoints is None else t.boxpoints
            for cat in dict.fromkeys(labels):
                vals = y[(labels == cat) & np.isfinite(y)]
                if vals.size == 0:
                    continue
                pos = pos_of[cat] + shift
                stats = cbook.boxplot_stats(vals, whis=1.5)
                ax.bxp(
                    stats,
                    positions=[pos],
                    widths=width * 0.85,
                    patch_artist=True,
                    showfliers=pts in ("outliers", "suspectedoutliers"),
                    boxprops={"facecolor": fill, "edgecolor": line_color, "linewidth": 1.2},
                    medianprops={"color": line_color, "linewidth": 1.6},
                    whiskerprops={"color": line_color},
                    capprops={"color": line_color},
                    flierprops={"marker": "o", "markersize": 3, "markerfacecolor": color, "markeredgecolor": "none"},
                    manage_ticks=False,
                    zorder=2,
                )
                if pts == "all":
                    jitter = float(t.jitter) if t.jitter is not None else 0.3
                    px = pos + (t.pointpos or 0) * width / 2 + rng.uniform(-0.5, 0.5, vals.size) * jitter * width
                    ms = _pt(t.marker.size, 6)
                    ax.scatter(px, vals, s=ms**2, color=color, alpha=0.75, edgecolors="none", zorder=3)
            if self._legend_visible(t, n_traces) and t.name:
                self.handles.append(Patch(facecolor=fill, edgecolor=line_color, label=_plain(t.name)))
        ax.set_xticks(list(pos_of.values()), [_wrap(c, 28) for c in pos_of])
        ax.set_xlim(-0.6, len(cats) - 0.4)

    # decorations ------------------------------------------------------------
    def _transform(self, xref: str | None, yref: str | None):
        from matplotlib.transforms import blended_transform_factory

        def pick(ref, axis):
            ref = ref or axis
            if ref == "paper" or ref.endswith(" domain"):
                return self.ax.transAxes, None
            base = ref.split(" ")[0]
            if base == axis:
                return self.ax.transData, self.ax
            if base == "y2":
                ax = self._axis_for("y2")
                return ax.transData, ax
            raise NotImplementedError(f"PNG export: reference {ref!r} is not supported")

        tx, axx = pick(xref, "x")
        ty, axy = pick(yref, "y")
        return blended_transform_factory(tx, ty), axx, axy

    def _shapes(self) -> None:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Rectangle

        for shp in self.layout.shapes or ():
            if shp.visible is False:
                continue
            kind = shp.type or "path"
            if kind not in ("rect", "line"):
                raise NotImplementedError(f"PNG export: shape type {kind!r} is not supported")
            trans, _, _ = self._transform(shp.xref, shp.yref)
            x0, x1, y0, y1 = (float(v) for v in (shp.x0, shp.x1, shp.y0, shp.y1))
            lw = _pt(shp.line.width, 2.0) if shp.line is not None else 0.0
            lc = _rgba(shp.line.color) if shp.line is not None and shp.line.color is not None else _rgba(_INK)
            alpha = None if shp.opacity is None else float(shp.opacity)  # None keeps rgba alpha
            z = 0.2 if shp.layer == "below" else 5
            if kind == "rect":
                fc = _rgba(shp.fillcolor) if shp.fillcolor is not None else (0, 0, 0, 0)
                self.ax.add_patch(
                    Rectangle(
                        (x0, y0),
                        x1 - x0,
                        y1 - y0,
                        transform=trans,
                        facecolor=fc,
                        edgecolor=lc if lw > 0 else "none",
                        linewidth=lw,
                        alpha=alpha,
                        zorder=z,
                        clip_on=False,
                    )
                )
            else:
                self.ax.add_line(
                    Line2D(
                        [x0, x1],
                        [y0, y1],
                        transform=trans,
                        color=lc,
                        linewidth=lw,
                        alpha=alpha,
                        zorder=z,
                        linestyle=_DASH.get(shp.line.dash or "solid", "-"),
                    )
                )

    def _annotations(self) -> None:
        for ann in self.layout.annotations or ():
            if ann.visible is False or ann.text is None:
                continue
            trans, axx, axy = self._transform(ann.xref, ann.yref)
            x = float(ann.x if ann.x is not None else 0.5)
            y = float(ann.y if ann.y is not None else 0.5)
            if axx is not None and axx.get_xscale() == "log":
                x = 10**x  # plotly gives annotation positions on log axes as log10
            if axy is not None and axy.get_yscale() == "log":
                y = 10**y
            ha = {"left": "left", "right": "right"}.get(ann.xanchor or "auto", "center")
            va = {"top": "top", "bottom": "bottom"}.get(ann.yanchor or "auto", "center")
            font = ann.font
            kw: dict[str, Any] = {
                "color": _rgba(font.color if font is not None and font.color is not None else _INK),
                "fontsize": _pt(font.size if font is not None else None, 12),
                "ha": ha,
                "va": va,
                "zorder": 6,
                "annotation_clip": False,
            }
            if ann.bgcolor is not None or (ann.borderwidth or 0) > 0:
                kw["bbox"] = {
                    "boxstyle": "square,pad=0.3",
                    "facecolor": _rgba(ann.bgcolor) if ann.bgcolor is not None else "none",
                    "edgecolor": _rgba(ann.bordercolor) if ann.bordercolor is not None and ann.borderwidth else "none",
                    "linewidth": _pt(ann.borderwidth, 1.0),
                }
            if ann.showarrow is False:
                self.ax.annotate(_plain(ann.text), (x, y), xycoords=trans, **kw)
            else:
                dx = float(ann.ax if ann.ax is not None else -10) * _PX_TO_PT
                dy = -float(ann.ay if ann.ay is not None else -30) * _PX_TO_PT
                self.ax.annotate(
                    _plain(ann.text),
                    (x, y),
                    xycoords=trans,
                    xytext=(dx, dy),
                    textcoords="offset points",
                    arrowprops={"arrowstyle": "-", "color": kw["color"], "linewidth": 0.8},
                    **kw,
                )

    # main -------------------------------------------------------------------
    def build(self) -> Figure:
        from matplotlib.cm import ScalarMappable

        traces = [t for t in self.pfig.data if t.visible in (None, True)]
        for t in traces:
            if t.type not in _SUPPORTED:
                raise NotImplementedError(
                    f"PNG export: trace type {t.type!r} is not supported (supported: {sorted(_SUPPORTED)})"
                )
        layout = self.layout
        self.ax.set_facecolor(_rgba(layout.plot_bgcolor, "white"))
        for spine in self.ax.spines.values():
            spine.set_visible(False)
        self._style_axis(self.ax, layout.xaxis, "x", grid=True)
        self._style_axis(self.ax, layout.yaxis, "y", grid=True)
        self.ax.set_axisbelow(True)
        yaxis2 = getattr(layout, "yaxis2", None)  # subplot axes exist only once set
        if any(t.yaxis == "y2" for t in traces) or (yaxis2 is not None and yaxis2.overlaying == "y"):
            ax2 = self._axis_for("y2")
            for spine in ax2.spines.values():
                spine.set_visible(False)
            self._style_axis(ax2, yaxis2, "y", grid=False)
        n = len(traces)
        boxes = [(i, t) for i, t in enumerate(traces) if t.type == "box"]
        for i, t in enumerate(traces):
            if t.type == "scatter":
                self._scatter(t, i, n)
        if boxes:
            self._boxes(boxes, n)
        self._shapes()
        self._annotations()

        for _key, norm, cmap, title in self.colorbars:
            axes = [self.ax] if self.ax2 is None else [self.ax, self.ax2]
            cb = self.mfig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, pad=0.02, fraction=0.05)
            cb.outline.set_visible(False)
            cb.ax.tick_params(labelsize=8, colors=_INK)
            if title:
                cb.set_label(title, color=_INK, fontsize=9)

        if self.handles:
            horizontal = layout.legend is not None and layout.legend.orientation == "h"
            if horizontal:
                self.mfig.legend(
                    handles=self.handles,
                    loc="outside lower center",
                    ncols=min(len(self.handles), 4),
                    frameon=False,
                    fontsize=8.5,
                )
            else:
                self.mfig.legend(handles=self.handles, loc="outside right upper", frameon=False, fontsize=8.5)

        title = _title_text(layout)
        if title:
            # An axes title (not suptitle) so it never collides with an outside legend.
            self.ax.set_title(_wrap(title, int(self.width / 13)), loc="left", color=_INK, fontsize=12, pad=10)
        return self.mfig


def figure_to_matplotlib(fig: go.Figure) -> Figure:
    """The matplotlib figure that :func:`figure_to_png` renders: ``layout.width x layout.height`` pixels at
    dpi 100 (default 900x560).  Raises NotImplementedError outside the supported subset (module docstring).
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"expected a plotly.graph_objects.Figure, got {type(fig).__name__}")
    return _Converter(fig).build()


def figure_to_png(fig: go.Figure, *, scale: float = 2.0) -> bytes:
    """Render ``fig`` to PNG bytes with matplotlib (no browser, no network, no file).

    The image is ``layout.width x layout.height`` pixels (default 900x560) times
    ``scale``.  Supported Plotly features are listed in the module docstring;
    others raise :class:`NotImplementedError`.
    """
    if not isinstance(fig, go.Figure):
        raise TypeError(f"expected a plotly.graph_objects.Figure, got {type(fig).__name__}")
    if scale <= 0:
        raise ValueError("scale must be > 0")
    mfig = _Converter(fig).build()
    buf = io.BytesIO()
    mfig.savefig(buf, format="png", dpi=100 * float(scale), facecolor=mfig.get_facecolor())
    return buf.getvalue()
