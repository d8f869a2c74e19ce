"""Time the induction case study (Sec. 6, App. H, I) stage by stage on the embedded default.

Runs ``confidence-neurons induction`` (the case study, then its figures and report into a
temporary run directory) and prints each stage's time. ``--before REV`` first runs the same
benchmark on the code of git revision REV (its ``src/`` unpacked into a temporary folder, run in a
subprocess at that code's default sizes and options) and prints a before/after table.

    python benchmarks/bench_induction.py [--model PATH] [--neurons 29.830,29.1022]
        [--before REV] [--paper-sizes] [--set FIELD=VALUE ...] [--out DIR]

Timings on a shared machine are noisy: the load average is printed with each run, and each stage's
CPU time (all threads of this process) is printed beside its wall time; on an idle machine with
two cores, wall time is about CPU time / 2. Stage boundaries come from the case study's own log
lines ("induction: STAGE"), so the same measurement works on older code.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import torch

FIGURES = "figures and report"
TOTAL = "total (case study + figures and report)"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _config(args: argparse.Namespace):
    from confidence_neurons.studies.induction import InductionConfig

    fields = {f.name: f for f in dataclasses.fields(InductionConfig)}
    values: dict = {"model": args.model, "neurons": tuple(args.neurons.split(","))}
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in fields:
            raise SystemExit(f"--set {key}: this code's InductionConfig has no field {key!r}")
        values[key] = type(fields[key].default)(value) if fields[key].default is not None else value
    if args.paper_sizes:
        from confidence_neurons.studies.induction import PAPER_SIZES

        values = {**PAPER_SIZES, **values}
    return InductionConfig(**values)


class _Marks(logging.Handler):
    """(stage, wall, cpu) at the start of each stage, from the study's "induction: STAGE" log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: list[tuple[str, float, float]] = []

    def mark(self, stage: str) -> None:
        self.marks.append((stage, time.perf_counter(), time.process_time()))
        if len(self.marks) > 1:
            name, w0, c0 = self.marks[-2]
            w, c = self.marks[-1][1:]
            print(f"  [{name}: {w - w0:.1f} s wall, {c - c0:.1f} s CPU]", file=sys.stderr, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("induction: "):
            self.mark(message.removeprefix("induction: "))

    def stages(self) -> tuple[dict[str, float], dict[str, float]]:
        wall, cpu = {}, {}
        for (name, w0, c0), (_, w1, c1) in zip(self.marks, self.marks[1:]):
            wall[name], cpu[name] = round(w1 - w0, 2), round(c1 - c0, 2)
        return wall, cpu


def measure(args: argparse.Namespace) -> dict:
    """Stage timings (s, wall and CPU) of one run of this process's code, the sizes and the load."""
    from confidence_neurons.commands import induction as command
    from confidence_neurons.models.loading import load_model

    t0 = time.perf_counter()
    model = load_model(args.model)
    t_load = time.perf_counter() - t0
    config = _config(args)
    load_before = _load()
    marks = _Marks()
    logger = logging.getLogger("confidence_neurons")  # the study's stage lines, wherever its module lives
    logger.addHandler(marks)
    logger.setLevel(logging.INFO)
    write = command.write

    def timed_write(rd, result) -> None:
        marks.mark(FIGURES)
        write(rd, result)

    command.write = timed_write
    with tempfile.TemporaryDirectory() as out:
        marks.mark("start")
        w0, c0 = time.perf_counter(), time.process_time()
        result = command.run(config, Path(args.out or out) / "run", model=model, progress=False)
        marks.mark("end")
        total, total_cpu = time.perf_counter() - w0, time.process_time() - c0
    command.write = write
    stages, cpu = marks.stages()
    stages.pop("start", None)
    cpu.pop("start", None)
    stages[TOTAL], cpu[TOTAL] = round(total, 2), round(total_cpu, 2)
    return {
        "model": model.name,
        "load_s": round(t_load, 1),
        "sizes": result.settings["sizes"],
        "head_ablation": result.settings.get("head_ablation", "all-positions"),
        "stages": stages,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "load_average": f"{load_before} -> {_load()}",
    }


def _before(args: argparse.Namespace) -> dict:
    """``measure`` on revision ``args.before``'s src/, in a subprocess."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", args.before, "src"], check=True, capture_output=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        tarfile.open(fileobj=BytesIO(archive)).extractall(tmp, filter="data")
        out = Path(tmp) / "before.json"
        cmd = [sys.executable, __file__, "--neurons", args.neurons, "--json", str(out)]
        cmd += ["--model", args.model] if args.model else []
        cmd += [f"--set={item}" for item in args.set]
        env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def _print(label: str, m: dict) -> None:
    print(
        f"{label}: {m['model']}, head ablation {m['head_ablation']}, sizes {m['sizes']}, "
        f"{m['threads']} torch threads, load average {m['load_average']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--neurons", default="29.830,29.1022", help="final-layer neurons (default: SmolLM2's)")
    ap.add_argument("--before", default=None, help="also time git revision REV's code, for a before/after table")
    ap.add_argument("--paper-sizes", action="store_true", help="App. D's sizes (induction --paper-sizes)")
    ap.add_argument("--set", action="append", default=[], help="FIELD=VALUE of InductionConfig (repeatable)")
    ap.add_argument("--out", default=None, help="keep this code's run folder as OUT/run (default: a temporary one)")
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json:  # the --before subprocess
        Path(args.json).write_text(json.dumps(measure(args)))
        return
    before = _before(args) if args.before else None
    after = measure(args)
    if before is None:
        _print("this code", after)
        total = after["stages"][TOTAL]
        for stage, seconds in after["stages"].items():
            print(f"  {seconds:7.1f} s  {after['cpu'][stage]:7.1f} s CPU  {100 * seconds / total:5.1f}%  {stage}")
        return
    _print(f"before ({args.before})", before)
    _print("after (this code)", after)
    print("| stage | before wall (s) | before CPU (s) | after wall (s) | after CPU (s) |\n|---|---:|---:|---:|---:|")
    fmt = lambda x: "" if x is None else f"{x:.1f}"  # noqa: E731
    stages = list(before["stages"])
    for i, stage in enumerate(after["stages"]):  # a stage only "after" has goes after its predecessor there
        if stage not in stages:
            stages.insert(stages.index(list(after["stages"])[i - 1]) + 1 if i else 0, stage)
    for stage in stages:
        cells = [m[k].get(stage) for m in (before, after) for k in ("stages", "cpu")]
        print(f"| {stage} | " + " | ".join(map(fmt, cells)) + " |")


if __name__ == "__main__":
    main()
