"""The toolkit's commands, one module each, all of one shape: ``run(config, out) -> Result`` checks the
inputs, loads the model, records and writes one run directory around the study's pure computation
(``studies/``, which holds each config, result type and figure list).

``load_run(path)`` gives back the typed result a finished run wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confidence_neurons.rundir import RunDir, RunDirError
from confidence_neurons.studies.compare import CompareResult
from confidence_neurons.studies.induction import InductionResult
from confidence_neurons.studies.inspect import InspectResult
from confidence_neurons.studies.scan import ScanResult
from confidence_neurons.studies.steer import SteerResult
from confidence_neurons.study.result import StudyResult


def load_run(path: str | Path) -> Any:
    """The result of a finished run (``ScanResult``, ``InspectResult``, ``InductionResult``, ``CompareResult``,
    ``SteerResult`` or ``StudyResult``), read from its run directory: tables as DataFrames, settings, and
    figures rebuildable with ``.figures()``.
    """
    rd = RunDir(Path(path))
    record = rd.read_config()
    if record.get("status") != "complete":
        raise RunDirError(
            f"the run in {rd.path} is not complete (status: {record.get('status')}); rerun its command to finish it"
        )
    loaders = {
        "scan": ScanResult.load,
        "inspect": InspectResult.load,
        "induction": InductionResult.load,
        "compare": CompareResult.load,
        "steer": SteerResult.load,
        "study": StudyResult.load,
    }
    kind = record.get("kind")
    if kind not in loaders:
        raise RunDirError(f"{rd.path} holds a run of unknown kind {kind!r}; it was made by another version")
    return loaders[kind](rd)
