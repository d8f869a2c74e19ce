"""Checks that run before anything is written or loaded: bad input is one sentence, at once.

``check_inputs`` takes what needs no model (the output directory, the corpus, the count file,
neuron specs) and then the model's sizes from its config alone where that is possible without
loading weights; ``check_limits`` is run again on the loaded model's own sizes.
"""

from __future__ import annotations

from pathlib import Path

from confidence_neurons.analysis.activity import check_neuron, split_neuron
from confidence_neurons.analysis.weights import check_k
from confidence_neurons.commands.common import preflight
from confidence_neurons.commands.options import Options
from confidence_neurons.data.corpus import check_dataset
from confidence_neurons.data.unigrams import read_count_file
from confidence_neurons.errors import ConfigError
from confidence_neurons.induction.study import scan_table
from confidence_neurons.models.loading import LoadedModel, ModelLimits, limits_of, load_model, model_limits
from confidence_neurons.models.placement import resolve_placement


def _neuron_specs(config: Options) -> list[tuple[str, str]]:
    """(spec, field) of every neuron the config names."""
    specs = [(config.neuron, "neuron")] if hasattr(config, "neuron") else []
    return specs + [(s, "neurons") for s in getattr(config, "neurons", ())]


def _longest_sequence(config: Options) -> int | None:
    """The longest token sequence the command will feed the model."""
    if hasattr(config, "half_len"):  # induction: BOS + two copies (curves, head ablations), natural windows
        return max(_induction_lengths(config).values())
    if hasattr(config, "neuron") and getattr(config, "scan_dir", None) is not None:
        return None  # inspect --scan: the scan's tokens, already checked by the scan
    return getattr(config, "seq_len", None)


def _induction_lengths(config: Options) -> dict[str, int]:
    """Sequence length fed by each induction size field."""
    lengths = {"natural_seq_len": config.natural_seq_len, "half_len": 2 * config.half_len + 1}
    if hasattr(config, "ablation_half_len"):
        lengths["ablation_half_len"] = 2 * config.ablation_half_len + 1
    return lengths


def check_limits(config: Options, limits: ModelLimits) -> None:
    """The settings against the model's sizes: context length, final layer and its neurons, k."""
    longest = _longest_sequence(config)
    if longest is not None and limits.n_ctx is not None and longest > limits.n_ctx:
        field = (
            next(f for f, n in _induction_lengths(config).items() if n > limits.n_ctx)
            if hasattr(config, "half_len")
            else "seq_len"
        )
        raise ConfigError(
            f"sequences of {longest} tokens are longer than the model's context of {limits.n_ctx} tokens; "
            f"lower it to at most {limits.n_ctx}",
            field=field,
        )
    for spec, field in _neuron_specs(config):
        check_neuron(spec, limits.n_layers - 1, limits.d_mlp, field)
    if getattr(config, "k", None) is not None:
        check_k(config.k, limits.d_model)


def check_inputs(config: Options, kind: str, out: Path | None, model: LoadedModel | None = None) -> None:
    """Everything that can be checked before the model's weights load (or, given ``model``, at once)."""
    if out is not None:
        preflight(out, kind, config)
    for spec, field in _neuron_specs(config):
        split_neuron(spec, field)
    if getattr(config, "unigrams", None) is not None:
        read_count_file(Path(config.unigrams))
    if getattr(config, "scan_dir", None) is not None:
        scan_table(config.scan_dir)
    check_dataset(config.dataset, config.text_field)
    if model is None and hasattr(config, "placement"):
        resolve_placement(**config.placement())
    limits = limits_of(model) if model is not None else model_limits(config.model)
    if limits is not None:
        check_limits(config, limits)


def load_checked(config: Options, kind: str, out: Path, model: LoadedModel | None = None) -> LoadedModel:
    """Check the inputs, load the model (unless given) and check the settings against its own sizes."""
    check_inputs(config, kind, out, model)
    if model is None:
        placement = config.placement() if hasattr(config, "placement") else {}
        model = load_model(config.model, **placement)
    check_limits(config, limits_of(model))
    return model
