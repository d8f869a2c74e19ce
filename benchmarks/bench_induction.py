"""Time the induction case study (Sec. 6, App. H, I) step by step on the embedded default.

Sizes are the paper's scaled to 2 CPU cores (see InductionConfig); pass larger ones on a bigger
machine. Prints each step's time and which step dominates.

    python benchmarks/bench_induction.py [--model PATH] [--neurons 29.830,29.1022]
"""

from __future__ import annotations

import argparse
import time

from confidence_neurons.models.loading import load_model
from confidence_neurons.studies.induction import InductionConfig, induction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument(
        "--neurons", default="29.830,29.1022", help="final-layer neurons (default: SmolLM2's entropy neurons)"
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = load_model(args.model)
    t_load = time.perf_counter() - t0
    config = InductionConfig(model=args.model, neurons=tuple(args.neurons.split(",")))
    t0 = time.perf_counter()
    result = induction(model, config, progress=False)
    total = time.perf_counter() - t0
    print(f"model {model.name}: loaded in {t_load:.1f} s; sizes {result.settings['sizes']}")
    for step, seconds in sorted(result.timings.items(), key=lambda kv: -kv[1]):
        print(f"  {seconds:7.1f} s  {100 * seconds / total:5.1f}%  {step}")
    step, seconds = max(result.timings.items(), key=lambda kv: kv[1])
    print(f"full case study: {total:.1f} s; the dominant step is {step} ({100 * seconds / total:.0f}%)")


if __name__ == "__main__":
    main()
