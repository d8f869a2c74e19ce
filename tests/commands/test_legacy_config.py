"""Runs made before the authors' procedures became the defaults still load with their old meaning."""

from __future__ import annotations

from confidence_neurons.studies.options import from_dict
from confidence_neurons.studies.scan import ScanConfig


def test_an_old_config_keeps_its_old_procedures():
    old = ScanConfig().to_dict()
    for key in ("token_filter", "ablation_mean", "sampling"):
        old.pop(key, None)
    loaded = ScanConfig.from_dict(old)
    # without token_filter the config predates the filter, which averaged every prediction
    assert (loaded.token_filter, loaded.ablation_mean) == ("all", "analysed")
    assert loaded.sampling == "first"
    renamed = ScanConfig.from_dict({**old, "token_filter": "paper"})
    assert renamed.token_filter == "toolkit"
    assert ScanConfig.from_dict({**old, "token_filter": "all"}).token_filter == "all"


def test_a_new_config_and_a_settings_file_take_the_new_defaults():
    new = ScanConfig()
    assert (new.token_filter, new.ablation_mean, new.sampling) == ("authors", "all", "whole")
    assert ScanConfig.from_dict(new.to_dict()) == new
    partial = from_dict(ScanConfig, {"n_seqs": 4})
    assert (partial.token_filter, partial.ablation_mean, partial.sampling) == ("authors", "all", "whole")
