"""Fixtures shared across test folders: a tiny GPT-2 on disk and a corpus of words it knows."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.tiny import N_SPECIAL, VOCAB_SIZE, make_tiny_dir


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_dir("gpt2", tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Documents of words the tiny tokenizer knows, with a Zipf-like frequency profile."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(VOCAB_SIZE - N_SPECIAL)]
    weights = [1 / (r + 1) for r in range(len(words))]
    folder = tmp_path_factory.mktemp("corpus")
    for d in range(6):
        (folder / f"doc{d}.txt").write_text(" ".join(rng.choices(words, weights, k=400)))
    return folder
