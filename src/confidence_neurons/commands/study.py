"""``confidence-neurons study STUDY.toml --out DIR``: many scans (models x revisions x corpora) as Ray
tasks, here or on a cluster, then compared by themselves (``study/``: the file, the runner, the matching).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from confidence_neurons.commands.common import recording
from confidence_neurons.report.publish import publish
from confidence_neurons.rundir import RunDir
from confidence_neurons.study.engine import require_ray
from confidence_neurons.study.result import SCANS, StudyConfig, StudyResult, study_result, study_sections
from confidence_neurons.study.runner import Resources, run_tasks
from confidence_neurons.study.spec import read_study


def write(rd: RunDir, result: StudyResult) -> None:
    """The study's own files: its scans table, the comparison's tables, the matched neurons, figures, report."""
    rd.table("scans", result.table, csv=True)
    if result.comparison is not None:
        rd.table("models", result.comparison.table, csv=True)
        rd.table("spectra", result.comparison.spectra)
        rd.table("neurons", result.comparison.neurons)
    if result.matched:
        rd.table("matched_neurons", pd.concat([m.neurons for m in result.matched], ignore_index=True))
        rd.table("flagged_overlap", pd.concat([m.overlap for m in result.matched], ignore_index=True), csv=True)
    figures = result.figures()
    n = len(result.table)
    publish(
        rd,
        figures,
        title=f"Study of {n} scans: entropy and token frequency neurons across models, revisions and corpora",
        settings={"study": result.settings["study_file"], "scans": result.settings["status"]},
        sections=study_sections(result, figures),
    )


def default_out(study_file: str) -> Path:
    """``runs/study-<study file's stem>``."""
    return Path("runs") / f"study-{Path(study_file).stem}"


def run(
    config: StudyConfig,
    out: Path | None = None,
    *,
    progress: bool = True,
    hook=None,
) -> StudyResult:
    """Read the study, run its unfinished scans, compare them and write the study's folder.

    ``hook`` runs at the start of each scan task (tests kill a worker with it).
    """
    study = read_study(Path(config.study))
    if config.ray_address is not None:
        require_ray("--ray-address")
    out = Path(out) if out is not None else default_out(config.study)
    RunDir.preflight(out, kind="study", fingerprint=config.fingerprint())
    resources = Resources(cpus=config.cpus_per_scan, gpus=config.gpus_per_scan, max_retries=config.max_retries)
    with recording(out, "study", config, study=study.raw) as rd:
        outcomes = run_tasks(
            list(study.tasks),
            rd.path / SCANS,
            resources=resources,
            use_ray=config.ray,
            address=config.ray_address,
            progress=progress,
            hook=hook,
        )
        result = study_result(config, study, outcomes)
        result.run_dir = rd.path
        write(rd, result)
        failed = result.failed
        if len(failed):
            raise RuntimeError(
                f"{len(failed)} of {len(outcomes)} scans failed ({'; '.join(failed['label'] + ': ' + failed['error'])})"
                "; the others are kept: fix the cause and rerun the same study command to finish"
            )
        rd.set_status("complete", settings=result.settings)
    return result
