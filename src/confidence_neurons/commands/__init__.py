"""The toolkit's commands, one module each, all of one shape: a frozen config dataclass (the single
source of the command's settings and flags), a pure computation that takes a loaded model, and
``run(config, out) -> Result`` that loads, checks, computes and writes one run directory.

``load_run(path)`` gives back the typed result a finished run wrote.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confidence_neurons.rundir import RunDir, RunDirError


def load_run(path: str | Path) -> Any:
    """The result of a finished run (``ScanResult``, ``InspectResult``, ``InductionResult``, ``CompareResult``,
    ``SteerResult`` or ``StudyResult``), read from its run directory: tables as DataFrames, settings, and
    figures rebuildable with ``.figures()``.
    """
    from confidence_neurons.commands.compare import CompareResult
    from confidence_neurons.commands.inspect import InspectResult
    from confidence_neurons.commands.scan import ScanResult
    from confidence_neurons.commands.steer import SteerResult
    from confidence_neurons.commands.study import StudyResult
    from confidence_neurons.induction.study import InductionResult

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
