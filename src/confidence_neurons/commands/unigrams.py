"""``confidence-neurons unigrams``: count the model's tokens over a corpus, for P_freq (Sec. 4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from confidence_neurons.data.corpus import check_dataset
from confidence_neurons.data.unigrams import UnigramCounts, count_unigrams, save_counts
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.loading import load_tokenizer
from confidence_neurons.paths import check_cache_dir
from confidence_neurons.rundir import check_writable
from confidence_neurons.studies.options import TextOptions, option


@dataclass(frozen=True, kw_only=True)
class UnigramsConfig(TextOptions):
    """Which tokenizer, which corpus, where the counts go."""

    out: str = option(help="output .npy file (metadata goes next to it as .json)")
    max_tokens: int | None = option(None, "stop after this many tokens (default: the whole corpus)", minimum=1)
    force: bool = option(False, "overwrite an existing count file and its .json metadata")

    def __post_init__(self) -> None:
        super().__post_init__()
        if Path(self.out).suffix != ".npy":
            raise ConfigError(f"{self.out} must end in .npy", field="out")


def run(config: UnigramsConfig, *, progress: bool = True) -> UnigramCounts:
    """Count and save; refuses to overwrite an existing count file or its metadata unless ``force``."""
    out = Path(config.out)
    for path in (out, out.with_suffix(".json")):  # both files are written: neither may be lost unasked
        if path.is_dir():
            raise ConfigError(f"{path} is a directory; choose another --out", field="out")
        if path.exists() and not config.force:
            raise ConfigError(
                f"{path} already exists and --out {out} would overwrite it; choose another --out, "
                f"delete it, or pass --force",
                field="out",
            )
    check_dataset(config.dataset, config.text_field)
    check_writable(out)
    check_cache_dir()
    counts = count_unigrams(
        load_tokenizer(config.model),
        config.dataset,
        text_field=config.text_field,
        split=config.split,
        max_tokens=config.max_tokens,
        progress=progress,
    )
    save_counts(counts, out)
    return counts
