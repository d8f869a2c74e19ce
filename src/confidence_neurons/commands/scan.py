"""``confidence-neurons scan``: check, load, scan (``studies.scan``) and write the run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from confidence_neurons.commands.checks import load_checked
from confidence_neurons.commands.common import recording
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.report.publish import publish
from confidence_neurons.report.scan import scan_report_settings, scan_sections, scan_title
from confidence_neurons.rundir import RunDir
from confidence_neurons.studies.inputs import sample_tokens, unigram_distribution
from confidence_neurons.studies.options import run_name
from confidence_neurons.studies.scan import ScanConfig, ScanResult, scan


def write(rd: RunDir, result: ScanResult) -> None:
    """Every file of a finished scan: tables, spectrum, figures and report."""
    rd.table("neurons", result.neurons, csv=True)
    rd.csv(
        "spectrum",
        pd.DataFrame({"index": np.arange(len(result.singular_values)), "singular_value": result.singular_values}),
    )
    rd.array("cos_sv", result.cos_sv)
    rd.table("token_metrics", result.token_metrics)
    if result.effect_tokens is not None:
        rd.table("effect_tokens", result.effect_tokens)
    if result.unigrams is not None and result.unigrams.meta.get("source") == "counted":
        rd.array("unigrams", result.unigrams.counts.astype(np.int64))
        rd.json("unigrams", {"n_entries": int(len(result.unigrams.counts)), **result.unigrams.meta})
    figures = result.figures()
    settings, sections = scan_report_settings(result), scan_sections(result, figures)
    publish(rd, figures, title=scan_title(result), settings=settings, sections=sections)


def run(
    config: ScanConfig, out: Path | None = None, *, model: LoadedModel | None = None, progress: bool = True
) -> ScanResult:
    """Load and check everything, then scan and write the run directory (resuming one in ``out``)."""
    out = Path(out) if out is not None else run_name("scan", config)
    model = load_checked(config, "scan", out, model)
    layer = final_layer(model)
    tokens = sample_tokens(model, config)
    unigrams = unigram_distribution(model, layer, config, progress=progress)
    with recording(out, "scan", config, model_source=model.source, corpus=tokens.source) as rd:
        rd.array("tokens", tokens.tokens.numpy())
        result = scan(
            model,
            config,
            tokens=tokens,
            unigrams=unigrams,
            layer=layer,
            checkpoints=rd.checkpoints,
            store=rd.activations,
            progress=progress,
        )
        result.run_dir = rd.path
        result.settings["earlier_status"] = rd.earlier_status
        result.settings["pieces_recomputed"] = len(rd.problems)
        write(rd, result)
        rd.set_status("complete", settings=result.settings)
    return result
