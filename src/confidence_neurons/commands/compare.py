"""``confidence-neurons compare RUN_DIR RUN_DIR ...``: check and read finished scans, compare them
(``studies.compare``) and write the run directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from confidence_neurons.commands.common import recording
from confidence_neurons.errors import ConfigError
from confidence_neurons.report.compare import compare_report_settings, compare_sections, compare_title
from confidence_neurons.report.publish import publish
from confidence_neurons.rundir import RunDir, RunDirError
from confidence_neurons.studies.compare import CompareConfig, CompareResult, compare
from confidence_neurons.studies.scan import ScanResult


def _problem(path: Path) -> str | None:
    """Why ``path`` is not a complete scan (a short phrase), or None when it is one."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a run directory"
    try:
        record = RunDir(path).read_config()
    except RunDirError:
        return "holds no run (no readable config.json)"
    kind, status = record.get("kind"), record.get("status")
    if kind != "scan":
        return f"holds {'an' if str(kind)[:1] in 'aeiou' else 'a'} {kind} run, not a scan"
    if status != "complete":
        return f"is a scan that is not complete (status {status})"
    return None


def load_scans(runs: tuple[str, ...]) -> list:
    """Each run as a ``ScanResult``; refuses, naming every one, runs that are not complete scans."""
    paths = [Path(r).expanduser() for r in runs]
    resolved = [p.resolve() for p in paths]
    repeated = sorted({str(p) for p, r in zip(paths, resolved) if resolved.count(r) > 1})
    if repeated:
        raise ConfigError(f"{', '.join(repeated)} is given more than once; pass each scan once", field="runs")
    problems = [f"{p} {why}" for p in paths if (why := _problem(p)) is not None]
    if problems:
        raise ConfigError(
            f"compare takes complete scans only, and {len(problems)} of the runs "
            f"{'is' if len(problems) == 1 else 'are'} not: {'; '.join(problems)}; "
            "finish them (rerun their command) or leave them out",
            field="runs",
        )
    scans = []
    for p in paths:
        try:
            scans.append(ScanResult.load(RunDir(p)))
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"{p} is marked complete but its files cannot be read ({type(exc).__name__}: {exc}); rerun that scan",
                field="runs",
            ) from None
    return scans


def write(rd: RunDir, result: CompareResult) -> None:
    """Every file of a finished comparison: tables, figures and report."""
    rd.table("models", result.table, csv=True)
    rd.table("spectra", result.spectra)
    rd.table("neurons", result.neurons)
    rd.table("paper_neurons", result.paper_neurons)
    figures = result.figures()
    settings, sections = compare_report_settings(result), compare_sections(result, figures)
    publish(rd, figures, title=compare_title(result), settings=settings, sections=sections)


def default_out(config: CompareConfig) -> Path:
    """``runs/compare-<hash of the settings>``."""
    digest = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True).encode()).hexdigest()[:8]
    return Path("runs") / f"compare-{len(config.runs)}-scans-{digest}"


def _check_out(out: Path, runs: tuple[str, ...]) -> None:
    target = out.expanduser().resolve()
    for r in runs:
        run = Path(r).expanduser().resolve()
        if target == run or run in target.parents:
            raise ConfigError(
                f"--out {out} is {'one of the scans' if target == run else 'inside the scan ' + str(r)}; "
                "choose a directory outside the scans it compares"
            )


def run(config: CompareConfig, out: Path | None = None, *, progress: bool = True) -> CompareResult:
    """Check and read the scans, compare them and write the run directory."""
    out = Path(out) if out is not None else default_out(config)
    _check_out(out, config.runs)
    scans = load_scans(config.runs)
    RunDir.preflight(out, kind="compare", fingerprint=config.fingerprint())
    with recording(out, "compare", config) as rd:
        result = compare(scans, list(config.labels) or None, config)
        result.run_dir = rd.path
        write(rd, result)
        rd.set_status("complete", settings=result.settings)
    return result
