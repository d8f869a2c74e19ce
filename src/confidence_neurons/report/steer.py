"""What a steer run shows: its figures, the plain verdict (which dial calibrates better) and the
sections of its report.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from plotly.graph_objects import Figure

from confidence_neurons.figures.steer import (
    fig_entropy_accuracy_vs_alpha,
    fig_implied_histogram,
    fig_implied_vs_confidence,
    fig_nll_vs_ece,
    fig_reliability,
)
from confidence_neurons.report.html import ReportSection

if TYPE_CHECKING:
    from confidence_neurons.commands.steer import SteerResult

SHOWN = ["label", "nll", "ece", "brier", "accuracy", "entropy", "confidence", "mean_rank_change", "top1_change_frac"]


def _row(table: pd.DataFrame, mask) -> pd.Series | None:
    rows = table[mask]
    return None if rows.empty else rows.iloc[0]


def primary_dial(result: SteerResult) -> str:
    """The dial the single-dial figures show: all neurons together when there are several, else the one."""
    return result.settings["dials"][0]


def fitted_rows(result: SteerResult) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(clean, fitted temperature, the fitted neuron dial of least fitting-part NLL)."""
    t = result.table
    clean = _row(t, t["kind"] == "clean")
    temp = _row(t, (t["kind"] == "temperature") & t["fitted"])
    dials = t[(t["kind"] == "neuron dial") & t["fitted"]].sort_values("fit_nll", kind="stable")
    return clean, temp, dials.iloc[0]


def verdict(result: SteerResult) -> str:
    """Which of the two dials calibrates better on the measuring part, with the numbers."""
    clean, temp, dial = fitted_rows(result)
    both = "(ECE {:.4f}, NLL {:.4f}, Brier {:.4f})"
    t_text = f"temperature scaling at the fitted T = {temp['T']:.3f} " + both.format(temp.ece, temp.nll, temp.brier)
    d_text = f"the neuron dial {dial['dial']} at its fitted alpha = {dial['alpha']:.3f} " + both.format(
        dial.ece, dial.nll, dial.brier
    )
    c_text = "the clean model " + both.format(clean.ece, clean.nll, clean.brier)
    numbers = [row[m] for row in (clean, temp, dial) for m in ("ece", "nll", "brier")]
    if not all(math.isfinite(float(x)) for x in numbers):  # a comparison of NaNs is no verdict
        head = "No verdict: some of the numbers below are not finite, so the dials cannot be compared"
    elif abs(temp.ece - dial.ece) < 1e-4:
        head = "Both dials calibrate about equally well"
    elif temp.ece < dial.ece:
        head = "Temperature scaling calibrates better than the neuron dial"
    else:
        head = "The neuron dial calibrates better than temperature scaling"
    return f"{head} on {result.settings['model']} and this text: {t_text} against {d_text}; {c_text}."


def frontier_text(result: SteerResult) -> str:
    """The lowest ECE each dial reaches on its grid, and the NLL it costs there."""
    t = result.table[~result.table["fitted"] & (result.table["kind"] != "clean")]
    parts = []
    for key, rows in [("temperature scaling", t[t["kind"] == "temperature"])] + [
        (f"neuron dial {d}", rows) for d, rows in t[t["kind"] == "neuron dial"].groupby("dial", sort=False)
    ]:
        best = rows.loc[rows["ece"].idxmin()]
        where = f"T = {best['T']:g}" if key == "temperature scaling" else f"alpha = {best['alpha']:g}"
        parts.append(f"{key}: ECE {best['ece']:.4f} at {where} (NLL {best['nll']:.4f})")
    return "Lowest ECE on each grid: " + "; ".join(parts) + "."


def implied_text(result: SteerResult) -> str:
    """Median implied temperature of the clipped tokens and its rank correlation with clean confidence."""
    parts = []
    for dial, rows in result.implied.groupby("dial", sort=False):
        c = rows[rows["clipped"] & np.isfinite(rows["T_implied"])]
        if c.empty:
            parts.append(f"{dial}: clipping changes no token")
            continue
        rho = np.corrcoef(c["clean_confidence"].rank(), c["T_implied"].rank())[0, 1] if len(c) > 2 else np.nan
        parts.append(
            f"{dial}: {len(c)} clipped tokens ({rows['clipped'].mean():.0%}), median T {c['T_implied'].median():.4f}, "
            f"{(c['T_implied'] < 1).mean():.0%} below 1, Spearman correlation with clean confidence {rho:+.3f}; "
            f"no T in the bracket for {int((rows['clipped'] & ~np.isfinite(rows['T_implied'])).sum())}"
        )
    return "; ".join(parts) + "."


def steer_figures(result: SteerResult) -> dict[str, Figure]:
    """Every figure of a steer run, by file stem."""
    t, d0 = result.table, primary_dial(result)
    curves = {"clean (alpha = 1)": "clean"}
    zero = _row(t, (t["dial"] == d0) & (t["alpha"] == 0) & ~t["fitted"])
    if zero is not None:
        curves = {f"{d0} alpha = 0 (mean ablation)": zero.label, **curves}
    best = _row(t, (t["dial"] == d0) & t["fitted"])
    temp = _row(t, (t["kind"] == "temperature") & t["fitted"])
    curves[f"{d0} best alpha = {best['alpha']:.3f}"] = best.label
    curves[f"fitted T = {temp['T']:.3f}"] = temp.label
    return {
        "steer_nll_vs_ece": fig_nll_vs_ece(t[t["kind"] != "clean"]),
        "steer_reliability": fig_reliability(result.reliability, curves),
        "steer_entropy_accuracy_vs_alpha": fig_entropy_accuracy_vs_alpha(t),
        "steer_implied_temperature": fig_implied_histogram(result.implied),
        "steer_implied_vs_confidence": fig_implied_vs_confidence(result.implied, d0),
    }


def steer_title(result: SteerResult) -> str:
    """The report's title."""
    return f"Entropy neurons as a confidence dial against temperature scaling: {result.settings['model']}"


def steer_sections(result: SteerResult, figures: dict[str, Figure]) -> list[ReportSection]:
    """The report's sections: verdict, the two dials' trade-off, reliability, alpha sweep, implied T."""
    s, t = result.settings, result.table
    split = s["split"]
    clean, temp, dial = fitted_rows(result)
    return [
        ReportSection(
            "Verdict",
            f"{verdict(result)}\n\n{frontier_text(result)}\n\nAll numbers are on the measuring part "
            f"({split['measure_tokens']:,} tokens of sequences {split['measure_seqs'][0]} to "
            f"{split['measure_seqs'][1] - 1}); "
            f"the fitting part ({split['fit_tokens']:,} tokens) chose each neuron's mean, the best alpha and T "
            f"(least NLL). ECE: {s['ece_bins']}. Steering sets a = mean + alpha (a - mean) + shift "
            f"(shift {s['shift']:g}).",
            table=pd.DataFrame([clean, temp, dial])[SHOWN],
        ),
        ReportSection(
            "Loss against calibration",
            "Each point is one setting; down and to the left is better. Circles mark the settings fitted on "
            "the fitting part. Temperature keeps every token's ranking; the neuron dial also moves a little "
            "logit mass along its direct effect.",
            figures=[figures["steer_nll_vs_ece"]],
        ),
        ReportSection(
            "Reliability diagrams",
            f"Accuracy against confidence in equal-mass bins for {primary_dial(result)} at alpha = 0, 1 and its "
            "best alpha, and the fitted temperature.",
            figures=[figures["steer_reliability"]],
        ),
        ReportSection(
            "Entropy and accuracy against alpha",
            "Amplifying an entropy neuron (alpha > 1) should raise entropy with little change of accuracy.",
            figures=[figures["steer_entropy_accuracy_vs_alpha"]],
        ),
        ReportSection(
            "Implied temperature of the clipped ablation",
            "Per token, the temperature that gives the clean logits the entropy of the clipped ablation "
            "(Sec. 5). T < 1: the neuron was raising entropy there (hedging), acting as a temperature of 1/T. "
            + implied_text(result),
            figures=[figures["steer_implied_temperature"], figures["steer_implied_vs_confidence"]],
        ),
        ReportSection("Every setting", "", table=t[SHOWN + ["fit_nll"]]),
    ]
