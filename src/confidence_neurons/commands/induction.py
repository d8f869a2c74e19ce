"""``confidence-neurons induction``: the case study of Sec. 6 and Appendices H and I, end to end.

Default sizes are the paper's scaled down to what two CPU cores allow; the paper's own sizes are
in each option's help.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    head_ablation: HeadAblation = option(
        "all-positions",
        "where BOS / mean-z ablation acts: all-positions (every query position in one forward) or per-position "
        "(the paper's, Sec. 6.2: only at the query position read; exact, about seq_len times the work: for a GPU)",
    )
    n_natural: int = option(64, "natural induction sequences (paper: 1000)", minimum=1)
    natural_seq_len: int = option(256, "tokens per natural induction sequence", minimum=2)
    ngram: int = option(6, "repeated n-gram length for natural induction (paper: 6)", minimum=1)
    k: int | None = option(
        None,
        "null-space size for rho in Fig. 11 (default: the paper's: 12 for GPT-2 Small, "
        "else floor(1%% of d_model), at least 1)",
    )

    def __post_init__(self) -> None:
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
        if self.natural_seq_len < 2 * self.ngram + 2:  # two occurrences, a gap and a predicted token after
            raise ConfigError(
                f"ngram = {self.ngram} needs natural sequences of at least {2 * self.ngram + 2} tokens "
                f"(--natural-seq-len is {self.natural_seq_len}); lower --ngram or raise --natural-seq-len",
                field="ngram",
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


__all__ = ["InductionConfig", "InductionResult", "induction", "run"]
