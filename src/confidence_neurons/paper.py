"""The paper's facts, by name: the models it analyses (hub id and short names), the paper's k
(Sec. 3.4, App. F), the unigram counts its authors published (Sec. 4, App. G) and the final-layer
neurons it names (Sec. 3-6, App. F-G), so that a scan of ``--model gpt2`` uses the paper's settings
and can say whether it found the paper's neurons.

A registry: pure data and lookups, importing nothing from the toolkit (like TransformerLens'
``supported_models``).

k: GPT-2 Small uses k = 12 (Sec. 3.4, Fig. 2e) and LLaMA2 7B k = 40 (Fig. 2f); every other model
the bottom 1% of W_U's singular vectors (App. F), floor(0.01 d_model).

Published counts ship with the package (``data/reference``; 1.2 MB) and are checked against their
sha256 before use (``data.unigrams.load_published_counts``). The Pythia file serves every Pythia size
(one tokenizer); Gemma and LLaMA2 have none, so their P_freq is counted over the run's corpus as for
any model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

#: Where the published count files are installed (package data).
REFERENCE_DIR = Path(str(resources.files("confidence_neurons") / "data" / "reference"))


@dataclass(frozen=True)
class PublishedCounts:
    """A unigram count file published with the paper's code (reference/README.md) and its sha256."""

    file: str
    sha256: str
    tokenizer: str
    corpus: str
    folder: Path = REFERENCE_DIR

    @property
    def path(self) -> Path:
        return self.folder / self.file


@dataclass(frozen=True)
class NamedNeuron:
    """A final-layer neuron the paper names: ``layer.neuron``, the kind it calls it, and where."""

    name: str
    kind: str  # "entropy" or "token frequency"
    where: str
    note: str = ""

    @property
    def layer(self) -> int:
        return int(self.name.split(".")[0])

    @property
    def neuron(self) -> int:
        return int(self.name.split(".")[1])


@dataclass(frozen=True)
class PaperModel:
    """One model of the paper: its names, the paper's k, its published counts and named neurons.

    ``ln_share`` is what the paper reports for 1 - DE/TE of its entropy neurons (App. F), as text.
    """

    key: str
    hub_id: str
    aliases: tuple[str, ...]
    d_model: int
    k: int
    k_source: str
    unigrams: PublishedCounts | None = None
    neurons: tuple[NamedNeuron, ...] = ()
    ln_share: str = ""
    names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(n.lower() for n in (self.key, self.hub_id, *self.aliases)))


GPT2_COUNTS = PublishedCounts(
    "gpt2-small-unigrams_openwebtext-2M_rows_500000.npy",
    "fa9039d6a5acced4b2c5dc9b6f55862574e4d13002b1246b19b55bec1518c9ef",
    "GPT-2 BPE (gpt2)",
    "OpenWebText, 500k rows",
)
PYTHIA_COUNTS = PublishedCounts(
    "pythia-unigrams.npy",
    "76e5945bc51540b823f5dbd26bda082995f9beb4334b2c315f9da637f0fa3a8f",
    "GPT-NeoX-20B (Pythia)",
    "The Pile",
)
PHI2_COUNTS = PublishedCounts(
    "phi-2-unigrams_c4_en_validation.npy",
    "d6edcf022e6b955c6b7e890a33be81975ec8000fda49f0b8a3ae4505715191e3",
    "Phi-2 (CodeGen BPE)",
    "C4 en validation",
)


def _entropy(*names: str, where: str) -> tuple[NamedNeuron, ...]:
    return tuple(NamedNeuron(n, "entropy", where) for n in names)


def _token_frequency(*names: str, where: str) -> tuple[NamedNeuron, ...]:
    return tuple(NamedNeuron(n, "token frequency", where) for n in names)


PAPER_MODELS: tuple[PaperModel, ...] = (
    PaperModel(
        "gpt2",
        "openai-community/gpt2",
        ("gpt2", "gpt2-small", "gpt-2", "gpt-2-small"),
        768,
        12,
        "Sec. 3.4, Fig. 2e: k = 12",
        GPT2_COUNTS,
        (
            NamedNeuron("11.2378", "entropy", "Sec. 3, 5, 6", "the strongest: clipping it cuts entropy by up to 70%"),
            *_entropy("11.584", "11.2870", "11.2123", "11.1611", "11.2910", where="Sec. 3, Fig. 2"),
        ),
        "about 0.8",
    ),
    PaperModel(
        "pythia-410m",
        "EleutherAI/pythia-410m",
        ("pythia-410m",),
        1024,
        10,
        "App. F: bottom 1% of d_model",
        PYTHIA_COUNTS,
        (
            *_entropy("23.1829", "23.1332", "23.2455", "23.3562", "23.2756", "23.2362", where="Sec. 4, Fig. 3"),
            NamedNeuron("23.417", "token frequency", "Sec. 4, Fig. 3", "the main example; w_out projects negatively"),
            *_token_frequency("23.87", "23.730", "23.2017", "23.3412", "23.2952", where="Sec. 4, Fig. 3"),
        ),
        "about 0.3-0.4",
    ),
    PaperModel(
        "pythia-1b",
        "EleutherAI/pythia-1b",
        ("pythia-1b",),
        2048,
        20,
        "App. F: bottom 1% of d_model",
        PYTHIA_COUNTS,
        ln_share="about 0.3-0.4",
    ),
    PaperModel(
        "phi-2",
        "microsoft/phi-2",
        ("phi-2", "phi2"),
        2560,
        25,
        "App. F: bottom 1% of d_model",
        PHI2_COUNTS,
        ln_share="about 0.8",
    ),
    PaperModel(
        "gemma-2b",
        "google/gemma-2b",
        ("gemma-2b",),
        2048,
        20,
        "App. F: bottom 1% of d_model",
        ln_share="about 0.3-0.4",
    ),
    PaperModel(
        "Llama-2-7b",
        "meta-llama/Llama-2-7b-hf",
        ("llama-2-7b", "llama-2-7b-hf", "llama2-7b"),
        4096,
        40,
        "Fig. 2f: k = 40",
        neurons=(NamedNeuron("31.3228", "entropy", "App. F.1, Fig. 7a", "the strongest"),),
        ln_share="about 0.8",
    ),
)


def resolve_paper_model(spec: str | None) -> PaperModel | None:
    """The paper model a ``--model`` spec names (hub id or short name, any case), or None."""
    if spec is None:
        return None
    key = str(spec).strip().lower()
    for paper in PAPER_MODELS:
        if key in paper.names:
            return paper
    return None


def paper_hub_id(spec: str) -> str:
    """The hub id to load for ``spec``: the paper model's when it names one, else ``spec`` unchanged."""
    paper = resolve_paper_model(spec)
    return paper.hub_id if paper is not None else spec


def paper_k_table() -> dict[str, int]:
    """{every name of every paper model: the paper's k}."""
    return {name: p.k for p in PAPER_MODELS for name in (p.key, p.hub_id, *p.aliases)}


def published_counts(file: str) -> PublishedCounts | None:
    """The published count file named ``file`` (its base name), or None."""
    return next((c for c in (GPT2_COUNTS, PYTHIA_COUNTS, PHI2_COUNTS) if c.file == file), None)
