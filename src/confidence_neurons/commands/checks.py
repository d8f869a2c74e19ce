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
from confidence_neurons.data.corpus import check_dataset
from confidence_neurons.data.unigrams import read_count_file
from confidence_neurons.errors import ConfigError
from confidence_neurons.models.loading import LoadedModel, ModelLimits, limits_of, load_model, model_limits
from confidence_neurons.models.placement import resolve_placement
from confidence_neurons.paths import check_cache_dir
from confidence_neurons.studies.inputs import scan_table
from confidence_neurons.studies.options import DeviceOptions, Options, UnigramOptions


def check_limits(config: Options, limits: ModelLimits) -> None:
    """The settings against the model's sizes: context length, final layer and its neurons, k."""
    too_long = {f: n for f, n in config.sequence_lengths().items() if limits.n_ctx is not None and n > limits.n_ctx}
    if too_long:
        field = max(too_long, key=too_long.get)
        raise ConfigError(
            f"sequences of {too_long[field]} tokens are longer than the model's context of {limits.n_ctx} tokens; "
            f"lower it to at most {limits.n_ctx}",
            field=field,
        )
    for spec, field in config.neuron_specs():
        check_neuron(spec, limits.n_layers - 1, limits.d_mlp, field)
    if getattr(config, "k", None) is not None:
        check_k(config.k, limits.d_model)
    rule = getattr(config, "rule", None)
    if rule is not None and rule.select == "top-rho" and limits.d_mlp is not None and rule.top_n >= limits.d_mlp:
        raise ConfigError(
            f"top_n = {rule.top_n} would flag every neuron of a final layer of {limits.d_mlp}; "
            f"give at most {limits.d_mlp - 1}",
            field="rule.top_n",
        )


def check_inputs(config: Options, kind: str, out: Path | None, model: LoadedModel | None = None) -> None:
    """Everything that can be checked before the model's weights load (or, given ``model``, at once)."""
    check_cache_dir()
    if out is not None:
        preflight(out, kind, config)
    for spec, field in config.neuron_specs():
        split_neuron(spec, field)
    if isinstance(config, UnigramOptions) and config.unigrams is not None:
        read_count_file(Path(config.unigrams))
    if getattr(config, "scan_dir", None) is not None:
        scan_table(config.scan_dir)
    check_dataset(config.dataset, config.text_field)
    if model is None and isinstance(config, DeviceOptions):
        resolve_placement(**config.placement())
    limits = limits_of(model) if model is not None else model_limits(config.model, getattr(config, "revision", None))
    if limits is not None:
        check_limits(config, limits)


def load_checked(config: Options, kind: str, out: Path, model: LoadedModel | None = None) -> LoadedModel:
    """Check the inputs, load the model (unless given) and check the settings against its own sizes."""
    check_inputs(config, kind, out, model)
    if model is None:
        placement = config.placement() if isinstance(config, DeviceOptions) else {}
        model = load_model(config.model, revision=getattr(config, "revision", None), **placement)
    check_limits(config, limits_of(model))
    return model
