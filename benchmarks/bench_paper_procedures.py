"""The authors' procedures against the toolkit's earlier ones on the embedded model (docs/paper-procedures.md).

Prints, for neuron 29.1022 of SmolLM2-135M: how many analysed tokens the two token filters disagree
on, its ablation mean over every position and over the analysed ones, and its natural-induction
entropy change under the authors' ablation (unclipped, to the plain-text mean) and the toolkit's
(clipped to the synthetic first copy's mean).

    PYTHONPATH=src python benchmarks/bench_paper_procedures.py [--n-seqs 4 --seq-len 128 --n-natural 16]
"""

from __future__ import annotations

import argparse

import torch

from confidence_neurons import load_model
from confidence_neurons.analysis.forward import ablation_mean, analysed_tokens, run_forward, special_ids
from confidence_neurons.data.corpus import sample_token_sequences
from confidence_neurons.induction import neurons as N
from confidence_neurons.induction.sequences import natural_induction, synthetic_induction
from confidence_neurons.models.final_layer import final_layer

NEURON = 1022


def _pct(df) -> tuple[float, float]:
    """100 * sum dH / sum H over the second occurrence (A0..A5, X), and at X alone."""
    second = df[df["occurrence"] == "second"]
    at_x = second[second["label"] == "X"]
    return (
        100 * second["delta_entropy"].sum() / second["entropy"].sum(),
        100 * at_x["delta_entropy"].sum() / at_x["entropy"].sum(),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-seqs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--n-natural", type=int, default=16)
    ap.add_argument("--sampling", default="first", choices=["first", "whole"])
    args = ap.parse_args()
    model = load_model()
    layer = final_layer(model)
    tok = model.tokenizer
    tokens = sample_token_sequences(
        tok, None, n_seqs=args.n_seqs, seq_len=args.seq_len, bos_id=model.bos_id, sampling=args.sampling
    ).tokens
    cache = run_forward(model, layer, tokens, progress=False)
    keep = {f: analysed_tokens(tokens, f, special=special_ids(model, tokens, f)) for f in ("authors", "toolkit")}
    print(
        f"{args.n_seqs} x {args.seq_len} tokens ({args.sampling}): authors keep {int(keep['authors'].sum())}, "
        f"toolkit keep {int(keep['toolkit'].sum())}, differ on {int((keep['authors'] ^ keep['toolkit']).sum())}"
    )
    bos_act = float(cache.acts[torch.arange(args.n_seqs) * (args.seq_len - 1), NEURON].mean())
    every = float(ablation_mean(cache, keep["authors"], "all")[NEURON])
    analysed = float(ablation_mean(cache, keep["toolkit"], "analysed")[NEURON])
    print(
        f"{layer.layer}.{NEURON}: mean over every position {every:.4f}, over the toolkit's analysed tokens "
        f"{analysed:.4f}; activation at BOS {bos_act:.2f}"
    )
    nat, repeats, _ = natural_induction(tok, None, n_seqs=args.n_natural, seq_len=256, bos_id=model.bos_id, seed=0)
    nat_cache = run_forward(model, layer, nat, progress=False)
    plain = sample_token_sequences(tok, None, n_seqs=args.n_natural, seq_len=256, seed=3, bos_id=model.bos_id).tokens
    plain_mean = N.plain_text_mean(model, layer, plain)
    syn, _ = synthetic_induction(tok, None, n_seqs=16, half_len=100, bos_id=model.bos_id)
    syn_cache = run_forward(model, layer, syn, progress=False)
    first_mean = N.acts_by_position(syn_cache)[:, 1:101].mean((0, 1))
    authors = N.natural_induction_effects(
        layer, nat_cache, repeats, [NEURON], reference_mean=plain_mean, ablation="authors"
    )
    toolkit = N.natural_induction_effects(
        layer, nat_cache, repeats, [NEURON], reference_mean=first_mean, ablation="toolkit"
    )
    a, t = _pct(authors), _pct(toolkit)
    print(
        f"natural induction, {len(repeats)} windows, {layer.layer}.{NEURON}: reference mean authors "
        f"{float(plain_mean[NEURON]):.4f} (plain text) vs toolkit {float(first_mean[NEURON]):.4f} (first copy); "
        f"entropy change over the second occurrence authors {a[0]:+.2f}% vs toolkit {t[0]:+.2f}%, "
        f"at X authors {a[1]:+.2f}% vs toolkit {t[1]:+.2f}%"
    )


if __name__ == "__main__":
    main()
