"""The paper's models by name: their k, their published unigram counts, and the neurons the paper
names, marked in the scan report. A tiny model stands in for "gpt2" through the paper-model table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from confidence_neurons import paper as P
from confidence_neurons.analysis.paper_models import paper_neuron_table
from confidence_neurons.analysis.weights import PAPER_K, default_k
from confidence_neurons.cli import main
from confidence_neurons.commands.scan import run as run_scan
from confidence_neurons.data.unigrams import UnigramError, load_published_counts
from confidence_neurons.errors import ToolkitError
from confidence_neurons.paths import file_sha256
from confidence_neurons.studies.scan import ScanConfig
from tests.analysis.test_planted import NEURON_A, NEURON_B, plant
from tests.tiny import VOCAB_SIZE, make_tiny_dir, scan_argv

SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "unigram-counts"


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("gpt2", "gpt2"),
        ("GPT2-small", "gpt2"),
        ("openai-community/gpt2", "gpt2"),
        ("pythia-410m", "pythia-410m"),
        ("EleutherAI/pythia-410m", "pythia-410m"),
        ("pythia-1b", "pythia-1b"),
        ("microsoft/phi-2", "phi-2"),
        ("google/gemma-2b", "gemma-2b"),
        ("meta-llama/Llama-2-7b-hf", "Llama-2-7b"),
        ("Llama-2-7b", "Llama-2-7b"),
    ],
)
def test_names_resolve_to_the_papers_models(spec, key):
    paper = P.resolve_paper_model(spec)
    assert paper is not None and paper.key == key
    assert P.paper_hub_id(spec) == paper.hub_id and "/" in paper.hub_id
    assert default_k(paper.d_model, spec) == paper.k == PAPER_K[spec if spec in PAPER_K else paper.hub_id]


def test_other_names_are_not_paper_models():
    for spec in (None, "gpt2-medium", "EleutherAI/pythia-410m-deduped", "/models/gpt2", "smollm2"):
        assert P.resolve_paper_model(spec) is None
    assert P.paper_hub_id("some/model") == "some/model"
    assert default_k(768, "gpt2-medium") == 7


def test_the_papers_k():
    k = {p.key: p.k for p in P.PAPER_MODELS}
    assert k["gpt2"] == 12 and k["Llama-2-7b"] == 40  # Sec. 3.4 and Fig. 2f
    for p in P.PAPER_MODELS:  # every other model: the bottom 1% (App. F)
        if p.key not in ("gpt2",):
            assert p.k == int(0.01 * p.d_model), p.key


def test_counts_go_with_their_tokenizer():
    files = {p.key: p.unigrams.file if p.unigrams else None for p in P.PAPER_MODELS}
    assert files["gpt2"].startswith("gpt2-small")
    assert files["pythia-410m"] == files["pythia-1b"] == "pythia-unigrams.npy"
    assert files["phi-2"].startswith("phi-2")
    assert files["gemma-2b"] is None and files["Llama-2-7b"] is None


@pytest.mark.parametrize("counts", [P.GPT2_COUNTS, P.PYTHIA_COUNTS, P.PHI2_COUNTS], ids=lambda c: c.file)
def test_shipped_count_files_are_the_published_ones(counts):
    assert counts.path.is_file(), f"{counts.file} is not installed with the package"
    assert file_sha256(counts.path) == counts.sha256
    if (SHARED / counts.file).is_file():
        assert file_sha256(SHARED / counts.file) == counts.sha256


def test_published_counts_load_padded_and_recorded():
    paper = P.resolve_paper_model("pythia-410m")
    counts = load_published_counts(paper, 50304)  # Pythia's W_U is wider than its tokenizer
    raw = np.load(P.PYTHIA_COUNTS.path)
    np.testing.assert_array_equal(counts.counts, raw)
    assert counts.meta["sha256"] == P.PYTHIA_COUNTS.sha256 and counts.meta["paper_model"] == "pythia-410m"
    assert counts.meta["source"] == "published:pythia-unigrams.npy" and counts.meta["corpus"] == "The Pile"
    assert load_published_counts(P.resolve_paper_model("gemma-2b"), 256000) is None
    with pytest.raises(UnigramError, match="another tokenizer"):
        load_published_counts(paper, 256000)


def test_a_damaged_count_file_is_refused(tmp_path):
    damaged = tmp_path / P.GPT2_COUNTS.file
    arr = np.load(P.GPT2_COUNTS.path)
    arr[0] += 1
    np.save(damaged, arr)
    paper = dataclasses.replace(
        P.resolve_paper_model("gpt2"), unigrams=dataclasses.replace(P.GPT2_COUNTS, folder=tmp_path)
    )
    with pytest.raises(UnigramError, match="not the published"):
        load_published_counts(paper, 50257)
    damaged.unlink()
    with pytest.raises(UnigramError, match="missing"):
        load_published_counts(paper, 50257)


# --------------------------------------------------------------------------- a tiny model standing in for "gpt2"


@pytest.fixture(scope="module")
def planted_model(tmp_path_factory) -> Path:
    """A tiny GPT-2 with an entropy neuron planted at 1.NEURON_A (tests/analysis/test_planted.py)."""
    return make_tiny_dir("gpt2", tmp_path_factory.mktemp("planted"), edit=plant)


@pytest.fixture(scope="module")
def standin(planted_model, tmp_path_factory):
    """The "gpt2" entry of the table, with the tiny model's path as a name, k = 2 (the planted direction
    and LayerNorm's all-ones direction), a count file of the tiny vocabulary, and neurons of the tiny model.
    """
    folder = tmp_path_factory.mktemp("published")
    counts = np.arange(1, VOCAB_SIZE + 1, dtype=np.int64)[::-1] * 7
    np.save(folder / "tiny-unigrams.npy", counts)
    published = P.PublishedCounts(
        "tiny-unigrams.npy", file_sha256(folder / "tiny-unigrams.npy"), "tiny", "made up", folder
    )
    gpt2 = P.resolve_paper_model("gpt2")
    neurons = (
        P.NamedNeuron(f"1.{NEURON_A}", "entropy", "planted"),
        P.NamedNeuron(f"1.{NEURON_B}", "entropy", "planted on a logit direction"),
        P.NamedNeuron("1.500", "entropy", "past d_mlp"),
        P.NamedNeuron("0.3", "token frequency", "another layer"),
    )
    return dataclasses.replace(
        gpt2, aliases=(*gpt2.aliases, str(planted_model)), k=2, unigrams=published, neurons=neurons
    )


@pytest.fixture(scope="module")
def standin_scan(standin, planted_model, corpus, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(P, "PAPER_MODELS", (*P.PAPER_MODELS, standin))
    try:
        out = tmp_path_factory.mktemp("standin") / "scan"
        config = ScanConfig(model=str(planted_model), dataset=str(corpus), n_seqs=4, seq_len=32)
        result = run_scan(config, out, progress=False)
    finally:
        mp.undo()  # the stand-in is the paper's "gpt2" only for this scan
    return result, counts_of(standin)


def counts_of(paper):
    return np.load(paper.unigrams.path)


def test_standin_scan_uses_the_papers_k_and_counts(standin_scan, standin):
    result, counts = standin_scan
    assert result.k == 2 != default_k(32)
    meta = result.settings["unigrams"]
    assert meta["source"] == "published:tiny-unigrams.npy" and meta["sha256"] == standin.unigrams.sha256
    assert meta["paper_model"] == "gpt2"
    np.testing.assert_array_equal(result.unigrams.counts, counts)
    assert not (result.run_dir / "unigrams.npy").exists()  # published counts are recorded, not copied


def test_standin_report_marks_the_papers_neurons(standin_scan, standin):
    result, _ = standin_scan
    table = paper_neuron_table(standin, result.neurons)
    verdict = dict(zip(table["name"], table["verdict"]))
    assert verdict[f"1.{NEURON_A}"] == "found"  # the planted entropy neuron
    assert verdict[f"1.{NEURON_B}"] != "found"
    assert verdict["1.500"] == verdict["0.3"] == "not in this model's final layer"
    row = table[table["name"] == f"1.{NEURON_A}"].iloc[0]
    scanned = result.neurons.set_index("name").loc[f"1.{NEURON_A}"]
    assert row["TE"] == scanned["TE"] and row["rho"] == scanned["rho"] and bool(row["is_entropy_neuron"])
    html = (result.run_dir / "report.html").read_text()
    assert "The paper&#x27;s neurons" in html or "The paper's neurons" in html
    assert "entropy neurons: this scan flags 1 of the 3 the paper names" in html
    assert "not in this model&#x27;s final layer" in html and "k = 2 is the paper" in html
    assert "published (tiny-unigrams.npy, sha256 checked)" in html


def test_without_the_table_entry_there_is_no_paper_section(planted_model, corpus, tmp_path):
    result = run_scan(
        ScanConfig(model=str(planted_model), dataset=str(corpus), n_seqs=2, seq_len=16), tmp_path / "s", progress=False
    )
    assert result.settings["unigrams"]["source"] == "counted" and result.k == default_k(32)
    assert "neurons: this scan flags" not in (tmp_path / "s" / "report.html").read_text()


def test_explicit_counts_win_and_damaged_published_counts_stop_the_scan(
    standin, planted_model, corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(P, "PAPER_MODELS", (*P.PAPER_MODELS, standin))
    own = tmp_path / "own.npy"
    np.save(own, np.full(VOCAB_SIZE, 3, dtype=np.int64))
    base = scan_argv(planted_model, corpus)
    assert main([*base, "--unigrams", str(own), "--out", str(tmp_path / "own"), "--quiet"]) == 0
    record = json.loads((tmp_path / "own" / "config.json").read_text())
    assert record["settings"]["unigrams"]["source"] == "published:own.npy"
    assert "paper_model" not in record["settings"]["unigrams"]
    capsys.readouterr()
    bad = dataclasses.replace(standin, unigrams=dataclasses.replace(standin.unigrams, sha256="0" * 64))
    monkeypatch.setattr(P, "PAPER_MODELS", (*P.PAPER_MODELS[:-1], bad))
    assert main([*base, "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "not the published" in capsys.readouterr().err
    with pytest.raises(ToolkitError):
        load_published_counts(bad, VOCAB_SIZE)
