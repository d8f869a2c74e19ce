"""What every command does around its computation: one run directory recorded the same way (config
"running", then "complete", or "failed" / "interrupted" with the reason).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confidence_neurons.provenance import provenance
from confidence_neurons.rundir import RunDir
from confidence_neurons.studies.options import Options

log = logging.getLogger(__name__)


@contextmanager
def recording(out: Path, kind: str, config: Options, **record: Any) -> Iterator[RunDir]:
    """Open (or resume) the run directory, holding its lock, and keep its status true: "running"
    while the body runs, "failed" with the error and traceback or "interrupted" if it stops; the
    body marks it "complete".
    """
    rd = RunDir.open(out, kind=kind, fingerprint=config.fingerprint())
    try:
        if rd.earlier_status == "complete":
            log.info("%s already holds this run, complete: its stored pieces are verified and reused", out)
        elif rd.resumed:
            log.info("resuming the run in %s (left %s)", out, rd.earlier_status)
        rd.write_config(config=config.to_dict(), status="running", provenance=provenance(), **record)
        yield rd
    except KeyboardInterrupt:
        rd.set_status("interrupted", error="stopped by the user; rerun the same command to resume")
        raise
    except BaseException as exc:
        rd.set_status("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
    finally:
        rd.close()


def preflight(out: Path, kind: str, config: Options) -> None:
    """Everything about the output directory that can be checked before a model loads."""
    RunDir.preflight(out, kind=kind, fingerprint=config.fingerprint())
