"""Compare: finished scans of different models (or of one
model on different corpora or checkpoints) side by side, as in the paper's App. E-G: one row per
scan, the W_U spectra on one normalised axis (Fig. 6), rho against 1 - DE/TE per model (Fig. 7) and
1 - DE_freq/TE against |dKL| per model (Fig. 8).

The comparison reads only the scans' run directories (no model is loaded) and copies what its
figures need into its own run directory, so it stays readable when the scans are moved or deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from plotly.graph_objects import Figure

from confidence_neurons.analysis.paper_models import paper_neuron_table
from confidence_neurons.analysis.selection import percentile_rank
from confidence_neurons.analysis.table import top_neurons, top_token_frequency_neurons
from confidence_neurons.errors import ConfigError
from confidence_neurons.figures.compare import fig6_spectra, fig7_panels, fig8_panels
from confidence_neurons.paper import resolve_paper_model
from confidence_neurons.rundir import RunDir
from confidence_neurons.studies.options import Options, option

#: Columns of each scan's neuron table copied into the comparison (``analysis.table.NEURON_COLUMNS``),
#: plus the norm and LogitVar percentiles.
NEURON_FIELDS = (
    "name",
    "w_out_norm",
    "logit_var",
    "rho",
    "TE",
    "DE",
    "ln_share",
    "abs_delta_entropy",
    "DE_freq",
    "freq_share",
    "abs_delta_kl",
    "is_entropy_neuron",
    "is_token_frequency_neuron",
    "norm_pct",
    "logit_var_pct",
)

#: The comparison table, one row per scan: column -> meaning.
MODEL_COLUMNS = {
    "label": "the row's label (--labels, else the model, plus the corpus where two scans share a model)",
    "model": "the scan's --model",
    "paper_model": "the paper's model this is (analysis.paper_models), if any",
    "architecture": "the transformers class",
    "corpus": "the scan's text (dataset and seed)",
    "n_tokens": "tokens analysed",
    "d_model": "residual width",
    "d_mlp": "final-layer neurons",
    "d_vocab": "vocabulary (columns of W_U)",
    "k": "null-space size for rho",
    "sv_drop": "median of W_U's bottom k singular values / median of all (App. E)",
    "n_entropy": "neurons the entropy rule flags",
    "n_token_frequency": "neurons the token frequency rule flags",
    "top_entropy": "the entropy neuron with the largest TE (else the strongest candidate by TE x 1-DE/TE)",
    "top_entropy_flagged": "whether the rule flags it",
    "top_entropy_rho": "its rho",
    "top_entropy_ln_share": "its 1 - DE/TE",
    "top_entropy_abs_dH": "its mean |change of entropy| on mean ablation",
    "top_entropy_norm_pct": "percentile of its norm among the layer's neurons (100 = largest; written direction)",
    "top_entropy_logit_var_pct": "percentile of its LogitVar (100 = largest; written direction)",
    "top_tf": "the token frequency neuron with the largest TE (else the strongest candidate by TE x 1-DE_freq/TE)",
    "top_tf_flagged": "whether the rule flags it",
    "top_tf_freq_share": "its 1 - DE_freq/TE",
    "top_tf_abs_dKL": "its mean |change of KL(P_freq || P_model)|",
    "unigrams": "where P_freq came from",
    "run_dir": "the scan's run directory",
}


@dataclass(frozen=True, kw_only=True)
class CompareConfig(Options):
    """Which finished scans to compare and how to label them."""

    runs: tuple[str, ...] = option((), "finished scan run directories (also given as RUN_DIR arguments)")
    labels: tuple[str, ...] = option(
        (), "one row label per run (default: the model, plus the corpus where two scans share a model)"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(str(r) for r in self.runs))
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        super().__post_init__()
        if len(self.runs) < 2:
            raise ConfigError(
                f"compare needs at least two finished scans, got {len(self.runs)}; pass two or more run directories",
                field="runs",
            )
        if self.labels and len(self.labels) != len(self.runs):
            raise ConfigError(
                f"{len(self.labels)} labels for {len(self.runs)} runs; give one label per run, in the same order",
                field="labels",
            )
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("the labels repeat one another; give each run its own label", field="labels")


@dataclass
class CompareResult:
    """``table``: one row per scan (``MODEL_COLUMNS``); ``spectra``: label, index, singular_value,
    rel_index (index / d_model) and rel_value (singular value / median), one row per singular value
    of each scan's W_U; ``neurons``: label and ``NEURON_FIELDS``, one row per final-layer neuron of
    each scan; ``paper_neurons``: label and ``paper_models.PAPER_NEURON_COLUMNS`` for the neurons
    the paper names in the scanned paper models; ``settings``: what config.json records.
    """

    config: CompareConfig
    table: pd.DataFrame
    spectra: pd.DataFrame
    neurons: pd.DataFrame
    paper_neurons: pd.DataFrame
    settings: dict
    run_dir: Path | None = None

    @property
    def labels(self) -> list[str]:
        return self.table["label"].tolist()

    def figures(self) -> dict[str, Figure]:
        return compare_figures(self)

    def _repr_html_(self) -> str:
        return f"<p><b>Comparison of {len(self.table)} scans</b></p>" + self.table.drop(columns="run_dir").to_html(
            index=False, float_format=lambda v: f"{v:.4g}"
        )

    @classmethod
    def load(cls, rd: RunDir) -> CompareResult:
        """The result a finished comparison wrote into ``rd``."""
        record = rd.read_config()
        return cls(
            config=CompareConfig.from_dict(record["config"]),
            table=rd.read_table("models"),
            spectra=rd.read_table("spectra"),
            neurons=rd.read_table("neurons"),
            paper_neurons=rd.read_table("paper_neurons"),
            settings=record["settings"],
            run_dir=rd.path,
        )


# --------------------------------------------------------------------------- reading the scans


def _short_model(name: str) -> str:
    return Path(str(name)).name or str(name)


def _corpus_text(settings: dict) -> str:
    corpus = settings.get("corpus") or {}
    where = corpus.get("id") or (Path(corpus["path"]).name if corpus.get("path") else corpus.get("kind", "?"))
    return f"{where} (seed {corpus.get('seed')})"


def default_labels(scans: list) -> list[str]:
    """The model's short name; where two scans share it, plus the corpus; where those match too,
    plus the run's folder.
    """
    labels = [_short_model(s.settings["model"]) for s in scans]
    for extra in (lambda s: _corpus_text(s.settings), lambda s: Path(s.run_dir).name if s.run_dir else "?"):
        labels = [f"{lab} / {extra(s)}" if labels.count(lab) > 1 else lab for lab, s in zip(labels, scans)]
    return labels


# --------------------------------------------------------------------------- the comparison


def _percentile(neurons: pd.DataFrame, column: str, written: str, raw: str) -> pd.Series:
    """The scan's own percentile column if it has one (newer scans), else ``selection.percentile_rank``
    of the written direction's statistic, or of the raw one in scans that predate it.
    """
    if column in neurons.columns:
        return neurons[column].astype(float)
    return percentile_rank(neurons[written] if written in neurons.columns else neurons[raw]).set_axis(neurons.index)


def spectrum_drop(singular_values: np.ndarray, k: int) -> float:
    """Median of the bottom ``k`` singular values over the median of all of them (App. E, Fig. 6).

    On LayerNorm models the smallest one is exactly 0 (the folded norm's centring removes the
    all-ones direction); the median of the bottom k is not pulled to 0 by that one value when k >= 3.
    """
    sv = np.sort(np.asarray(singular_values, dtype=float))[::-1]
    return float(np.median(sv[-k:]) / np.median(sv))


def _row(label: str, scan, neurons: pd.DataFrame) -> dict:
    s = scan.settings
    paper = resolve_paper_model(scan.config.model)
    row = {
        "label": label,
        "model": s["model"],
        "paper_model": paper.key if paper is not None else None,
        "architecture": s.get("architecture"),
        "corpus": _corpus_text(s),
        "n_tokens": int(s["n_tokens_analysed"]),
        "d_model": int(s["d_model"]),
        "d_mlp": int(s["d_mlp"]),
        "d_vocab": int(s["d_vocab"]),
        "k": int(scan.k),
        "sv_drop": spectrum_drop(scan.singular_values, scan.k),
        "n_entropy": int(neurons["is_entropy_neuron"].sum()),
        "n_token_frequency": int(neurons["is_token_frequency_neuron"].sum()),
    }
    top = top_neurons(neurons, 1)
    if len(top):
        t = neurons.loc[top.index[0]]
        row.update(
            top_entropy=str(t["name"]),
            top_entropy_flagged=bool(t["is_entropy_neuron"]),
            top_entropy_rho=float(t["rho"]),
            top_entropy_ln_share=float(t["ln_share"]),
            top_entropy_abs_dH=float(t["abs_delta_entropy"]),
            top_entropy_norm_pct=float(t["norm_pct"]),
            top_entropy_logit_var_pct=float(t["logit_var_pct"]),
        )
    if neurons["freq_share"].notna().any():
        t = neurons.loc[top_token_frequency_neurons(neurons, 1).index[0]]
        row.update(
            top_tf=str(t["name"]),
            top_tf_flagged=bool(t["is_token_frequency_neuron"]),
            top_tf_freq_share=float(t["freq_share"]),
            top_tf_abs_dKL=float(t["abs_delta_kl"]),
        )
    row["unigrams"] = (s.get("unigrams") or {}).get("source") if s.get("token_frequency_analysis", True) else "none"
    row["run_dir"] = str(scan.run_dir)
    return row


def compare(scans: list, labels: list[str] | None = None, config: CompareConfig | None = None) -> CompareResult:
    """The comparison of finished scans (``ScanResult``), labelled by ``labels`` (default: :func:`default_labels`)."""
    labels = list(labels) if labels else default_labels(scans)
    rows, spectra, tables, paper_tables = [], [], [], []
    for label, scan in zip(labels, scans):
        neurons = scan.neurons.copy()
        neurons["norm_pct"] = _percentile(neurons, "norm_pct", "norm_written", "w_out_norm")
        neurons["logit_var_pct"] = _percentile(neurons, "logit_var_pct", "logit_var_written", "logit_var")
        rows.append(_row(label, scan, neurons))
        sv = np.asarray(scan.singular_values, dtype=float)
        spectra.append(
            pd.DataFrame(
                {
                    "label": label,
                    "index": np.arange(len(sv)),
                    "singular_value": sv,
                    "rel_index": np.arange(len(sv)) / len(sv),
                    "rel_value": sv / np.median(sv),
                }
            )
        )
        tables.append(neurons[list(NEURON_FIELDS)].assign(label=label))
        paper = resolve_paper_model(scan.config.model)
        if paper is not None and paper.neurons:
            paper_tables.append(paper_neuron_table(paper, neurons).assign(label=label))
    table = pd.DataFrame(rows)
    table = table[[c for c in MODEL_COLUMNS if c in table.columns]]
    neurons = pd.concat(tables, ignore_index=True)
    neurons = neurons[["label", *NEURON_FIELDS]]
    paper_neurons = pd.concat(paper_tables, ignore_index=True) if paper_tables else pd.DataFrame({"label": []})
    if len(paper_neurons.columns) > 1:
        paper_neurons = paper_neurons[["label", *[c for c in paper_neurons.columns if c != "label"]]]
    settings = {
        "n_runs": len(scans),
        "runs": [
            {
                "label": label,
                "run_dir": str(scan.run_dir),
                "model": scan.settings["model"],
                "k": int(scan.k),
                "entropy_neuron_rule": scan.settings["entropy_neuron_rule"],
                "token_frequency_neuron_rule": scan.settings["token_frequency_neuron_rule"],
                "unigrams": (scan.settings.get("unigrams") or {}).get("source"),
            }
            for label, scan in zip(labels, scans)
        ],
    }
    config = (
        config if config is not None else CompareConfig(runs=tuple(str(s.run_dir) for s in scans), labels=tuple(labels))
    )
    return CompareResult(
        config=config,
        table=table,
        spectra=pd.concat(spectra, ignore_index=True),
        neurons=neurons,
        paper_neurons=paper_neurons,
        settings=settings,
    )


FIG6 = "fig6_spectra"
FIG6_RAW = "fig6_spectra_raw"


def compare_figures(result: CompareResult) -> dict[str, Figure]:
    """Every figure of a comparison, by file stem: Fig. 6, then Fig. 7 and Fig. 8 with one panel per scan."""
    return {
        FIG6: fig6_spectra(result.spectra),
        FIG6_RAW: fig6_spectra(result.spectra, normalised=False),
        **fig7_panels(result.neurons, result.table),
        **fig8_panels(result.neurons, result.labels),
    }
