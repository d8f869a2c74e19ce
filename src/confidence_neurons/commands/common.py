"""What every command does around its computation: inputs drawn the same way, one run directory
recorded the same way (config "running", then "complete", or "failed" / "interrupted" with the
reason).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.paper_models import load_published_counts, resolve_paper_model
from confidence_neurons.commands.options import Options, SourceOptions, TokenOptions, UnigramOptions
from confidence_neurons.data.corpus import TokenSample, sample_token_sequences
from confidence_neurons.data.unigrams import (
    UnigramCounts,
    count_sparsity,
    count_unigrams,
    load_counts,
    p_freq,
    v_freq,
)
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.provenance import provenance
from confidence_neurons.rundir import RunDir

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


@contextmanager
def recording(out: Path, kind: str, config: Options, **record: Any) -> Iterator[RunDir]:
    """Open (or resume) the run directory, holding its lock, and keep its status true: "running"
    while the body runs, "failed" with the error and traceback or "interrupted" if it stops; the
    body marks it "complete".
    """
    rd = RunDir.open(out, kind=kind, fingerprint=config.fingerprint())
    try:
        if rd.resumed:
            log.info("resuming the run in %s", out)
        rd.write_config(config=config.to_dict(), status="running", provenance=provenance(), **record)
        yield rd
    except KeyboardInterrupt:
        rd.set_status("interrupted", error="stopped by the user; rerun the same command to resume")
        raise
    except BaseException as exc:
        rd.set_status("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        raise
    finally:
        rd.close()


def preflight(out: Path, kind: str, config: Options) -> None:
    """Everything about the output directory that can be checked before a model loads."""
    RunDir.preflight(out, kind=kind, fingerprint=config.fingerprint())
