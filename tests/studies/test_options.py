"""Configs are the single source of defaults: each command's flags, --help, config.json and --config."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from confidence_neurons.cli import COMMANDS, build_parser
from confidence_neurons.commands import flags as F
from confidence_neurons.errors import ConfigError
from confidence_neurons.studies.compare import CompareConfig
from confidence_neurons.studies.induction import InductionConfig
from confidence_neurons.studies.inspect import InspectConfig
from confidence_neurons.studies.scan import ScanConfig


def _flags(command: str) -> set[str]:
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {s for a in sub._actions for s in a.option_strings if s.startswith("--")}


def test_each_command_has_exactly_its_own_flags():
    scan, inspect, induction = _flags("scan"), _flags("inspect"), _flags("induction")
    rules = {"--min-rho", "--min-ln-share", "--min-te-ratio", "--min-freq-share", "--tf-min-te-ratio"}
    assert rules <= scan
    assert not rules & inspect and not rules & induction, "rule flags belong to scan alone"
    assert {"--neuron", "--n-passages", "--unigrams"} <= inspect and "--neuron-chunk" not in inspect
    assert {"--neurons", "--scan", "--n-induction-seqs", "--half-len"} <= induction
    assert "--n-seqs" not in induction and "--unigrams" not in induction
    assert {"--out", "--config", "--quiet"} <= scan & inspect & induction
    assert {"--model", "--dataset", "--max-tokens", "--out"} <= _flags("unigrams") and "--seed" not in _flags(
        "unigrams"
    )


def test_help_shows_the_dataclass_defaults():
    parser, _ = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["scan"]
    text = sub.format_help()
    for shown in ("(default: 100)", "(default: 256)", "(default: 0.25)", "(default: 0.3)", "(default: 128)"):
        assert shown in text, shown


@pytest.mark.parametrize("cls", [c.config for c in COMMANDS.values()])
def test_every_field_is_a_flag_and_round_trips_through_a_dict(cls):
    parser = argparse.ArgumentParser()
    flags = F.add_options(parser, cls)
    top = {f.name for f in dataclasses.fields(cls)}
    assert {path.split(".")[0] for path in flags if "." in path or path in top} == top
    required = {
        f.name: "x.npy" if f.name == "out" else "29.830"
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    extra = {InductionConfig: {"neurons": ("1.2",)}, CompareConfig: {"runs": ("runs/a", "runs/b")}}.get(cls, {})
    config = cls(**required, **extra)
    assert cls.from_dict(config.to_dict()) == config


def test_flags_lay_over_defaults_or_a_config_file():
    parser = argparse.ArgumentParser()
    F.add_options(parser, ScanConfig)
    args = parser.parse_args(["--n-seqs", "7", "--min-rho", "0.5", "--no-tf-exclude-entropy-neurons"])
    config = F.options_from_args(ScanConfig, args)
    assert config.n_seqs == 7 and config.rule.min_rho == 0.5 and config.seq_len == 256
    assert config.tf_rule.exclude_entropy_neurons is False and config.tf_rule.min_freq_share == 0.5
    base = ScanConfig(seq_len=64, seed=3)
    over = F.options_from_args(ScanConfig, parser.parse_args(["--seed", "4"]), base)
    assert (over.seq_len, over.seed, over.n_seqs) == (64, 4, 100)


def test_fingerprint_leaves_out_speed_settings():
    a = ScanConfig(neuron_chunk=64, token_chunk=32, batch_size=2, backend="torch")
    assert a.fingerprint() == ScanConfig().fingerprint()
    assert ScanConfig(seed=1).fingerprint() != ScanConfig().fingerprint()
    assert InspectConfig(neuron="1.2").fingerprint() != InspectConfig(neuron="1.3").fingerprint()


def test_bad_settings_are_config_errors_naming_the_field():
    with pytest.raises(ConfigError) as e:
        ScanConfig(n_seqs=0)
    assert e.value.field == "n_seqs" and "n_seqs = 0 must be at least 1" in str(e.value)
    with pytest.raises(ConfigError, match="name the neurons"):
        InductionConfig()
    with pytest.raises(ConfigError, match="does not know: colour"):
        ScanConfig.from_dict({"colour": "red"})
    with pytest.raises(ConfigError, match="lacks the required setting neuron"):
        InspectConfig.from_dict({})
