"""Run a study's scans: each (model, revision, corpus) one Ray task, or one after another in this
process where Ray is not installed (or ``use_ray`` is False).

Each task runs ``commands.scan.run`` into its own folder, which resumes a partial scan from its
activation store and sweep checkpoints; a finished scan (complete, same fingerprint) is not run
again. Ray retries a task whose worker dies (``max_retries``), and the retry resumes from the
checkpoints, so the result is the uninterrupted run's. A scan that fails with an error is not
retried (the same input fails the same way): it is reported, and the others go on. Ctrl-C cancels
every task; rerunning the study resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from confidence_neurons.rundir import RunDir, RunDirError
from confidence_neurons.study.engine import RAY_EXTRA, ray_available, ray_session
from confidence_neurons.study.spec import ScanTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """What each scan task asks of Ray: CPUs, GPUs (fractions allowed), and retries of a dead worker."""

    cpus: float = 1.0
    gpus: float = 0.0
    max_retries: int = 3


@dataclass
class TaskOutcome:
    """How one scan ended: status (complete, skipped: finished earlier, failed), where, in how long."""

    task: ScanTask
    folder: Path
    status: str
    seconds: float = 0.0
    error: str | None = None
    summary: dict | None = None


def finished(folder: Path, task: ScanTask) -> bool:
    """Whether ``folder`` holds this task's scan, complete (same kind and fingerprint)."""
    try:
        record = RunDir(folder).read_config()
    except RunDirError:
        return False
    return (
        record.get("kind") == "scan"
        and record.get("status") == "complete"
        and record.get("fingerprint") == task.config.fingerprint()
    )


def _summary(result) -> dict:
    return {
        "n_entropy": int(result.neurons["is_entropy_neuron"].sum()),
        "n_token_frequency": int(result.neurons["is_token_frequency_neuron"].sum()),
        "n_tokens": int(result.settings["n_tokens_analysed"]),
        "sweep_chunks_reused": int(result.settings.get("sweep_chunks_reused") or 0),
    }


def run_scan_task(config_dict: dict, folder: str, cpus: float, gpus: float, hook: Callable[[], None] | None) -> dict:
    """One scan, in whatever process runs it (a Ray worker, or this one): its summary."""
    import torch

    from confidence_neurons.commands.scan import run as run_scan
    from confidence_neurons.studies.scan import ScanConfig

    if hook is not None:  # tests: kill the worker on its first attempt
        hook()
    config = ScanConfig.from_dict(config_dict)
    if gpus == 0 and config.device == "auto":  # a task that asked for no GPU must not take one
        config = dataclasses.replace(config, device="cpu")
    if cpus >= 1:
        torch.set_num_threads(int(cpus))
    t0 = time.perf_counter()
    result = run_scan(config, Path(folder), progress=False)
    return {
        **_summary(result),
        "seconds": round(time.perf_counter() - t0, 2),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def _line(i: int, n: int, o: TaskOutcome) -> str:
    if o.status == "failed":
        return f"[{i}/{n}] {o.task.label}: FAILED ({o.error}); see {o.folder / 'config.json'}"
    if o.status == "skipped":
        return f"[{i}/{n}] {o.task.label}: finished earlier, kept ({o.folder})"
    s = o.summary or {}
    return (
        f"[{i}/{n}] {o.task.label}: {s.get('n_entropy')} entropy and {s.get('n_token_frequency')} token frequency "
        f"neurons, {o.seconds:.1f} s -> {o.folder}"
    )


def run_tasks(
    tasks: list[ScanTask],
    scans_dir: Path,
    *,
    resources: Resources = Resources(),
    use_ray: bool = True,
    address: str | None = None,
    progress: bool = True,
    hook: Callable[[], None] | None = None,
) -> list[TaskOutcome]:
    """Run every task that is not finished yet into ``scans_dir/<task.folder>``; outcomes in task order.

    ``hook`` runs at the start of each task (tests use it to kill a worker).
    """
    folders = [scans_dir / t.folder for t in tasks]
    outcomes: dict[int, TaskOutcome] = {}
    bar = tqdm(total=len(tasks), desc="study", unit="scan", disable=not progress)

    def report(i: int, o: TaskOutcome) -> None:
        outcomes[i] = o
        (bar.write if progress else log.info)(_line(len(outcomes), len(tasks), o))
        bar.update(1)

    todo = []
    for i, (t, f) in enumerate(zip(tasks, folders)):
        if finished(f, t):
            report(i, TaskOutcome(t, f, "skipped"))
        else:
            todo.append(i)
    try:
        if todo and use_ray and ray_available():
            _run_on_ray(tasks, folders, todo, resources, address, hook, report)
        else:
            if todo and use_ray:
                log.warning(
                    "Ray is not installed: the %d scans run one after another in this process; %s to run them "
                    "in parallel, here or on a cluster",
                    len(todo),
                    RAY_EXTRA,
                )
            for i in todo:
                t0 = time.perf_counter()
                try:
                    summary = run_scan_task(tasks[i].config.to_dict(), str(folders[i]), resources.cpus, 0, hook)
                except Exception as exc:  # noqa: BLE001 - one failed scan is reported; the others go on
                    report(i, TaskOutcome(tasks[i], folders[i], "failed", error=_reason(exc)))
                    continue
                report(i, TaskOutcome(tasks[i], folders[i], "complete", time.perf_counter() - t0, summary=summary))
    finally:
        bar.close()
    return [outcomes[i] for i in range(len(tasks))]


def _reason(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a Ray task error wraps the scan's own exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0][:300] if text else ''}"


def _run_on_ray(tasks, folders, todo, resources: Resources, address, hook, report) -> None:
    with ray_session(address) as ray:
        task = ray.remote(max_retries=resources.max_retries, num_cpus=resources.cpus, num_gpus=resources.gpus)(
            run_scan_task
        )
        started = time.perf_counter()
        refs = {
            task.remote(tasks[i].config.to_dict(), str(folders[i]), resources.cpus, resources.gpus, hook): i
            for i in todo
        }
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    i = refs[ref]
                    seconds = time.perf_counter() - started
                    try:
                        summary = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the scan's error, or retries exhausted
                        report(i, TaskOutcome(tasks[i], folders[i], "failed", seconds, error=_reason(exc)))
                        continue
                    report(i, TaskOutcome(tasks[i], folders[i], "complete", summary["seconds"], summary=summary))
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
            log.warning(
                "stopped: %d of %d scans still running or queued were cancelled; their finished sweep chunks are "
                "kept, and rerunning the same study command resumes them",
                len(pending),
                len(refs),
            )
            raise
