"""Tiny randomly initialised Hugging Face causal LMs for the tests (no download).

Each architecture the toolkit supports is built from its own transformers config with
overrides, re-initialised from a fixed seed at a scale that gives non-trivial activations and
output distributions (the library default, std 0.02, leaves a tiny model's final-layer effects
near zero), saved with an offline WordLevel tokenizer by ``save_pretrained``, and loaded back
through the library's ``load_model`` like any local model directory.

Norm weights and biases are randomised too, so that folding the final norm into W_U and the
centring of Appendix C do real work in every test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

Arch = Literal["gpt2", "neox", "llama", "gemma", "phi", "gemma2", "gemma3"]
ARCHITECTURES: tuple[Arch, ...] = ("gpt2", "neox", "llama", "gemma", "phi")
#: Gemma 2 and 3 normalise each MLP output before the residual (and Gemma 2 may soft-cap its logits).
POST_NORM_ARCHITECTURES: tuple[Arch, ...] = ("gemma2", "gemma3")
NORM_KIND: dict[str, str] = {"gpt2": "LN", "neox": "LN", "phi": "LN", "llama": "RMS", "gemma": "RMS"}
GATED: frozenset[str] = frozenset({"llama", "gemma"})
MAX_PARAMS = 2_000_000

# Token ids of the special tokens of the tiny tokenizer; ordinary tokens follow them.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
N_SPECIAL = 3
D_MODEL = 32
VOCAB_SIZE = 96


def tiny_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A WordLevel tokenizer over ``<unk> <s> </s> w0 w1 ...`` with exactly ``vocab_size`` entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    vocab.update({f"w{i}": N_SPECIAL + i for i in range(vocab_size - N_SPECIAL)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=10**6
    )
    assert len(fast) == vocab_size
    return fast


def tiny_config(arch: Arch, **overrides):
    """The transformers config of a tiny model: d_model 32, 2 layers, 4 heads, vocab 96 (Gemma 3: text only)."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        PhiConfig,
    )

    common = dict(vocab_size=VOCAB_SIZE, bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    if arch == "gpt2":
        cfg = dict(
            n_positions=64,
            n_embd=D_MODEL,
            n_layer=2,
            n_head=4,
            n_inner=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        return GPT2Config(**{**common, **cfg, **overrides})
    if arch == "neox":
        cfg = dict(
            hidden_size=D_MODEL,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            rotary_pct=0.5,
            tie_word_embeddings=False,
        )
        return GPTNeoXConfig(**{**common, **cfg, **overrides})
    if arch == "llama":
        cfg = dict(
            hidden_size=D_MODEL,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        return LlamaConfig(**{**common, **cfg, **overrides})
    if arch in ("gemma", "gemma2", "gemma3"):
        cfg = dict(
            hidden_size=D_MODEL,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
        )
        if arch == "gemma":
            return GemmaConfig(**{**common, **cfg, **overrides})
        cfg["final_logit_softcapping"] = None  # Gemma 2/3: no logit soft-capping unless asked for (30.0)
        if arch == "gemma2":
            return Gemma2Config(**{**common, **cfg, **overrides})
        return Gemma3TextConfig(**{**common, **cfg, "sliding_window": 16, **overrides})
    if arch == "phi":
        cfg = dict(
            hidden_size=D_MODEL,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            partial_rotary_factor=0.5,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
        )
        return PhiConfig(**{**common, **cfg, **overrides})
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHITECTURES}")


@torch.no_grad()
def build_tiny_hf(arch: Arch, *, seed: int = 0, **overrides):
    """A randomly initialised tiny HF causal LM (eval mode), deterministic in ``seed``.

    Matrices get std 1/sqrt(d_model); norm weights are 1 + 0.2 N(0,1) (Gemma stores the offset
    from 1, so 0.2 N(0,1)); biases 0.1 N(0,1).
    """
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, **overrides))
    gen = torch.Generator().manual_seed(seed)
    d_model = model.config.hidden_size
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied embeddings
            continue
        seen.add(id(p))
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim >= 2:
            p.copy_(noise / d_model**0.5)
        elif name.endswith("weight"):  # every 1-D weight of these architectures is a norm's
            p.copy_(0.2 * noise if arch.startswith("gemma") else 1.0 + 0.2 * noise)
        else:
            p.copy_(0.1 * noise)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < MAX_PARAMS, f"tiny {arch} model has {n_params} parameters"
    return model.eval()


def save_tiny(model, directory: Path) -> Path:
    """Save ``model`` and a matching tiny tokenizer into ``directory`` (created); return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(model.config.vocab_size)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def make_tiny_dir(
    arch: Arch, directory: Path, *, seed: int = 0, edit: Callable[[object], None] | None = None, **overrides
) -> Path:
    """Build a tiny ``arch`` model, apply ``edit(hf_model)`` (under no_grad) if given, save it."""
    model = build_tiny_hf(arch, seed=seed, **overrides)
    if edit is not None:
        with torch.no_grad():
            edit(model)
    return save_tiny(model, directory)


def load_tiny(arch: Arch, directory: Path, *, seed: int = 0, edit: Callable[[object], None] | None = None, **overrides):
    """A ``LoadedModel`` of a tiny ``arch`` model, through ``load_model`` on a saved directory."""
    from confidence_neurons.models.loading import load_model

    return load_model(str(make_tiny_dir(arch, directory, seed=seed, edit=edit, **overrides)))


def random_tokens(
    n_seqs: int, seq_len: int, *, vocab_size: int = VOCAB_SIZE, bos_id: int = BOS_ID, seed: int = 0
) -> Tensor:
    """(n_seqs, seq_len) ordinary tokens drawn uniformly from a fixed seed, BOS first."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(N_SPECIAL, vocab_size, (n_seqs, seq_len), generator=gen)
    tokens[:, 0] = bos_id
    return tokens


def scan_argv(model: Path, corpus: Path, *, n_seqs: int = 2, seq_len: int = 16) -> list[str]:
    """The command line of a tiny scan: ``model`` (a saved tiny model) on the test ``corpus``."""
    return ["scan", "--model", str(model), "--dataset", str(corpus), "--n-seqs", str(n_seqs), "--seq-len", str(seq_len)]


def table_tolerance() -> dict:
    """rtol/atol for one scan's table computed twice (resumed against uninterrupted, sharded against plain).

    The C and torch kernels sum in a fixed order, so with the same thread count the tables are identical
    and the tests say so (rtol 0). torch.compile (``CONFIDENCE_NEURONS_BACKEND=compiled``) chooses its
    kernels by the shapes it has already compiled for, so the same sweep can round differently from one
    process to the next: measured up to 4e-5 relative on TE and 9e-5 absolute on ln_share (a difference
    of two effects over their sum). A reused chunk of the wrong neurons moves them by 1e-2 and still fails.
    """
    from confidence_neurons.analysis.kernel import resolve_backend

    return dict(rtol=1e-3, atol=1e-4) if resolve_backend("auto") == "compiled" else dict(rtol=0.0, atol=0.0)


def assert_same_table(got, want) -> None:
    """Two tables of the same run agree: ``pd.testing.assert_frame_equal`` exactly, except that float
    columns are compared to ``table_tolerance`` where it is not zero (the compiled kernel).
    """
    import pandas as pd

    tol = table_tolerance()
    if not any(tol.values()):
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        return
    floats = want.select_dtypes("floating").columns
    pd.testing.assert_frame_equal(got.drop(columns=floats), want.drop(columns=floats), check_exact=True)
    pd.testing.assert_frame_equal(got[floats], want[floats], check_exact=False, **tol)


def widened(**tol: float) -> dict:
    """``tol`` (the rounding a test expects from thread counts), widened to ``table_tolerance`` where larger."""
    table = table_tolerance()
    return {k: max(v, table[k]) for k, v in tol.items()}
