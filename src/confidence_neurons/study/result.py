"""A study: many scans (models x revisions x corpora) as Ray
tasks, here or on a cluster, then compared by themselves.

The run folder holds ``scans/<model>@<revision>--<corpus>/`` (one scan run directory per task), and
the study's own config.json, tables, figures and report.html: the comparison of every finished scan
(``commands.compare``: App. E-G) and, for scans of one architecture on one corpus (revisions of a
model, a base model and its fine-tune), the neurons matched by index (``study.matched``): per
neuron rho, TE, 1 - DE/TE and the rule's verdict across the runs, the overlap of the flagged
sets, and the top neurons over training steps. The study holds its folder's lock while it runs;
rerunning it skips finished scans and resumes partial ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from plotly.graph_objects import Figure

from confidence_neurons.commands.compare import load_scans
from confidence_neurons.errors import ConfigError
from confidence_neurons.report.compare import compare_sections
from confidence_neurons.report.html import ReportSection
from confidence_neurons.rundir import RunDir
from confidence_neurons.studies.compare import CompareResult, compare, compare_figures
from confidence_neurons.studies.options import Options, option
from confidence_neurons.study.figures import fig_over_runs
from confidence_neurons.study.matched import MatchedNeurons, group_key, match, wide
from confidence_neurons.study.runner import TaskOutcome
from confidence_neurons.study.spec import Study

log = logging.getLogger(__name__)

SCANS = "scans"


@dataclass(frozen=True, kw_only=True)
class StudyConfig(Options):
    """The study file and how its scans run (engine settings change speed only)."""

    study: str = option(help="the study file (TOML: [scan], [[models]], [[corpora]]; see docs/study.md)")
    ray: bool = option(True, "run the scans as Ray tasks (--no-ray: one after another in this process)", volatile=True)
    ray_address: str | None = option(
        None, "join this Ray cluster (auto, ray://HOST:10001); default: start a local Ray", volatile=True
    )
    gpus_per_scan: float = option(0.0, "GPUs each scan task asks Ray for (0: a CPU scan)", volatile=True, minimum=0)
    cpus_per_scan: float = option(1.0, "CPUs each scan task asks Ray for", volatile=True, minimum=0.01)
    max_retries: int = option(3, "times Ray reruns a scan whose worker died (it resumes)", volatile=True, minimum=0)

    def __post_init__(self) -> None:
        study = self.study
        if isinstance(study, list | tuple):  # the positional STUDY.toml argument
            if len(study) != 1:
                raise ConfigError(f"give exactly one study file, not {len(study)}", field="study")
            study = study[0]
        # absolute, so that a rerun from another folder is the same study (same fingerprint)
        object.__setattr__(self, "study", str(Path(study).expanduser().resolve()))
        super().__post_init__()
        if not self.ray and (self.ray_address is not None or self.gpus_per_scan):
            raise ConfigError("--ray-address and --gpus-per-scan need Ray; drop --no-ray", field="ray")


@dataclass
class StudyResult:
    """``table``: one row per scan (label, model, revision, corpus, folder, status, seconds, n_entropy,
    n_token_frequency, host and pid that ran it, error); ``comparison``: every finished scan compared (None below two);
    ``matched``: one per group of scans of one architecture on one corpus; ``settings``: config.json's.
    """

    config: StudyConfig
    table: pd.DataFrame
    comparison: CompareResult | None
    matched: list[MatchedNeurons] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def failed(self) -> pd.DataFrame:
        return self.table[self.table["status"] == "failed"]

    @classmethod
    def load(cls, rd: RunDir) -> StudyResult:
        """The result a finished study wrote into ``rd`` (the comparisons rebuilt from its scan folders)."""
        record = rd.read_config()
        table = rd.read_table("scans")
        comparison, matched = _comparisons(table)
        return cls(
            config=StudyConfig.from_dict(record["config"]),
            table=table,
            comparison=comparison,
            matched=matched,
            settings=record["settings"],
            run_dir=rd.path,
        )

    def figures(self) -> dict[str, Figure]:
        figs = compare_figures(self.comparison) if self.comparison is not None else {}
        for i, m in enumerate(self.matched, start=1):
            figs[f"study_{i}_rho"] = fig_over_runs(m, "rho")
            figs[f"study_{i}_ln_share"] = fig_over_runs(m, "ln_share")
        return figs


def _table(outcomes: list[TaskOutcome]) -> pd.DataFrame:
    rows = []
    for o in outcomes:
        s = o.summary or {}
        rows.append(
            {
                "label": o.task.label,
                "model": o.task.config.model,
                "revision": o.task.revision,
                "corpus": o.task.corpus_label,
                "folder": str(o.folder),
                "status": o.status,
                "seconds": round(o.seconds, 2),
                "n_entropy": s.get("n_entropy"),
                "n_token_frequency": s.get("n_token_frequency"),
                "host": s.get("host"),
                "pid": s.get("pid"),
                "error": o.error,
            }
        )
    return pd.DataFrame(rows)


def _comparisons(table: pd.DataFrame) -> tuple[CompareResult | None, list[MatchedNeurons]]:
    """Every finished scan of the scans ``table`` compared, and matched by index within each group."""
    done = table[table["status"].isin(["complete", "skipped"])].reset_index(drop=True)
    if len(done) < 2:
        return None, []
    scans = load_scans(tuple(done["folder"]))
    labels = list(done["label"])
    comparison = compare(scans, labels)
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(scans):
        groups.setdefault((*group_key(s.settings), done["corpus"][i]), []).append(i)
    matched = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        revisions = [None if pd.isna(r) else str(r) for r in done["revision"][members]]
        name = f"{key[0]} ({key[2]} neurons) on {key[-1]}"
        matched.append(match(name, [labels[i] for i in members], revisions, [scans[i].neurons for i in members]))
    return comparison, matched


def study_result(config: StudyConfig, study: Study, outcomes: list[TaskOutcome]) -> StudyResult:
    """Compare the finished scans of ``outcomes``: all of them, and matched by index within each group."""
    table = _table(outcomes)
    comparison, matched = _comparisons(table)
    settings = {
        "study_file": str(study.path),
        "n_scans": len(outcomes),
        "status": table["status"].value_counts().to_dict(),
        "matched_groups": [{"group": m.group, "runs": m.labels, "top": m.top} for m in matched],
    }
    return StudyResult(config=config, table=table, comparison=comparison, matched=matched, settings=settings)


def study_sections(result: StudyResult, figures: dict[str, Figure]) -> list[ReportSection]:
    """The study report's sections: the scans, the comparison, the matched neurons."""
    sections = [
        ReportSection(
            "Scans",
            "One scan per model, revision and corpus; each folder is a scan run directory with its own report.",
            table=result.table,
        )
    ]
    for i, m in enumerate(result.matched, start=1):
        sections.append(
            ReportSection(
                f"Matched neurons: {m.group}",
                "The runs share an architecture, so their final-layer neurons are matched by index. Lines: the "
                "neurons the entropy rule flags in some run, by their largest TE x (1 - DE/TE); a filled marker: "
                "flagged in that run. Table: overlap (IoU) of the flagged sets between runs.",
                figures=[figures[f"study_{i}_rho"], figures[f"study_{i}_ln_share"]],
                table=m.overlap,
            )
        )
        top = wide(m)
        sections.append(
            ReportSection(
                f"Top neurons across the runs: {m.group}",
                "rho, TE, 1 - DE/TE and the entropy rule's verdict per run (all neurons: matched_neurons.parquet).",
                table=top[top["name"].isin(m.top)],
            )
        )
    if result.comparison is not None:
        sections += compare_sections(result.comparison, figures)
    return sections


def summary(result: StudyResult) -> str:
    """The lines the command line prints at the end."""
    counts = result.table["status"].value_counts().to_dict()
    lines = [f"{len(result.table)} scans: " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    for m in result.matched:
        ent = m.overlap[m.overlap["set"] == "entropy"]
        ious = ", ".join(f"{r.label_a} vs {r.label_b}: {r.iou:.2f}" for r in ent.itertuples())
        lines.append(f"{m.group}: top neurons {', '.join(m.top)}; IoU of entropy-neuron sets: {ious or 'n/a'}")
    return "\n".join(lines)
