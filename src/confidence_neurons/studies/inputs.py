"""What the studies read before they compute: the run's text, P_freq, and a finished scan's table."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from confidence_neurons.analysis.forward import analysed_tokens, special_ids
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.data.corpus import TokenSample, sample_token_sequences
from confidence_neurons.data.unigrams import (
    UnigramCounts,
    count_sparsity,
    count_unigrams,
    load_counts,
    load_published_counts,
    p_freq,
    v_freq,
)
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.paper import resolve_paper_model
from confidence_neurons.studies.options import SourceOptions, TokenOptions, UnigramOptions

log = logging.getLogger(__name__)


def sample_tokens(model: LoadedModel, config: SourceOptions | TokenOptions) -> TokenSample:
    """The run's text: ``n_seqs`` windows of ``seq_len`` tokens, BOS first, drawn by ``seed``."""
    return sample_token_sequences(
        model.tokenizer,
        config.dataset,
        n_seqs=config.n_seqs,
        seq_len=config.seq_len,
        seed=config.seed,
        bos_id=model.bos_id,
        text_field=config.text_field,
        split=config.split,
        sampling=config.sampling,
    )


def unigram_distribution(
    model: LoadedModel, layer: FinalLayer, config: SourceOptions | UnigramOptions, progress: bool = True
) -> tuple[UnigramCounts, FreqDirection]:
    """P_freq from ``config.unigrams``; without one, for the paper's models the counts its authors
    published (``paper_models``, checked by sha256), else counted over the run's own corpus (Sec. 4).
    """
    paper = resolve_paper_model(getattr(config, "model", None))
    published = None
    if config.unigrams is None and paper is not None:
        published = load_published_counts(paper, layer.d_vocab)
    if config.unigrams is not None:
        counts = load_counts(Path(config.unigrams), layer.d_vocab)
    elif published is not None:
        counts = published
    else:
        counts = count_unigrams(
            model.tokenizer,
            config.dataset,
            vocab_size=min(len(model.tokenizer), layer.d_vocab),
            text_field=config.text_field,
            split=config.split,
            max_tokens=config.unigram_max_tokens,
            progress=progress,
        )
    warning = count_sparsity(counts).warning(flag_hint=hasattr(config, "tf_rule"))
    if warning:  # one warning per run, naming --flag-token-frequency only where the command has it
        log.warning("%s", warning)
    p = p_freq(counts, layer.d_vocab, config.padding)
    return counts, FreqDirection(p=p, v=v_freq(p))


def analysed_mask(model: LoadedModel, tokens: torch.Tensor, config: TokenOptions) -> torch.Tensor:
    """The token filter's mask of the predictions every average counts, ``(n_seqs, seq_len - 1)``;
    a ConfigError naming ``--token-filter`` when it keeps none.
    """
    keep = analysed_tokens(tokens, config.token_filter, special=special_ids(model, tokens, config.token_filter))
    if not bool(keep.any()):
        raise ConfigError(
            f"--token-filter {config.token_filter} leaves no token to analyse in sequences of {config.seq_len} "
            "tokens; use longer sequences or --token-filter all",
            field="token_filter",
        )
    return keep


def scan_table(scan_dir: str, layer: FinalLayer | None = None) -> pd.DataFrame:
    """The neuron table of a finished scan (``--scan``), checked to be of ``layer``'s model when given;
    else a ConfigError naming ``--scan``.
    """
    table_path = Path(scan_dir) / "neurons.parquet"
    if not table_path.is_file():
        raise ConfigError(
            f"{scan_dir} holds no finished scan (no neurons.parquet); run `confidence-neurons scan` first",
            field="scan_dir",
        )
    t = pd.read_parquet(table_path)
    if layer is not None and (int(t["layer"].iloc[0]) != layer.layer or len(t) != layer.d_mlp):
        raise ConfigError(
            f"the scan in {scan_dir} was made on another model (layer {t['layer'].iloc[0]}, {len(t)} neurons)",
            field="scan_dir",
        )
    return t
