"""The authors' token filter and ablation mean, checked against their code path re-implemented here.

``_their_filter`` is ``filter_entropy_activation_df`` of the authors' utils.py, line for line on a
pandas token table (one row per (batch, pos), every position of every sequence, as their
``get_entropy_activation_df`` builds it); ``_their_mean`` is ``mean_ablate_components``'s
``entropy_df[...].mean()`` over that whole table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from confidence_neurons.analysis.forward import ForwardCache, ablation_mean, analysed_tokens, authors_newline_id

BOS, EOS, NL = 1, 2, 7


def _their_filter(entropy_df: pd.DataFrame, special: set[int], start_pos: int = 3, end_pos: int = -1) -> pd.DataFrame:
    combined_mask = entropy_df["token_id"].isin(sorted(special))
    preceding_token_mask = combined_mask.iloc[1:].reset_index(drop=True)
    combined_mask = combined_mask | preceding_token_mask
    filtered = entropy_df[~combined_mask]
    end_pos_val = entropy_df["pos"].max() + 1 + end_pos if end_pos < 0 else end_pos
    return filtered[filtered["pos"].between(start_pos, end_pos_val, inclusive="left")]


def _token_table(tokens: torch.Tensor) -> pd.DataFrame:
    n_seqs, seq_len = tokens.shape
    return pd.DataFrame(
        {
            "batch": np.repeat(np.arange(n_seqs), seq_len),
            "pos": np.tile(np.arange(seq_len), n_seqs),
            "token_id": tokens.reshape(-1).numpy(),
        }
    )


def _random_tokens(seed: int, n_seqs: int = 6, seq_len: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 12, (n_seqs, seq_len), generator=g)  # ids 3..11: NL (7) is common
    tokens[:, 0] = BOS
    specials = torch.rand(n_seqs, seq_len, generator=g) < 0.08
    tokens[specials] = EOS
    return tokens


def test_the_authors_filter_keeps_what_their_pandas_filter_keeps():
    for seed in range(5):
        tokens = _random_tokens(seed)
        seq_len = tokens.shape[1]
        theirs = _their_filter(_token_table(tokens), {BOS, EOS, NL})
        their_rows = set(zip(theirs["batch"].tolist(), theirs["pos"].tolist()))
        keep = analysed_tokens(tokens, "authors", special={BOS, EOS, NL}).reshape(-1, seq_len - 1)
        ours = {(int(b), int(p)) for b, p in keep.nonzero().tolist()}
        assert ours == their_rows
        assert 0 < len(ours) < tokens.numel()


def test_the_authors_filter_drops_the_token_before_a_special_not_after():
    tokens = torch.tensor([[BOS, 3, 4, 5, 6, EOS, 8, 9, 10, 11]])
    authors = analysed_tokens(tokens, "authors", special={BOS, EOS}).tolist()
    toolkit = analysed_tokens(tokens, "toolkit", special={BOS, EOS}).tolist()
    # rows are positions 0..8; position 4 predicts EOS, position 6 reads the token after it
    assert authors == [False, False, False, True, False, False, True, True, True]
    assert toolkit == [False, False, False, True, True, False, False, True, True]


def test_the_ablation_mean_over_all_positions_is_theirs_up_to_the_last_position():
    tokens = _random_tokens(3)
    n_seqs, seq_len = tokens.shape
    g = torch.Generator().manual_seed(0)
    acts_full = torch.randn(n_seqs, seq_len, 5, generator=g)
    acts_full[:, 0] += 30.0  # a BOS-position outlier, as 29.1022's activation of 34 at BOS
    table = _token_table(tokens)
    for j in range(5):
        table[f"29.{j}_activation"] = acts_full[..., j].reshape(-1).numpy()
    cache = ForwardCache(
        resid=torch.zeros(n_seqs * (seq_len - 1), 4),
        acts=acts_full[:, :-1].reshape(-1, 5),
        target=tokens[:, 1:].reshape(-1),
        seq_len=seq_len,
    )
    keep = analysed_tokens(tokens, "authors", special={BOS, EOS, NL})
    ours = ablation_mean(cache, keep, "all")
    cols = [f"29.{j}_activation" for j in range(5)]
    # their table also holds each sequence's last position, which predicts nothing and is not cached
    theirs_cached = torch.tensor(table[table["pos"] < seq_len - 1][cols].mean().to_numpy(), dtype=torch.float32)
    torch.testing.assert_close(ours, theirs_cached, rtol=1e-5, atol=1e-5)
    theirs = torch.tensor(table[cols].mean().to_numpy(), dtype=torch.float32)
    bound = 2 * acts_full.abs().max() / seq_len
    assert ((ours - theirs).abs() <= bound).all()
    # the analysed mean leaves the BOS outlier out: it is far lower
    analysed = ablation_mean(cache, keep, "analysed")
    filtered = _their_filter(table, {BOS, EOS, NL})
    torch.testing.assert_close(
        analysed, torch.tensor(filtered[cols].mean().to_numpy(), dtype=torch.float32), rtol=1e-5, atol=1e-5
    )
    assert (ours - analysed > 1.0).all()


class _Tok:
    def __init__(self, newline: list[int]):
        self.newline = newline

    def encode(self, text, add_special_tokens=False):
        assert text == "\n"
        return self.newline


def test_the_newline_token_is_dropped_as_their_code_drops_it():
    assert authors_newline_id("gpt2-small", _Tok([198]))[0] == 198
    assert authors_newline_id("stanford-gpt2-small-a", _Tok([198]))[0] == 198
    assert authors_newline_id("EleutherAI/pythia-410m", _Tok([187]))[0] is None
    assert authors_newline_id("microsoft/phi-2", _Tok([198]))[0] is None
    assert authors_newline_id("meta-llama/Llama-2-7b-hf", _Tok([29871, 13]))[0] is None
    # a model their code never ran: its newline token when it is one token, as on GPT-2
    assert authors_newline_id("SmolLM2-135M-Instruct", _Tok([198]))[0] == 198
    assert authors_newline_id("some-model", _Tok([29871, 13]))[0] is None
