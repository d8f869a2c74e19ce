"""Time the whole scan of a GPT-2-small-shaped model with random weights: forward pass, then the
closed-form sweep of every final-layer neuron with TE, DE and DE_freq (Sec. 3.2, 4).

The model is built from a transformers GPT2Config (12 layers, d_model 768, 3,072 final-layer
neurons, vocabulary 50,257; random initialisation, nothing downloaded), saved with an offline
word-level tokenizer of the same size and loaded through ``load_model`` like any local model.
The tokens are random ids; P_freq is a Zipf distribution over a random ranking of the vocabulary.
It prints the forward time, the sweep time, the sweep's (token, neuron, vocab) logit evaluations
per second (counted once per variant), and peak memory (torch.cuda.max_memory_allocated on a GPU,
the process's maximum resident set on the CPU).

The full size (25,600 predictions: 100 sequences of 257 tokens) on one GPU:

    python benchmarks/bench_scan_gpt2.py --device cuda

On a small CPU, shrink it (--n-seqs, --seq-len, --neurons-limit) and extrapolate linearly: the
sweep's work is tokens x neurons x vocabulary.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import describe_backend
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.data.unigrams import v_freq
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import load_model


def word_tokenizer(vocab_size: int):
    """An offline WordLevel tokenizer with exactly ``vocab_size`` entries (<unk> <s> </s> w0 w1 ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": 3 + i for i in range(vocab_size - 3)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_gpt2_small(directory: Path, seed: int = 0) -> Path:
    """Save a randomly initialised GPT-2-small-shaped model and its tokenizer into ``directory``."""
    from transformers import AutoModelForCausalLM, GPT2Config

    cfg = GPT2Config(
        vocab_size=50_257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=3072, bos_token_id=1
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(directory)
    word_tokenizer(cfg.vocab_size).save_pretrained(directory)
    return directory


def zipf(vocab_size: int, seed: int = 0) -> FreqDirection:
    rank = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))
    p = (rank + 1.0).pow(-1.0).double()
    p = p / p.sum()
    return FreqDirection(p=p, v=v_freq(p))


def peak_memory(device: torch.device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    text = f"host peak RSS {rss / 1024:.2f} GiB"
    if device.type == "cuda":
        text = f"GPU peak allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB, " + text
    return text


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto", choices=["auto", "c", "torch", "compiled"])
    ap.add_argument("--n-seqs", type=int, default=100)
    ap.add_argument("--seq-len", type=int, default=257, help="tokens per sequence (seq_len - 1 predictions each)")
    ap.add_argument("--neurons-limit", type=int, default=None, help="sweep only the first N neurons (extrapolate)")
    ap.add_argument("--token-chunk", type=int, default=256)
    ap.add_argument("--neuron-chunk", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per forward batch")
    ap.add_argument("--model-dir", default=None, help="reuse (or create) the random model here")
    args = ap.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.model_dir or tmp)
        if not (directory / "config.json").exists():
            t0 = time.perf_counter()
            build_gpt2_small(directory)
            print(f"built and saved the random GPT-2-small-shaped model in {time.perf_counter() - t0:.1f} s")
        model = load_model(str(directory), device=args.device, dtype="float32")
    layer = final_layer(model)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, layer.d_vocab, (args.n_seqs, args.seq_len), generator=gen)
    tokens[:, 0] = 1

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    cache = run_forward(model, layer, tokens, batch_size=args.batch_size, progress=False)
    sync()
    t_forward = time.perf_counter() - t0
    if args.neurons_limit is not None:  # each neuron's closed form only reads its own w_out and activation
        m = args.neurons_limit
        layer = replace(layer, W_out=layer.W_out[:m])
        cache = ForwardCache(cache.resid, cache.acts[:, :m].contiguous(), cache.target, cache.seq_len)
    n, d_mlp, V = cache.n_tokens, layer.d_mlp, layer.d_vocab
    freq = zipf(V)
    kw = dict(
        freq=freq,
        device=device,
        backend=args.backend,
        token_chunk=args.token_chunk,
        neuron_chunk=args.neuron_chunk,
        progress=False,
    )
    warm = ForwardCache(
        cache.resid[: args.token_chunk], cache.acts[: args.token_chunk], cache.target[: args.token_chunk], cache.seq_len
    )
    t0 = time.perf_counter()
    sweep(replace(layer, W_out=layer.W_out[: min(d_mlp, args.neuron_chunk)]), warm, **kw)  # compilation, caches
    sync()
    t_warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    res = sweep(layer, cache, **kw)
    sync()
    t_sweep = time.perf_counter() - t0
    evals = n * d_mlp * V * 3
    print(
        f"GPT-2-small-shaped random model: 12 layers, d_model 768, {d_mlp} neurons swept of 3072, vocab {V}; "
        f"{n} predictions ({args.n_seqs} x {args.seq_len} tokens); sweep on {device} with "
        f"{describe_backend(args.backend, device)}, token chunk {args.token_chunk}, neuron chunk {args.neuron_chunk}"
    )
    print(f"forward pass: {t_forward:.2f} s; warm-up sweep (compilation) {t_warm:.1f} s")
    print(
        f"sweep (TE + DE + DE_freq): {t_sweep:.2f} s, {evals / t_sweep / 1e9:.2f} G logit evaluations/s "
        f"(tokens x neurons x vocab x 3 = {evals:.3g}); {100 * float(res.de_freq_exact_share.mean()):.1f}% of "
        f"DE_freq pairs by exact exponentials"
    )
    full = 25_600 * 3072 * V * 3
    print(f"extrapolated to 25,600 predictions x 3072 neurons at this rate: {full / (evals / t_sweep):.1f} s")
    print(f"peak memory: {peak_memory(device)}")


if __name__ == "__main__":
    main()
