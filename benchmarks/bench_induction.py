"""Time the induction case study (Sec. 6, App. H, I) stage by stage on the embedded default.

Runs ``confidence-neurons induction`` (the case study, then its figures and report into a
temporary run directory) and prints each stage's time. ``--before REV`` first runs the same
benchmark on the code of git revision REV (its ``src/`` unpacked into a temporary folder, run in a
subprocess at that code's default sizes and options) and prints a before/after table.

    python benchmarks/bench_induction.py [--model PATH] [--neurons 29.830,29.1022]
        [--before REV] [--paper-sizes] [--set FIELD=VALUE ...]

Timings on a shared machine are noisy: the load average is printed with each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

FIGURES = "figures and report"
TOTAL = "total (case study + figures and report)"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _config(args: argparse.Namespace):
    from confidence_neurons.commands.induction import InductionConfig

    fields = {f.name: f for f in dataclasses.fields(InductionConfig)}
    values: dict = {"model": args.model, "neurons": tuple(args.neurons.split(","))}
    for item in args.set:
        key, value = item.split("=", 1)
        if key not in fields:
            raise SystemExit(f"--set {key}: this code's InductionConfig has no field {key!r}")
        values[key] = type(fields[key].default)(value) if fields[key].default is not None else value
    if args.paper_sizes:
        from confidence_neurons.commands.induction import PAPER_SIZES

        values = {**PAPER_SIZES, **values}
    return InductionConfig(**values)


def measure(args: argparse.Namespace) -> dict:
    """Stage timings (s) of one run of this process's code, the sizes and the load."""
    from confidence_neurons.commands.induction import run
    from confidence_neurons.models.loading import load_model

    t0 = time.perf_counter()
    model = load_model(args.model)
    t_load = time.perf_counter() - t0
    config = _config(args)
    load_before = _load()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run(config, Path(out) / "run", model=model, progress=False)
        total = time.perf_counter() - t0
    stages = dict(result.timings)
    stages[FIGURES] = round(total - sum(stages.values()), 2)
    stages[TOTAL] = round(total, 2)
    return {
        "model": model.name,
        "load_s": round(t_load, 1),
        "sizes": result.settings["sizes"],
        "head_ablation": result.settings.get("head_ablation", "all-positions"),
        "stages": stages,
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
        env = {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def _print(label: str, m: dict) -> None:
    print(f"{label}: {m['model']}, head ablation {m['head_ablation']}, sizes {m['sizes']}, load {m['load_average']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--neurons", default="29.830,29.1022", help="final-layer neurons (default: SmolLM2's)")
    ap.add_argument("--before", default=None, help="also time git revision REV's code, for a before/after table")
    ap.add_argument("--paper-sizes", action="store_true", help="App. D's sizes (induction --paper-sizes)")
    ap.add_argument("--set", action="append", default=[], help="FIELD=VALUE of InductionConfig (repeatable)")
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
            print(f"  {seconds:7.1f} s  {100 * seconds / total:5.1f}%  {stage}")
        return
    _print(f"before ({args.before})", before)
    _print("after (this code)", after)
    print("| stage | before (s) | after (s) |\n|---|---:|---:|")
    for stage in dict.fromkeys([*before["stages"], *after["stages"]]):
        b, a = before["stages"].get(stage), after["stages"].get(stage)
        print(f"| {stage} | {'' if b is None else f'{b:.1f}'} | {'' if a is None else f'{a:.1f}'} |")


if __name__ == "__main__":
    main()
