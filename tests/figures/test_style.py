"""The shared figure style: one definition per constant and helper, used by every figure module."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

import confidence_neurons.figures as figures_pkg
from confidence_neurons.figures import activity, entropy, frequency, induction, style

FIGURES_DIR = Path(figures_pkg.__file__).parent


def module_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def test_style_names_are_defined_only_in_style():
    shared = set(style.__all__) | {f"_{n}" for n in style.__all__} | {"_ZERO_LINE", "_note", "_base_layout"}
    for path in sorted(FIGURES_DIR.rglob("*.py")):
        if path.name == "style.py":
            continue
        again = module_level_names(path) & shared
        assert not again, f"{path.relative_to(FIGURES_DIR)} redefines {sorted(again)}; import them from style"


def test_one_value_per_meaning_across_modules():
    assert entropy.ENTROPY_COLOR == frequency.ENTROPY_COLOR == induction.ENTROPY_COLOR == style.ENTROPY_COLOR
    assert frequency.FREQ_COLOR == induction.FREQ_COLOR == style.FREQ_COLOR
    assert induction.RANDOM_COLOR == style.RANDOM_COLOR
    assert induction.RANDOM_TRACE == style.RANDOM_TRACE
    fig = entropy.fig_total_vs_direct(
        pd.DataFrame({"name": ["a", "b"], "TE": [1.0, 2.0], "DE": [0.5, 1.0], "is_entropy_neuron": [True, False]})
    )
    assert list(fig.layout.xaxis.categoryarray)[1].startswith(style.RANDOM_TRACE)


def test_check_columns_names_the_function_argument_and_columns():
    style.check_columns(pd.DataFrame({"a": [1]}), ["a"], "fig_x")
    with pytest.raises(KeyError, match=r"fig_x: `tokens` lacks column\(s\) \['b', 'c'\]"):
        style.check_columns(pd.DataFrame({"a": [1]}), ["c", "a", "b"], "fig_x", "tokens")


def test_flag_and_floats():
    df = pd.DataFrame({"f": [True, None, False], "v": ["1.5", "x", 2]})
    np.testing.assert_array_equal(style.flag(df, "f"), [True, False, False])
    np.testing.assert_array_equal(style.flag(df, "missing"), [False, False, False])
    np.testing.assert_allclose(style.floats(df["v"]), [1.5, np.nan, 2.0])


def test_label_positions_alternate_in_x_order():
    assert style.label_positions(np.array([3.0, 1.0, 2.0, np.nan])) == [
        "top center",
        "top center",
        "bottom center",
        "bottom center",
    ]


def test_hover_data_fills_missing_columns_with_nan():
    custom, template = style.hover_data(pd.DataFrame({"name": ["n1"], "TE": [0.5]}))
    assert custom[0, 0] == "n1" and custom[0, 1] == 0.5 and np.isnan(custom[0, 2])
    assert "TE = %{customdata[1]:.4g}" in template and "ρ = %{customdata[3]:.4g}" in template


def test_base_layout_note_and_reference_lines():
    fig = style.base_layout(go.Figure(), "Fig. 0 analogue: t", "x", "y", legend=style.legend_below(-0.2))
    assert fig.layout.template.layout.plot_bgcolor == "white"
    assert (fig.layout.width, fig.layout.height) == (900, 560)
    assert fig.layout.title.text == "Fig. 0 analogue: t" and fig.layout.xaxis.title.text == "x"
    assert fig.layout.legend.orientation == "h" and fig.layout.legend.y == -0.2
    style.note(fig, "nothing here")
    assert [a.text for a in fig.layout.annotations] == ["nothing here"]
    style.hline(fig, 0.1)
    style.vline(fig)
    h, v = fig.layout.shapes
    assert (h.xref, h.yref, h.y0, h.y1, h.line.dash) == ("paper", "y", 0.1, 0.1, "dash")
    assert (v.xref, v.yref, v.x0, v.x1, v.line.dash) == ("x", "paper", 0, 0, "dash")


def test_activity_figures_use_the_style_zero_lines():
    tokens = pd.DataFrame(
        {
            "seq": [0],
            "pos": [0],
            "token": ["a"],
            "target": ["b"],
            "clipped": [True],
            "delta_kl": [0.1],
            "delta_entropy": [-0.1],
            "delta_loss": [0.0],
            "reciprocal_rank": [1.0],
        }
    )
    fig = activity.fig_kl_vs_entropy_change(tokens, "n")
    assert [s.line.dash for s in fig.layout.shapes] == ["dash", "dash"]
    assert all(s.line.color == style.ZERO_LINE["color"] for s in fig.layout.shapes)
