"""Steer: entropy neurons as a confidence dial, measured against temperature
scaling on held-out text (beyond the paper; the maths is in ``analysis/steering.py``).

Choices (recorded in config.json):
* split: the ``n_seqs`` sequences are drawn with ``seed``; the first half (rounded down, at least
  one) is the fitting part, the rest the measuring part. All metrics are on the measuring part;
  the fitting part only sets each neuron's mean, the best alpha and the fitted T.
* mean: each neuron's mean activation over the fitting part.
* best alpha / fitted T: least mean NLL on the fitting part, found on the grid and refined by
  ``FIT_ROUNDS`` rounds of ``FIT_POINTS`` points inside the grid's range (T in log T).
* ECE: ``ece_bins`` equal-mass bins of the tokens sorted by confidence (default 15).
* implied temperature: see ``analysis.steering.implied_temperature`` (bracket T in [0.05, 20]).
"""

from __future__ import annotations

import html
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from plotly.graph_objects import Figure
from tqdm.auto import tqdm

from confidence_neurons.analysis import steering as S
from confidence_neurons.analysis.activity import parse_neuron
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.data.corpus import TokenSample
from confidence_neurons.errors import ConfigError
from confidence_neurons.figures.steer import (
    fig_entropy_accuracy_vs_alpha,
    fig_implied_histogram,
    fig_implied_vs_confidence,
    fig_nll_vs_ece,
    fig_reliability,
)
from confidence_neurons.files import available_memory, human
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.rundir import RunDir
from confidence_neurons.studies.inputs import analysed_mask, sample_tokens, scan_table
from confidence_neurons.studies.options import SourceOptions, TokenOptions, option

log = logging.getLogger(__name__)

FIT_ROUNDS, FIT_POINTS = 4, 5
DEFAULT_ALPHAS = ("-1", "-0.5", "0", "0.5", "1", "1.5", "2", "2.5", "3")
DEFAULT_TEMPERATURES = ("0.5", "0.6", "0.7", "0.8", "0.9", "1", "1.1", "1.25", "1.5", "2", "3")
#: Bounds of the grids: far beyond any useful dial, and small enough that a steered activation
#: (alpha x activations of order 10, plus the shift) and logits / T stay finite in float16.
MAX_ALPHA, MAX_SHIFT, MIN_T = 100.0, 1000.0, 0.01


def _floats(values: tuple, field: str, *, positive: bool = False) -> tuple[float, ...]:
    """Sorted distinct floats of a comma list; a ConfigError naming ``field`` for anything else."""
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{v!r} in {field} is not a number", field=field) from None
        if not math.isfinite(x) or (positive and x <= 0):
            raise ConfigError(f"{v!r} in {field} must be a finite{' positive' if positive else ''} number", field=field)
        out.append(x)
    if not out:
        raise ConfigError(f"the {field} grid is empty; give at least one value, e.g. 0,1,2", field=field)
    return tuple(sorted(set(out)))


@dataclass(frozen=True, kw_only=True)
class SteerConfig(TokenOptions, SourceOptions):
    """Which neurons, which grids of alpha and T, on which text."""

    neurons: tuple[str, ...] = option((), "comma-separated final-layer neurons LAYER.INDEX (e.g. 29.830,29.1022)")
    scan_dir: str | None = option(None, "a finished scan run directory: steer its entropy neurons", flag="--scan")
    alphas: tuple[str, ...] = option(
        DEFAULT_ALPHAS,
        "grid of alpha: activation -> mean + alpha (activation - mean) + shift; 1 = clean, 0 = mean",
        minimum=-MAX_ALPHA,
        maximum=MAX_ALPHA,
    )
    shift: float = option(
        0.0, "constant added to every steered activation at every alpha", minimum=-MAX_SHIFT, maximum=MAX_SHIFT
    )
    dials: Literal["both", "each", "together"] = option(
        "both", "steer each neuron on its own, all of them together as one dial, or both"
    )
    temperatures: tuple[str, ...] = option(
        DEFAULT_TEMPERATURES, "grid of global temperatures T (logits / T)", minimum=MIN_T, maximum=1 / MIN_T
    )
    ece_bins: int = option(15, "equal-mass bins of the expected calibration error", minimum=1)
    token_chunk: int = option(128, "tokens per chunk", volatile=True, minimum=1)
    memory_mb: int = option(
        1024, "keep the fitting part's logits in memory up to this size (speed only)", volatile=True, minimum=0
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_seqs < 2:
            raise ConfigError("steer needs at least 2 sequences: one half fits, the other measures", field="n_seqs")
        object.__setattr__(self, "alphas", _floats(self.alphas, "alphas"))
        object.__setattr__(self, "temperatures", _floats(self.temperatures, "temperatures", positive=True))
        if not math.isfinite(self.shift):
            raise ConfigError("shift must be a finite number", field="shift")

    def neuron_specs(self) -> list[tuple[str, str]]:
        return [(s, "neurons") for s in self.neurons]

    def check_ece_bins(self) -> None:
        """At most one equal-mass bin per prediction the measuring half can hold: more bins only add empty
        ones (dropped), and a billion of them exhausted memory before any result.
        """
        n_measure = self.n_seqs - max(1, self.n_seqs // 2)
        most = n_measure * (self.seq_len - 1)
        if self.ece_bins > most:
            raise ConfigError(
                f"{self.ece_bins:,} bins are more than the {most:,} predictions the measuring half holds "
                f"({n_measure} sequences of {self.seq_len - 1}); give at most {most}",
                field="ece_bins",
            )

    def check_neurons(self) -> None:
        """Neurons come from ``--neurons`` or ``--scan``: one of them must be given."""
        if not self.neurons and self.scan_dir is None:
            raise ConfigError(
                "name the neurons to steer with --neurons L.I,L.J or give a finished scan with --scan RUN_DIR",
                field="neurons",
            )


@dataclass
class SteerResult:
    """``table``: one row per setting on the measuring part (kind, dial, alpha, shift, T, fitted,
    fit_nll, nll, entropy, accuracy, ece, brier, mean_rank_change, top1_change_frac, confidence);
    ``reliability``: per setting its ECE bins (label, bin, n, confidence, accuracy); ``implied``: per
    dial and measured token the implied temperature of the clipped ablation (dial, seq, pos,
    clipped, clean_confidence, clean_entropy, clipped_entropy, T_implied); ``fit_points``: every
    (search, x, fit NLL) the fitting evaluated; ``settings``: what config.json records.
    """

    config: SteerConfig
    table: pd.DataFrame
    reliability: pd.DataFrame
    implied: pd.DataFrame
    fit_points: pd.DataFrame
    settings: dict
    run_dir: Path | None = None

    def figures(self) -> dict[str, Figure]:
        return steer_figures(self)

    @property
    def verdict(self) -> str:
        return verdict(self)

    def _repr_html_(self) -> str:
        cols = ["label", "nll", "ece", "brier", "accuracy", "entropy", "mean_rank_change"]
        return f"<p><b>{html.escape(self.verdict)}</b></p>" + self.table[cols].to_html(
            index=False, float_format=lambda v: f"{v:.4g}"
        )

    @classmethod
    def load(cls, rd: RunDir) -> SteerResult:
        """The result a finished steer run wrote into ``rd``."""
        record = rd.read_config()
        return cls(
            config=SteerConfig.from_dict(record["config"]),
            table=rd.read_table("steering"),
            reliability=rd.read_table("reliability"),
            implied=rd.read_table("implied_temperature"),
            fit_points=rd.read_table("fit_points"),
            settings=record["settings"],
            run_dir=rd.path,
        )


def chosen_dials(config: SteerConfig, layer: FinalLayer) -> list[S.Dial]:
    """The dials to turn: from ``--neurons`` or the entropy neurons of ``--scan``; each neuron alone
    and/or all of them together (``config.dials``).
    """
    config.check_neurons()
    if config.neurons:
        neurons = [parse_neuron(s, layer, field="neurons") for s in config.neurons]
    else:
        t = scan_table(config.scan_dir, layer)
        flagged = t[t["is_entropy_neuron"]].sort_values("TE", ascending=False)
        if flagged.empty:
            raise ConfigError(
                f"the scan in {config.scan_dir} flagged no entropy neuron; name neurons with --neurons L.I",
                field="scan_dir",
            )
        neurons = [int(i) for i in flagged["neuron"]]
    neurons = list(dict.fromkeys(neurons))
    name = lambda i: f"{layer.layer}.{i}"  # noqa: E731
    each = [S.Dial(name(i), (i,), (k,)) for k, i in enumerate(neurons)]
    if len(neurons) == 1 or config.dials == "each":
        return each
    together = S.Dial("+".join(name(i) for i in neurons), tuple(neurons), tuple(range(len(neurons))))
    return [together] if config.dials == "together" else [together, *each]


def split_cache(cache: ForwardCache, n_seqs: int, keep: torch.Tensor) -> tuple[ForwardCache, ForwardCache, int]:
    """(fitting part, measuring part, number of fitting sequences): the first half of the sequences fits;
    each part keeps the rows ``keep`` (the token filter) marks.
    """
    n_fit = max(1, n_seqs // 2)
    fit = torch.zeros(cache.n_tokens, dtype=torch.bool)
    fit[: n_fit * (cache.seq_len - 1)] = True
    return cache.select(keep & fit), cache.select(keep & ~fit), n_fit


def _summary_row(setting: S.Setting | None, metrics: dict, clean: dict, fit_nll: float, n_bins: int) -> dict:
    """One row of the table; ``setting`` None is the clean model."""
    kind = "clean" if setting is None else setting.kind
    return {
        "label": "clean" if setting is None else setting.label,
        "kind": kind,
        "dial": setting.dial.name if setting is not None and setting.dial is not None else "",
        "alpha": setting.value if kind == "neuron dial" else np.nan,
        "shift": setting.shift if kind == "neuron dial" else np.nan,
        "T": setting.value if kind == "temperature" else np.nan,
        "fitted": setting is not None and setting.fitted,
        "fit_nll": fit_nll,
        "nll": float(metrics["nll"].mean()),
        "entropy": float(metrics["entropy"].mean()),
        "accuracy": float(metrics["correct"].mean()),
        "confidence": float(metrics["confidence"].mean()),
        "ece": S.expected_calibration_error(metrics["confidence"], metrics["correct"], n_bins),
        "brier": float(metrics["brier"].mean()),
        "mean_rank_change": float((metrics["rank"] - clean["rank"]).mean()),
        "top1_change_frac": float((metrics["argmax"] != clean["argmax"]).mean()),
    }


@torch.no_grad()
def steer(
    model: LoadedModel,
    config: SteerConfig,
    *,
    tokens: TokenSample | None = None,
    layer: FinalLayer | None = None,
    progress: bool = True,
) -> SteerResult:
    """Turn the dials and the temperature over their grids on held-out text; fit both on the fitting part."""
    layer = layer if layer is not None else final_layer(model)
    dials = chosen_dials(config, layer)
    tokens = tokens if tokens is not None else sample_tokens(model, config)
    n_seqs = tokens.tokens.shape[0]
    if n_seqs < 2:
        raise ConfigError("steer needs at least 2 sequences: one half fits, the other measures", field="n_seqs")
    t0 = time.perf_counter()
    cache = run_forward(model, layer, tokens.tokens, batch_size=config.batch_size, progress=progress)
    t_forward = time.perf_counter() - t0
    keep = analysed_mask(model, tokens.tokens, config)
    fit_cache, measure_cache, n_fit = split_cache(cache, n_seqs, keep)
    if fit_cache.n_tokens == 0 or measure_cache.n_tokens == 0:
        raise ConfigError(
            f"--token-filter {config.token_filter} leaves no token to fit or to measure on; use longer sequences "
            "or --token-filter all",
            field="token_filter",
        )
    neurons = sorted({i for d in dials for i in d.neurons})
    col = {i: k for k, i in enumerate(neurons)}
    dials = [S.Dial(d.name, d.neurons, tuple(col[i] for i in d.neurons)) for d in dials]
    # the ablation value, from the fitting sequences only: every position of them, or the analysed ones
    fit_rows = torch.zeros(cache.n_tokens, dtype=torch.bool)
    fit_rows[: n_fit * (cache.seq_len - 1)] = True
    mean_from = cache.select(fit_rows) if config.ablation_mean == "all" else fit_cache
    steerer = S.Steerer(layer, neurons, mean_from.acts[:, neurons].mean(0))
    budget = config.memory_mb * 2**20
    available = available_memory()
    if available is not None and budget > available // 2:  # speed only: past half the free memory, recompute
        log.info(
            "--memory-mb %d is more than half the available memory; keeping at most %s",
            config.memory_mb,
            human(available // 2),
        )
        budget = available // 2
    t0 = time.perf_counter()
    fitted = S.fit(
        steerer,
        S.Bases(steerer, fit_cache, config.token_chunk, budget),
        dials,
        list(config.alphas),
        list(config.temperatures),
        config.shift,
        rounds=FIT_ROUNDS,
        per_round=FIT_POINTS,
    )
    t_fit = time.perf_counter() - t0
    for key, edge in fitted.at_edge.items():
        if edge:
            log.warning("the best %s on the fitting part is at the edge of its grid; widen the grid", key)
    grid = [S.Setting("neuron dial", a, d, config.shift) for d in dials for a in config.alphas]
    grid += [S.Setting("temperature", t) for t in config.temperatures]
    grid += [S.Setting("temperature", fitted.T, fitted=True)]
    grid += [S.Setting("neuron dial", fitted.alpha[d.name], d, config.shift, fitted=True) for d in dials]
    t0 = time.perf_counter()
    bar = tqdm(total=measure_cache.n_tokens, desc="steering grid", unit="token", disable=not progress)
    measured = S.measure(steerer, steerer.bases(measure_cache, config.token_chunk), grid, dials, bar)
    bar.close()
    t_measure = time.perf_counter() - t0

    def fit_nll(st: S.Setting) -> float:
        if st.fitted:
            return fitted.nll[st.dial.name if st.dial is not None else "T"]
        key, x = (st.dial.name, st.value) if st.kind == "neuron dial" else ("T", math.log(st.value))
        return fitted.points[key].get(x, np.nan)

    clean = measured.metrics["clean"]
    table = pd.DataFrame(
        [_summary_row(None, clean, clean, np.nan, config.ece_bins)]
        + [_summary_row(st, measured.metrics[st.label], clean, fit_nll(st), config.ece_bins) for st in grid]
    )
    reliability = pd.concat(
        [
            S.reliability_bins(m["confidence"], m["correct"], config.ece_bins).assign(label=label)
            for label, m in measured.metrics.items()
        ],
        ignore_index=True,
    )[["label", "bin", "n", "confidence", "accuracy"]]
    per_seq = cache.seq_len - 1
    n_measure = measure_cache.n_tokens
    rows = measure_cache.flat_rows.numpy()  # positions of the measuring part that --token-filter counts
    seq, pos = rows // per_seq, rows % per_seq
    implied = pd.concat(
        [
            pd.DataFrame(
                {
                    "dial": d.name,
                    "seq": seq,
                    "pos": pos,
                    "clipped": measured.clipped[d.name],
                    "clean_confidence": clean["confidence"],
                    "clean_entropy": clean["entropy"],
                    "clipped_entropy": measured.clipped_entropy[d.name],
                    "T_implied": measured.implied_T[d.name],
                }
            )
            for d in dials
        ],
        ignore_index=True,
    )
    fit_points = pd.DataFrame(
        [
            {"search": key, "x": x, "value": math.exp(x) if key == "T" else x, "fit_nll": v}
            for key, pts in fitted.points.items()
            for x, v in sorted(pts.items())
        ]
    )
    settings = {
        "model": model.name,
        "placement": model.placement_record(),
        "final_layer": layer.layer,
        "final_norm": layer.norm,
        "post_mlp_norm": layer.post_mlp_norm is not None,
        "logit_softcap": layer.softcap,
        "neurons": [f"{layer.layer}.{i}" for i in neurons],
        "dials": [d.name for d in dials],
        "mean_activation": {f"{layer.layer}.{i}": float(m) for i, m in zip(neurons, steerer.mean)},
        "split": {
            "rule": "sequences drawn with the seed; the first half (rounded down) fits, the rest measures",
            "fit_seqs": [0, n_fit],
            "measure_seqs": [n_fit, n_seqs],
            "token_filter": config.token_filter,
            "ablation_mean": config.ablation_mean,
            "fit_tokens": fit_cache.n_tokens,
            "measure_tokens": n_measure,
        },
        "alphas": list(config.alphas),
        "temperatures": list(config.temperatures),
        "shift": config.shift,
        "ece_bins": f"{config.ece_bins} equal-mass bins of the tokens sorted by confidence",
        "fit": {
            "rule": f"least mean NLL on the fitting part: the grid, then {FIT_ROUNDS} rounds of {FIT_POINTS} "
            "points between the best point's grid neighbours (T searched in log T)",
            "alpha": fitted.alpha,
            "T": fitted.T,
            "at_grid_edge": fitted.at_edge,
            "passes_over_fitting_part": fitted.passes,
        },
        "implied_temperature": {
            "rule": "per token, T with H(softmax(z / T)) = entropy after the dial's clipped ablation, by "
            "safeguarded Newton in log(1/T); T = 1 where clipping changes nothing; NaN where no T matches",
            "bracket": [S.T_MIN, S.T_MAX],
            "tolerance_nats": S.IMPLIED_TOL,
            "no_match": {d.name: int(np.isnan(measured.implied_T[d.name]).sum()) for d in dials},
        },
        "corpus": {k: v for k, v in tokens.source.items() if k not in ("starts", "files")},
        "closed_form_logits_max_abs_err": cache.logits_check,
        "timings_s": {"forward": round(t_forward, 2), "fit": round(t_fit, 2), "measure": round(t_measure, 2)},
    }
    return SteerResult(config, table, reliability, implied, fit_points, settings)


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


__all__ = ["SteerConfig", "SteerResult", "steer"]
