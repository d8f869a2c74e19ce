"""Benchmark the closed-form mediation sweep against the authors' method and real forwards.

On the same model and tokens it times:
  1. the closed-form sweep over every final-layer neuron (TE and DE, fused kernel);
  2. the authors' method: per chunk of neurons, add delta * w_out to the cached residual, apply
     the final norm and W_U (d_model times more arithmetic), then the softmax statistics; timed
     on a sample of neurons and extrapolated, and checked to give the same TE/DE;
  3. one real forward pass per neuron and variant (hooks), on a sample, extrapolated;
  4. what DE_freq and |change of KL| add to the sweep (Sec. 4), checked against DE_freq from an
     exact third pass over the vocabulary (per_token_effects), and the unigram counter's speed.
Right after 1. it prints the sweep's rate in (token, neuron, vocab) logit evaluations per second
(counted per variant) and the machine's limit on the same tiles: a bare fused exp-and-sum,
sum_v exp(A L + B U + b_U), over a (token_chunk, neuron_chunk, d_vocab) tile of the model's own L and U
(``kernel.exp_sum_floor``: on the CPU the C kernel's loop stripped to the logit (two fused multiply-adds)
and one exponential, same blocks, tiles, compiler and flags; on a GPU the same expression through
torch.compile), and the kernel alone on that tile (TE logits), so that the ratio separates the
kernel from the closed form's matrix products.

    python benchmarks/bench_sweep.py [--model PATH] [--n-seqs 8] [--seq-len 256] [--repeats 1]
        [--device cpu|cuda] [--backend auto|c|torch|compiled] [--sweep-only]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from confidence_neurons.analysis.closed_form import ablated_values, chunks, layer_on, te_logits
from confidence_neurons.analysis.effects import VARIANTS, per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.kernel import describe_backend, exp_sum_floor, resolve_backend, softmax_stats
from confidence_neurons.analysis.reference import brute_force_ablation
from confidence_neurons.analysis.sweep import sweep
from confidence_neurons.data.corpus import sample_token_sequences
from confidence_neurons.data.unigrams import count_unigrams, p_freq, v_freq
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import load_model


@torch.no_grad()
def authors_method(layer: FinalLayer, resid, acts, target, neurons, mean, token_chunk=128, neuron_chunk=4):
    """TE and DE by materialising x + delta w_out and re-applying the final norm and W_U."""
    te = torch.zeros(len(neurons), dtype=torch.float64)
    de = torch.zeros(len(neurons), dtype=torch.float64)
    for k0 in range(0, len(neurons), neuron_chunk):
        idx = neurons[k0 : k0 + neuron_chunk]
        w = layer.W_out[idx]  # (K, d_model)
        for t0 in range(0, resid.shape[0], token_chunk):
            x, tgt = resid[t0 : t0 + token_chunk], target[t0 : t0 + token_chunk]
            clean = layer.logits(x).log_softmax(-1)
            clean_loss = -clean.gather(-1, tgt[:, None])[:, 0]
            delta = mean[idx] - acts[t0 : t0 + token_chunk][:, idx]  # (T, K)
            x_abl = x[:, None, :] + delta[..., None] * w  # (T, K, d_model)
            for v, acc in (("TE", te), ("DE", de)):
                s = None if v == "TE" else layer.scale(x)[:, None, :]
                logp = layer.logits(x_abl, scale=s).log_softmax(-1)  # (T, K, d_vocab)
                loss = -logp.gather(-1, tgt[:, None, None].expand(-1, len(idx), 1))[..., 0]
                acc[k0 : k0 + len(idx)] += (loss - clean_loss[:, None]).abs().sum(0).double()
    n = resid.shape[0]
    return te / n, de / n


def _mean_ablation_hook(neuron: int, value: float):
    def hook(acts, hook):
        new = acts.clone()
        new[..., neuron] = value
        return new

    return hook


def _timed(fn, device: torch.device, min_time: float = 1.0) -> float:
    """Seconds per call of ``fn`` (after one warm-up call; repeated until ``min_time`` has passed)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        sync()
        calls += 1
        if time.perf_counter() - t0 >= min_time:
            return (time.perf_counter() - t0) / calls


@torch.no_grad()
def floor_report(layer, cache, device, backend, token_chunk: int, neuron_chunk: int, sweep_rate: float) -> None:
    """The machine's limit on the sweep's own tiles, the kernel alone on them, and the sweep's ratio to it."""
    dlayer = layer_on(layer, device)
    idx = torch.arange(min(neuron_chunk, layer.d_mlp))
    mean_k = cache.acts.mean(0)[idx].to(device)
    _, c = next(chunks(dlayer, cache, idx, lambda a: ablated_values(a, mean_k, "mean"), token_chunk))
    te = te_logits(c, dlayer)
    T, K, V = c.L.shape[0], c.U.shape[0], c.L.shape[1]
    n = T * K * V
    floors = {}
    kinds = [resolve_backend(backend, device)]
    if device.type == "cpu" and kinds[0] != "compiled":
        kinds.append("compiled")  # on the CPU both floors: the C loop and what torch.compile makes of it
    for kind in kinds:
        floors[kind] = n / _timed(lambda k=kind: exp_sum_floor(c.L, c.U, dlayer.b_U, te.A, te.B, backend=k), device)
    shift, ref = (c.L / c.s + dlayer.b_U).max(-1)
    tgt = cache.target[:T].to(device)
    kernel_rate = n / _timed(
        lambda: softmax_stats(c.L, c.U, dlayer.b_U, te.A, te.B, tgt, shift=shift, ref=ref, backend=backend), device
    )
    floor = floors[kinds[0]]
    print(
        f"tile {T} tokens x {K} neurons x {V} vocab ({describe_backend(backend, device)} on {device}): "
        f"floor (bare fused exp-and-sum) {floor / 1e9:.2f} G/s"
        + "".join(f", {k} floor {r / 1e9:.2f} G/s" for k, r in floors.items() if k != kinds[0])
        + f"; kernel alone {kernel_rate / 1e9:.2f} G/s = {floor / kernel_rate:.2f}x the floor; "
        f"whole sweep {sweep_rate / 1e9:.2f} G/s per variant = {floor / sweep_rate:.2f}x the floor"
    )


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n-seqs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--authors-sample", type=int, default=16, help="neurons timed with the authors' method")
    ap.add_argument("--forward-sample", type=int, default=2, help="neurons timed with real forwards")
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="sweeps with and without DE_freq, interleaved, for its overhead (the fastest of each counts)",
    )
    ap.add_argument("--device", default="cpu", help="where the sweep runs: cpu or cuda[:N]")
    ap.add_argument("--backend", default="auto", choices=["auto", "c", "torch", "compiled"])
    ap.add_argument("--token-chunk", type=int, default=256)
    ap.add_argument("--neuron-chunk", type=int, default=128)
    ap.add_argument("--sweep-only", action="store_true", help="stop after the sweep and its floor")
    args = ap.parse_args()
    device = torch.device(args.device)
    sweep_kw = dict(
        progress=False,
        device=device,
        backend=args.backend,
        token_chunk=args.token_chunk,
        neuron_chunk=args.neuron_chunk,
    )

    model = load_model(args.model, device="cpu")
    layer = final_layer(model)
    tokens = sample_token_sequences(
        model.tokenizer, None, n_seqs=args.n_seqs, seq_len=args.seq_len, bos_id=model.bos_id
    ).tokens
    cache = run_forward(model, layer, tokens, progress=False)
    n, d_mlp, V = cache.n_tokens, layer.d_mlp, layer.d_vocab
    print(
        f"model {model.name}: d_model {layer.d_model}, d_mlp {d_mlp}, d_vocab {V}; {n} tokens; "
        f"{torch.get_num_threads()} threads; sweep on {device} with {describe_backend(args.backend, device)}"
    )

    k, t = min(args.neuron_chunk, d_mlp), min(args.token_chunk, n)  # warm-up (compilation): one chunk
    sweep(
        replace(layer, W_out=layer.W_out[:k]),
        ForwardCache(
            cache.resid[:t],
            cache.acts[:t, :k],
            cache.target[:t],
            1,
            mlp_out=None if cache.mlp_out is None else cache.mlp_out[:t],
        ),
        **sweep_kw,
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    sw = sweep(layer, cache, **sweep_kw)
    sync()
    t_closed = time.perf_counter() - t0
    evals = n * d_mlp * V * len(VARIANTS)
    print(
        f"closed-form sweep, all {d_mlp} neurons x {len(VARIANTS)} variants: {t_closed:.1f} s "
        f"({evals / t_closed / 1e9:.2f} G logit evaluations/s)"
    )
    floor_report(layer, cache, device, args.backend, args.token_chunk, args.neuron_chunk, evals / t_closed)
    if args.sweep_only:
        return

    sample = torch.randperm(d_mlp, generator=torch.Generator().manual_seed(0))[: args.authors_sample]
    t0 = time.perf_counter()
    te, de = authors_method(layer, cache.resid, cache.acts, cache.target, sample, sw.mean_activation)
    t_auth = (time.perf_counter() - t0) * d_mlp / len(sample)
    err = max((te - sw.TE[sample].double()).abs().max().item(), (de - sw.DE[sample].double()).abs().max().item())
    print(
        f"authors' method, {len(sample)} neurons, extrapolated to {d_mlp}: {t_auth:.0f} s "
        f"-> closed form is {t_auth / t_closed:.1f}x faster; max |TE/DE difference| = {err:.2e}"
    )

    fsample = sample[: args.forward_sample].tolist()
    brute_force_ablation(model, layer, tokens[:1], fsample[0], float(sw.mean_activation[fsample[0]]))  # warm-up
    t0 = time.perf_counter()
    for i in fsample:
        model.bridge.run_with_hooks(
            tokens, fwd_hooks=[(layer.act_hook, _mean_ablation_hook(i, float(sw.mean_activation[i])))]
        )
    t_fwd = (time.perf_counter() - t0) * d_mlp * len(VARIANTS) / len(fsample)
    print(
        f"one real forward per neuron and variant, timed on {len(fsample)} neurons, extrapolated: {t_fwd:.0f} s "
        f"-> closed form is {t_fwd / t_closed:.1f}x faster"
    )

    t0 = time.perf_counter()
    counts = count_unigrams(model.tokenizer, None, vocab_size=min(len(model.tokenizer), V), progress=False)
    t_count = time.perf_counter() - t0
    print(
        f"unigram counter, built-in corpus: {counts.meta['n_tokens']:,} tokens in {t_count:.2f} s "
        f"({counts.meta['n_tokens'] / t_count:,.0f} tokens/s)"
    )
    p = p_freq(counts, V)
    freq = FreqDirection(p, v_freq(p))
    plain_times, freq_times = [t_closed], []
    for r in range(args.repeats):
        if r:
            t0 = time.perf_counter()
            sweep(layer, cache, **sweep_kw)
            plain_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        sw_freq = sweep(layer, cache, freq=freq, **sweep_kw)
        freq_times.append(time.perf_counter() - t0)
    t_plain, t_freq = min(plain_times), min(freq_times)
    print(
        f"sweep with DE_freq and |dKL| (TE, DE, DE_freq): {t_freq:.1f} s against {t_plain:.1f} s for TE and DE "
        f"alone: +{100 * (t_freq / t_plain - 1):.1f}% (fastest of {len(freq_times)}; all runs: "
        f"{', '.join(f'{t:.1f}' for t in freq_times)} s with, {', '.join(f'{t:.1f}' for t in plain_times)} s without); "
        f"{100 * float(sw_freq.de_freq_exact_share.mean()):.2f}% of (token, neuron) pairs took exact exponentials, "
        f"the rest the series"
    )
    t0 = time.perf_counter()
    eff = per_token_effects(layer, cache, list(range(d_mlp)), freq=freq, device=device, backend=args.backend)
    t_exact = time.perf_counter() - t0
    dl = (eff.DE_freq.loss - eff.loss[:, None]).double()
    err = max(
        (dl.abs().mean(0) - sw_freq.DE_freq.double()).abs().max().item(),
        (dl.mean(0) - sw_freq.mean_delta_loss_DE_freq.double()).abs().max().item(),
    )
    print(
        f"DE_freq by an exact third pass (per_token_effects, all neurons): {t_exact:.1f} s; "
        f"max |DE_freq difference| = {err:.2e} (largest DE_freq {sw_freq.DE_freq.max():.3f})"
    )


if __name__ == "__main__":
    main()
