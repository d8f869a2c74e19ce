"""Time the steering grid in closed form against one hooked forward pass per setting.

The grid: every alpha for each neuron on its own (default 9 alphas x 2 neurons = 18 settings) on
the same tokens. The closed form computes the unembedding once per token chunk and each setting's
logits from it (``analysis/steering.py``); the twin runs the model once per setting with a hook on
the neurons. Both give per-token NLL, entropy, confidence, Brier and rank; the script checks that
they agree and prints both times, then times the whole ``steer`` computation (fits included).

    python benchmarks/bench_steer.py [--model PATH] [--neurons 29.830,29.1022] [--n-seqs 8] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from confidence_neurons.analysis import steering as S
from confidence_neurons.analysis.activity import parse_neuron
from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import load_model
from confidence_neurons.studies.inputs import sample_tokens
from confidence_neurons.studies.steer import DEFAULT_ALPHAS, SteerConfig, steer


@torch.no_grad()
def hooked_metrics(model, layer, tokens, neurons, values, batch_size):
    """Per-token metrics of a real forward pass with ``neurons`` set to ``values(acts)``."""

    def hook(acts, hook):
        out = acts.clone()
        out[..., neurons] = values(acts[..., neurons])
        return out

    parts = []
    for b0 in range(0, tokens.shape[0], batch_size):
        batch = tokens[b0 : b0 + batch_size]
        logits = model.bridge.run_with_hooks(batch, fwd_hooks=[(layer.act_hook, hook)])[:, :-1].float()
        parts.append(S.token_metrics(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--neurons", default="29.830,29.1022", help="final-layer neurons (default: SmolLM2's)")
    ap.add_argument("--alphas", default=",".join(DEFAULT_ALPHAS))
    ap.add_argument("--n-seqs", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = load_model(args.model)
    layer = final_layer(model)
    t_load = time.perf_counter() - t0
    config = SteerConfig(
        model=args.model,
        neurons=tuple(args.neurons.split(",")),
        alphas=tuple(args.alphas.split(",")),
        dials="each",
        n_seqs=args.n_seqs,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
    )
    tokens = sample_tokens(model, config)
    neurons = [parse_neuron(s, layer, field="neurons") for s in config.neurons]
    dials = [S.Dial(f"{layer.layer}.{i}", (i,), (k,)) for k, i in enumerate(neurons)]
    settings = [S.Setting("neuron dial", a, d) for d in dials for a in config.alphas]

    t0 = time.perf_counter()
    cache = run_forward(model, layer, tokens.tokens, batch_size=args.batch_size, progress=False)
    t_forward = time.perf_counter() - t0
    steerer = S.Steerer(layer, neurons, cache.acts[:, neurons].mean(0))
    t0 = time.perf_counter()
    measured = S.measure(steerer, steerer.bases(cache, 128), settings, [])
    t_closed = time.perf_counter() - t0

    t0 = time.perf_counter()
    worst = 0.0
    for st in settings:
        (i,), (k,) = st.dial.neurons, st.dial.cols
        m = steerer.mean[k]
        brute = hooked_metrics(
            model, layer, tokens.tokens, [i], lambda a, m=m, al=st.value: m + al * (a - m), args.batch_size
        )
        closed = measured.metrics[st.label]
        for key in ("nll", "entropy", "brier", "confidence"):
            worst = max(worst, float((brute[key] - torch.from_numpy(closed[key])).abs().max()))
    t_brute = time.perf_counter() - t0

    total = t_forward + t_closed
    size = f"{args.n_seqs} x {args.seq_len} tokens ({cache.n_tokens} analysed)"
    print(f"model {model.name} (loaded in {t_load:.1f} s); {size}")
    print(f"grid: {len(config.alphas)} alphas x {len(dials)} neurons = {len(settings)} settings")
    print(f"  closed form: {t_forward:.1f} s one forward pass + {t_closed:.1f} s the grid = {total:.1f} s")
    print(f"  hooked forward per setting: {t_brute:.1f} s ({t_brute / len(settings):.2f} s a setting)")
    print(f"  speed-up {t_brute / total:.1f}x; max |closed - hooked| of nll/entropy/brier/confidence {worst:.2e}")
    t0 = time.perf_counter()
    result = steer(model, config, tokens=tokens, layer=layer, progress=False)
    print(
        f"full steer computation ({len(result.table)} settings incl. T grid and fits): "
        f"{time.perf_counter() - t0:.1f} s; timings {result.settings['timings_s']}"
    )
    print(result.verdict)


if __name__ == "__main__":
    main()
