"""Command line: ``confidence-neurons scan | inspect | induction | unigrams | steer | compare | study | rerun``.

Each subcommand's flags come from its config dataclass (``commands/``); this module parses them,
calls the command's ``run`` and prints a short summary. Bad input (the toolkit's own error types)
is one line on stderr and exit code 2; a failure during the run is one line and exit code 1 (the
run directory records it, with the traceback, in config.json); Ctrl-C is exit code 130. ``--debug``
shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confidence_neurons.commands import flags as F
from confidence_neurons.commands.unigrams import UnigramsConfig
from confidence_neurons.errors import ConfigError, ToolkitError
from confidence_neurons.provenance import toolkit_version
from confidence_neurons.studies.compare import CompareConfig
from confidence_neurons.studies.induction import InductionConfig
from confidence_neurons.studies.inspect import InspectConfig
from confidence_neurons.studies.options import from_dict, older_settings
from confidence_neurons.studies.scan import ScanConfig
from confidence_neurons.studies.steer import SteerConfig
from confidence_neurons.study.result import StudyConfig
from confidence_neurons.study.result import summary as study_summary


@dataclass(frozen=True)
class Command:
    """A subcommand: its config dataclass, its help, and whether it writes a run directory."""

    config: type
    help: str
    run_dir: bool = True  # writes a run directory (--out DIR, --config FILE, rerun)
    positional: tuple[str, str] | None = None  # (tuple field, metavar) also given as positional arguments


COMMANDS = {
    "scan": Command(
        ScanConfig,
        "find entropy and token frequency neurons in the final layer (weights, TE/DE/DE_freq, figures, report)",
    ),
    "inspect": Command(InspectConfig, "clip-mean-ablate one final-layer neuron and show its effect token by token"),
    "induction": Command(
        InductionConfig,
        "the induction case study (Sec. 6, App. H, I): neurons on repeated text, "
        "induction heads, BOS and mean attention-output ablation, direct feature attribution",
    ),
    "unigrams": Command(UnigramsConfig, "count the model's tokens over a corpus (P_freq for Sec. 4)", run_dir=False),
    "steer": Command(
        SteerConfig,
        "turn entropy neurons as a confidence dial over a grid of scales and measure calibration on held-out "
        "text against temperature scaling (beyond the paper)",
    ),
    "compare": Command(
        CompareConfig,
        "compare finished scans of several models, corpora or checkpoints (App. E-G: table, Fig. 6, 7, 8, report)",
        positional=("runs", "RUN_DIR"),
    ),
    "study": Command(
        StudyConfig,
        "run many scans (models x revisions x corpora) as Ray tasks, here or on a cluster, and compare them",
        positional=("study", "STUDY.toml"),
    ),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, dict[str, str]]]:
    """The parser, and per command the map from config field to flag (for error messages)."""
    parser = argparse.ArgumentParser(prog="confidence-neurons", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {toolkit_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    field_flags = {}
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        F.allow_negative_values(p)
        field_flags[name] = F.add_options(p, cmd.config)
        if cmd.positional:  # same destination as the field's own flag, so both reach the config
            field, metavar = cmd.positional
            p.add_argument(F._dest(field), nargs="*", metavar=metavar, default=argparse.SUPPRESS, help=field)
        if cmd.run_dir:
            p.add_argument(
                "--out",
                type=Path,
                help="run directory (default: runs/<command>-<model>-<settings hash>); "
                "rerun the same command to resume",
            )
            p.add_argument(
                "--config",
                type=Path,
                metavar="FILE",
                help="settings from a JSON file: a run's config.json or its 'config' block; flags override",
            )
            field_flags[name]["config"] = "--config"
        p.add_argument("--quiet", action="store_true", help="no progress bars or warnings: errors and the summary only")
        p.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    rerun = sub.add_parser("rerun", help="repeat a finished or stopped run from its config.json")
    rerun.add_argument("run_dir", type=Path, help="the run directory to repeat")
    rerun.add_argument("--out", type=Path, help="where the repeat goes (default: RUN_DIR-rerun)")
    rerun.add_argument("--quiet", action="store_true", help="no progress bars or warnings: errors and the summary only")
    rerun.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    return parser, field_flags


def _read_config_file(path: Path) -> tuple[str | None, dict]:
    """(kind, settings) from a run's config.json or a bare settings object."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", field="config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable JSON file ({exc})", field="config") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        return data.get("kind"), data["config"]
    return None, data


def _print_scan(result) -> None:
    from confidence_neurons.analysis.table import top_neurons, top_token_frequency_neurons

    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    s = result.settings
    if s.get("pieces_recomputed"):
        n = s["pieces_recomputed"]
        print(
            f"repaired: {n} damaged or unverifiable piece{'s' * (n > 1)} recomputed (named above and in config.json's "
            f"integrity); reused {s.get('sweep_chunks_reused', 0)} finished sweep chunks"
        )
    elif s.get("earlier_status") == "complete":
        print(f"already complete: verified and reused {s.get('sweep_chunks_reused', 0)} finished sweep chunks")
    elif s.get("sweep_chunks_reused"):
        print(f"resumed: reused {s['sweep_chunks_reused']} finished sweep chunks of an earlier attempt")
    print(
        f"\n{len(result.entropy_neurons)} entropy neurons in layer {s['final_layer']} "
        f"({s['entropy_neuron_rule']}); top neurons:"
    )
    print(top_neurons(result.neurons, 10).to_string(index=False, float_format=fmt))
    print(
        f"\n{len(result.token_frequency_neurons)} token frequency neurons ({s['token_frequency_neuron_rule']}; "
        f"P_freq from {s['unigrams'].get('source')}); top neurons:"
    )
    print(top_token_frequency_neurons(result.neurons, 10).to_string(index=False, float_format=fmt))


def _print_inspect(result) -> None:
    a = result.activity
    clipped = a.tokens[a.tokens["clipped"]]
    print(
        f"neuron {a.name}: clipped at {len(clipped)} tokens; mean change of loss "
        f"{clipped['delta_loss'].mean():+.4f}, entropy {clipped['delta_entropy'].mean():+.4f}, "
        f"KL {clipped['delta_kl'].mean():+.4f}"
    )


def _print_induction(result) -> None:
    names = dict(zip(result.neurons, result.names))
    print("induction heads: " + ", ".join(result.settings["induction_heads"]))
    summary = result.tables["clipped_summary"]
    for _, row in summary[summary["group"] == "selected"].iterrows():
        print(
            f"  neuron {names[int(row['neuron'])]}: clipping in the second copy changes entropy by "
            f"{row['rel_delta_entropy_pct']:+.1f}% (per position down to {row['min_rel_delta_entropy_pct']:+.1f}%)"
        )
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in result.timings.items()))


def _print_compare(result) -> None:
    cols = ["label", "d_model", "k", "sv_drop", "n_entropy", "n_token_frequency", "top_entropy"]
    cols += ["top_entropy_ln_share", "top_tf", "top_tf_freq_share"]
    table = result.table[[c for c in cols if c in result.table.columns]]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _print_steer(result) -> None:
    cols = ["label", "nll", "ece", "brier", "accuracy", "entropy", "mean_rank_change"]
    t = result.table
    shown = t[(t["kind"] == "clean") | t["fitted"]][cols]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(result.verdict)


def _run(kind: str, config: Any, out: Path | None, quiet: bool) -> None:
    from confidence_neurons.commands import compare, induction, inspect, scan, steer, study, unigrams

    if kind == "unigrams":
        counts = unigrams.run(config, progress=not quiet)
        meta = counts.meta
        print(
            f"{meta['n_tokens']:,} tokens from {meta['n_documents']:,} documents "
            f"({meta.get('tokens_per_second', 0):,.0f} tokens/s) -> {config.out}"
        )
        return
    modules: dict[str, tuple[Any, Callable]] = {
        "scan": (scan, _print_scan),
        "inspect": (inspect, _print_inspect),
        "induction": (induction, _print_induction),
        "compare": (compare, _print_compare),
        "steer": (steer, _print_steer),
        "study": (study, lambda result: print(study_summary(result))),
    }
    module, summarise = modules[kind]
    result = module.run(config, out, progress=not quiet)
    summarise(result)
    print(f"report: {(result.run_dir / 'report.html').resolve()}")


def _settings_of_run(cls: type, settings: Any, where: str) -> Any:
    """A run's recorded settings as a config; settings an older version lacked get the value they
    meant then, said on stderr.
    """
    settings, notes = older_settings(cls, settings, where)
    config = from_dict(cls, settings, where=where)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return config


def _config(kind: str, args: argparse.Namespace) -> Any:
    cls = COMMANDS[kind].config
    base = None
    if getattr(args, "config", None) is not None:
        file_kind, settings = _read_config_file(args.config)
        if file_kind not in (None, kind):
            raise ConfigError(f"{args.config} holds a {file_kind} run's settings, not a {kind}'s", field="config")
        if file_kind is None:  # a bare settings object: what it leaves out takes today's defaults
            base = from_dict(cls, settings, where=str(args.config))
        else:  # a run's config.json: what it leaves out is what its version did
            base = _settings_of_run(cls, settings, str(args.config))
    return F.options_from_args(cls, args, base)


def _rerun_out(args: argparse.Namespace) -> Path:
    """Where ``rerun`` writes: ``--out``, else RUN_DIR-rerun beside the run (``rerun .`` included)."""
    if args.out is not None:
        return args.out
    run_dir = args.run_dir.resolve()
    return run_dir.with_name(run_dir.name + "-rerun")


def _out_of(kind: str, args: argparse.Namespace) -> Path | None:
    """The run directory of this invocation, as far as the command line says."""
    if kind == "rerun":
        return _rerun_out(args)
    return getattr(args, "out", None)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0; 2 bad input; 1 a failure during the run; 130 Ctrl-C)."""
    parser, field_flags = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with _verbosity(args.quiet):
        return _main(args, field_flags)


@contextmanager
def _verbosity(quiet: bool) -> Iterator[None]:
    """The toolkit's log level for one command: with ``quiet`` errors only, the transformers
    library's warnings and progress bars included; set back afterwards (``main`` may run in a notebook
    or a test session).
    """
    from transformers.utils import logging as hf_logging

    ours = logging.getLogger("confidence_neurons")
    level, hf_level = ours.level, hf_logging.get_verbosity()
    ours.setLevel(logging.ERROR if quiet else logging.INFO)
    if quiet:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        ours.setLevel(level)
        hf_logging.set_verbosity(hf_level)
        if quiet:
            hf_logging.enable_progress_bar()


def _main(args: argparse.Namespace, field_flags: dict[str, dict[str, str]]) -> int:
    command = kind = args.command
    try:
        if command == "rerun":
            kind, settings = _read_config_file(args.run_dir.resolve() / "config.json")
            if kind not in COMMANDS or not COMMANDS[kind].run_dir:
                raise ConfigError(f"{args.run_dir} holds no run this version can repeat (kind {kind!r})")
            config = _settings_of_run(COMMANDS[kind].config, settings, str(args.run_dir / "config.json"))
            _run(kind, config, _rerun_out(args), args.quiet)
        else:
            _run(kind, _config(kind, args), getattr(args, "out", None), args.quiet)
    except ToolkitError as exc:
        if args.debug:
            raise
        flag = field_flags.get(command, {}).get(getattr(exc, "field", None) or "")
        print(f"error: {flag + ': ' if flag else ''}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure during the run: one sentence, the details in the run's config.json
        if args.debug:
            raise
        where = _out_of(command, args)
        record = (
            f"; the run directory {where} records it as failed" if where and (where / "config.json").is_file() else ""
        )
        message = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(
            f"error: the run failed ({type(exc).__name__}: {message}){record}; rerun with --debug for the traceback",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
