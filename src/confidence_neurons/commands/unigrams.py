"""``confidence-neurons unigrams``: count the model's tokens over a corpus, for P_freq (Sec. 4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from confidence_neurons.data.corpus import check_dataset
from confidence_neurons.data.unigrams import UnigramCounts, count_unigrams, save_counts
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.loading import load_tokenizer
from confidence_neurons.rundir import check_writable
from confidence_neurons.studies.options import TextOptions, option


@dataclass(frozen=True, kw_only=True)
class UnigramsConfig(TextOptions):
    """Which tokenizer, which corpus, where the counts go."""

    out: str = option(help="output .npy file (metadata goes next to it as .json)")
    max_tokens: int | None = option(None, "stop after this many tokens (default: the whole corpus)", minimum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if Path(self.out).suffix != ".npy":
            raise ConfigError(f"{self.out} must end in .npy", field="out")


def run(config: UnigramsConfig, *, progress: bool = True) -> UnigramCounts:
    """Count and save; refuses to overwrite an existing count file."""
    out = Path(config.out)
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out or delete it", field="out")
    check_dataset(config.dataset, config.text_field)
    check_writable(out)
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
