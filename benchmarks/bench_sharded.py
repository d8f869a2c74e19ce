"""Benchmark the sharded sweep (``scan --ray``) against the plain one, on the same model and tokens.

The forward pass is written memory-mapped into an activation store in a temporary folder (as a scan
does); then the full sweep (TE, DE and DE_freq of every final-layer neuron) runs
  1. in this process (the fused kernel's OpenMP threads use every core);
  2. on Ray, one worker with one CPU (the single-threaded baseline);
  3. on Ray, ``--workers`` workers with one CPU each, reading the store's files.
Each sharded run writes its chunks into a fresh checkpoint store and is merged by the plain sweep
reading them back; the merged effects are compared with run 1 (max |difference| per field).

    python benchmarks/bench_sharded.py [--model PATH] [--n-seqs 8] [--seq-len 128] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import ray
import torch

from confidence_neurons.analysis.forward import analysed_tokens, run_forward, special_ids
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import describe_backend
from confidence_neurons.analysis.sweep import effect_fields, sweep
from confidence_neurons.data.corpus import sample_token_sequences
from confidence_neurons.data.unigrams import count_unigrams, p_freq, v_freq
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import load_model
from confidence_neurons.rundir import ActivationStore, CheckpointStore
from confidence_neurons.study.sharded import shard_cache_prefix, sharded_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-seqs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--token-chunk", type=int, default=256)
    ap.add_argument("--neuron-chunk", type=int, default=128)
    args = ap.parse_args()
    kw = dict(neuron_chunk=args.neuron_chunk, token_chunk=args.token_chunk)

    model = load_model(args.model, device="cpu")
    layer = final_layer(model)
    tokens = sample_token_sequences(
        model.tokenizer, None, n_seqs=args.n_seqs, seq_len=args.seq_len, bos_id=model.bos_id
    ).tokens
    counts = count_unigrams(
        model.tokenizer, None, vocab_size=min(len(model.tokenizer), layer.d_vocab), max_tokens=500_000, progress=False
    )
    p = p_freq(counts, layer.d_vocab)
    freq = FreqDirection(p, v_freq(p))
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore(Path(tmp) / "activations")
        full = run_forward(model, layer, tokens, progress=False, store=store)
        keep = analysed_tokens(tokens, "paper", special=special_ids(model, tokens))
        cache = full.select(keep, store=store)
        print(
            f"model {model.name}: d_mlp {layer.d_mlp}, d_vocab {layer.d_vocab}; {cache.n_tokens} analysed tokens; "
            f"{os.cpu_count()} CPUs; this process: {torch.get_num_threads()} threads; "
            f"kernel {describe_backend('auto', 'cpu')}; "
            f"chunks of {args.neuron_chunk} neurons x {args.token_chunk} tokens"
        )
        t0 = time.perf_counter()
        plain = sweep(layer, cache, freq=freq, progress=False, **kw)
        t_plain = time.perf_counter() - t0
        print(f"1. plain sweep, one process: {t_plain:.2f} s")

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        print(f"   (Ray started in {time.perf_counter() - t0:.1f} s, not counted below)")
        ray.get([ray.remote(num_cpus=1)(lambda: 0).remote() for _ in range(args.workers)])  # workers up
        prefix = shard_cache_prefix(cache is not full)
        times = {}
        for i, workers in ((2, 1), (3, args.workers)):
            ck = CheckpointStore(Path(tmp) / f"checkpoints_{workers}")
            t0 = time.perf_counter()
            record = sharded_sweep(
                layer, store.folder, prefix, cache.seq_len, ck, freq=freq, workers=workers, progress=False, **kw
            )
            merged = sweep(layer, cache, freq=freq, checkpoints=ck, progress=False, **kw)
            times[workers] = time.perf_counter() - t0
            worst = max(float((getattr(merged, f) - getattr(plain, f)).abs().max()) for f in effect_fields(freq))
            print(
                f"{i}. sharded over {workers} Ray worker(s) of 1 CPU: {times[workers]:.2f} s (shards "
                f"{record['shard_seconds']} s; merge reused {merged.chunks_reused}/{record['chunks']} chunks); "
                f"max |difference| from 1. over {len(effect_fields(freq))} fields: {worst:.3g}"
            )
        ray.shutdown()
    w = args.workers
    print(
        f"speed-up of {w} workers: {times[1] / times[w]:.2f}x over one worker, "
        f"{t_plain / times[w]:.2f}x over the plain sweep in one process"
    )


if __name__ == "__main__":
    main()
