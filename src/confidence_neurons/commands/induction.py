"""``confidence-neurons induction``: the case study of Sec. 6 and Appendices H and I, end to end.

Default sizes are the paper's scaled down to what two CPU cores allow; the paper's own sizes are
in each option's help, and ``--paper-sizes`` takes all of them (App. D).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from confidence_neurons.commands.checks import load_checked
from confidence_neurons.commands.common import recording
from confidence_neurons.commands.options import KernelOptions, SourceOptions, option, run_name
from confidence_neurons.errors import ConfigError
from confidence_neurons.induction.heads import HEAD_ABLATIONS, HeadAblation
from confidence_neurons.induction.study import InductionResult, chosen_neurons, induction
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.report.induction import (
    induction_figures,
    induction_report_settings,
    induction_sections,
    induction_title,
)
from confidence_neurons.rundir import RunDir

# App. D's sizes: 500 synthetic induction sequences, 100 for the head ablations and DFA, 1024
# repeated random-token sequences for prefix matching, 1000 natural sequences (BOS attention and
# natural induction alike).
PAPER_SIZES = {"n_seqs": 500, "n_ablation_seqs": 100, "n_prefix_seqs": 1024, "n_bos_seqs": 1000, "n_natural": 1000}


@dataclass(frozen=True, kw_only=True)
class InductionConfig(KernelOptions, SourceOptions):
    """Which neurons, and how much text for each step of the case study."""

    neurons: tuple[str, ...] = option((), "comma-separated final-layer neurons LAYER.INDEX (e.g. 29.830,29.1022)")
    scan_dir: str | None = option(
        None, "a finished scan run directory: study its entropy and token frequency neurons", flag="--scan"
    )
    half_len: int = option(100, "tokens per copy (paper: 100)", minimum=1)
    n_seqs: int = option(64, "synthetic sequences for the curves (paper: 500)", flag="--n-induction-seqs", minimum=1)
    n_random: int = option(
        10,
        "random final-layer neurons, each clipped on its own, as the baseline of Fig. 5b (paper App. H.2: 10)",
        minimum=0,
    )
    n_prefix_seqs: int = option(64, "repeated random-token sequences for prefix matching (paper: 1024)", minimum=1)
    n_bos_seqs: int = option(64, "natural sequences for the mean BOS attention (paper: 1000)", minimum=1)
    n_ablation_seqs: int = option(16, "sequences for BOS / mean-z ablation and DFA (paper: 100)", minimum=1)
    ablation_half_len: int = option(
        50,
        "tokens per copy of the BOS / mean-z ablation and DFA sequences, BOS + T + T (paper: 50; "
        "equal to --half-len: the first sequences of the curves, as before 2026-12)",
        minimum=2,
    )
    head_ablation: HeadAblation = option(
        "per-position",
        "where BOS / mean-z ablation acts: per-position (the paper's, Sec. 6.2: only at the query position "
        "read; exact, in two forwards per head set) or all-positions (every query position at once; the "
        "default before 2026-12)",
    )
    n_natural: int = option(64, "natural induction sequences (paper: 1000)", minimum=1)
    natural_seq_len: int = option(256, "tokens per natural induction sequence", minimum=2)
    ngram: int = option(6, "repeated n-gram length for natural induction (paper: 6)", minimum=1)
    paper_sizes: bool = option(
        False,
        "App. D's sizes: 500 synthetic, 100 ablation, 1024 prefix-matching and 1000 natural sequences; a size "
        "flag given with it wins unless it equals the scaled default",
    )
    k: int | None = option(
        None,
        "null-space size for rho in Fig. 11 (default: the paper's: 12 for GPT-2 Small, "
        "else floor(1%% of d_model), at least 1)",
    )

    def __post_init__(self) -> None:
        if self.paper_sizes:  # sizes still at the scaled default take the paper's
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in PAPER_SIZES.items():
                if getattr(self, name) == defaults[name]:
                    object.__setattr__(self, name, value)
        super().__post_init__()
        if self.head_ablation not in HEAD_ABLATIONS:
            raise ConfigError(
                f"head_ablation must be one of {', '.join(HEAD_ABLATIONS)}, not {self.head_ablation!r}",
                field="head_ablation",
            )
        if not self.neurons and self.scan_dir is None:
            raise ConfigError(
                "name the neurons to study with --neurons L.I,L.J or give a finished scan with --scan RUN_DIR",
                field="neurons",
            )


def write(rd: RunDir, result: InductionResult) -> None:
    """Tables, figures and report of a finished case study."""
    for name, table in result.tables.items():
        rd.table(name, table)
    rd.csv("clipped_summary", result.tables["clipped_summary"])
    figures = induction_figures(result)
    rd.figures(figures)
    rd.report(
        title=induction_title(result),
        settings=induction_report_settings(result),
        sections=induction_sections(result, figures),
    )


def run(
    config: InductionConfig, out: Path | None = None, *, model: LoadedModel | None = None, progress: bool = True
) -> InductionResult:
    """Load and check, then run the case study and write the run directory."""
    out = Path(out) if out is not None else run_name("induction", config)
    model = load_checked(config, "induction", out, model)
    layer = final_layer(model)
    chosen_neurons(config, layer)  # a scan made on another model fails before anything is written
    with recording(out, "induction", config, model_source=model.source) as rd:
        result = induction(model, config, layer=layer, progress=progress)
        result.run_dir = rd.path
        write(rd, result)
        rd.set_status("complete", settings=result.settings)
    return result


__all__ = ["PAPER_SIZES", "InductionConfig", "InductionResult", "induction", "run"]
