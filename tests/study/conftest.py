"""Tiny models with two "revisions" each (a local model's revisions are its subfolders) and a study file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import make_tiny_dir

REVISIONS = ("step100", "step200")
#: Small scans: 2 sequences of 16 tokens; 4 sweep chunks of the tiny models' 128 neurons.
SCAN = {"n_seqs": 2, "seq_len": 16, "neuron_chunk": 32}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{arch: folder} for a tiny GPT-2 and a tiny NeoX, each with subfolders step100 and step200 (other seeds)."""
    root = tmp_path_factory.mktemp("revisions")
    out = {}
    for a, arch in enumerate(("gpt2", "neox")):
        for r, rev in enumerate(REVISIONS):
            make_tiny_dir(arch, root / arch / rev, seed=10 * a + r)
        out[arch] = root / arch
    return out


def study_toml(models: dict[str, Path], corpus: Path, *, archs=("gpt2", "neox"), revisions=REVISIONS) -> str:
    """A study of ``archs`` x ``revisions`` x one corpus with the small scan settings."""
    lines = ["[scan]", *(f"{k} = {v}" for k, v in SCAN.items()), ""]
    for arch in archs:
        revs = ", ".join(f'"{r}"' for r in revisions)
        lines += ["[[models]]", f'model = "{models[arch]}"', f"revisions = [{revs}]", f'label = "{arch}"', ""]
    lines += ["[[corpora]]", f'dataset = "{corpus}"', 'label = "words"', ""]
    return "\n".join(lines)
