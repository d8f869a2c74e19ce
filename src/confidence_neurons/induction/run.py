"""``confidence-neurons induction``: the case study of Sec. 6 and Appendices H and I, end to end.

Steps (each timed into config.json): synthetic induction curves (Fig. 5a), clipped ablation in the
second copy against random neurons (Fig. 5b), the change of every final-layer neuron (Fig. 11),
prefix-matching and BOS-attention scores of every head (Sec. 6.2), BOS ablation (Fig. 5c, 12),
mean attention-output ablation (Fig. 13), direct feature attribution (Fig. 14) and natural
induction (Fig. 9). Default sizes are the paper's scaled down to what 2 CPU cores allow; the
paper's own sizes are in the comments.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from confidence_neurons.analysis.activity import parse_neuron
from confidence_neurons.analysis.mediation import run_forward
from confidence_neurons.analysis.weights import default_k, weight_stats
from confidence_neurons.data.corpus import CorpusError, sample_token_sequences
from confidence_neurons.induction import heads as H
from confidence_neurons.induction import neurons as N
from confidence_neurons.induction.sequences import copy_offset, corrupt_first_copy, natural_induction, synthetic_induction
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel, load_model
from confidence_neurons.rundir import prepare_run_dir, write_config
from confidence_neurons.scan import ScanConfig, _versions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InductionConfig:
    data: ScanConfig = field(default_factory=ScanConfig)  # model, corpus, seed (n_seqs/seq_len unused)
    neurons: tuple[str, ...] = ()  # "L.I" final-layer neurons; empty: the flagged neurons of scan_dir
    scan_dir: str | None = None  # a finished scan run whose entropy and token frequency neurons to study
    half_len: int = 100  # tokens per copy (paper: 100)
    n_seqs: int = 64  # synthetic sequences for the curves (paper: 500)
    n_random_draws: int = 5  # random-neuron baselines for the clipped ablation
    n_prefix_seqs: int = 64  # repeated random-token sequences for prefix matching (paper: 1024)
    n_bos_seqs: int = 64  # natural sequences for the mean BOS attention (paper: 1000)
    n_ablation_seqs: int = 16  # sequences for BOS / mean-z ablation and DFA (paper: 100)
    n_natural: int = 64  # natural induction sequences (paper: 1000)
    natural_seq_len: int = 256
    ngram: int = 6  # paper: 6
    batch_size: int = 8

    def __post_init__(self) -> None:
        for name in ("half_len", "n_seqs", "n_prefix_seqs", "n_bos_seqs", "n_ablation_seqs", "n_natural", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)} must be at least 1")
        if not self.neurons and self.scan_dir is None:
            raise ValueError("name the neurons to study with --neurons L.I,L.J or give a finished scan with --scan RUN_DIR")

    def fingerprint(self) -> dict:
        d = asdict(self)
        d["data"] = self.data.fingerprint()
        d.pop("batch_size")
        return d


def chosen_neurons(config: InductionConfig, layer) -> tuple[list[int], dict[int, str]]:
    """Neuron indices and their family ("entropy", "token frequency" or "chosen")."""
    if config.neurons:
        idx = [parse_neuron(s, layer) for s in config.neurons]
        return idx, {i: "chosen" for i in idx}
    table_path = Path(config.scan_dir) / "neurons.parquet"
    if not table_path.is_file():
        raise ValueError(f"{config.scan_dir} holds no finished scan (no neurons.parquet); run `confidence-neurons scan` first")
    t = pd.read_parquet(table_path)
    if int(t["layer"].iloc[0]) != layer.layer or len(t) != layer.d_mlp:
        raise ValueError(f"the scan in {config.scan_dir} was made on another model (layer {t['layer'].iloc[0]}, {len(t)} neurons)")
    family = {int(i): "entropy" for i in t.loc[t["is_entropy_neuron"], "neuron"]}
    family |= {int(i): "token frequency" for i in t.loc[t["is_token_frequency_neuron"], "neuron"] if int(i) not in family}
    if not family:
        top = t.assign(s=t["TE"] * t["ln_share"].clip(lower=0)).nlargest(3, "s")["neuron"]
        log.warning("the scan flagged no neuron; studying its 3 strongest entropy-neuron candidates")
        family = {int(i): "candidate" for i in top}
    return sorted(family), family


@dataclass
class InductionResult:
    tables: dict[str, pd.DataFrame]
    neurons: list[int]
    names: list[str]
    family: dict[int, str]
    induction_heads: list[tuple[int, int]]
    baseline_heads: list[tuple[int, int]]
    curves: N.PositionCurves
    half_len: int
    dfa: dict[str, tuple[list[str], np.ndarray]]
    prefix: np.ndarray
    bos: np.ndarray
    timings: dict[str, float]
    settings: dict
    run_dir: Path | None = None


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Step:
            def __enter__(self):
                self.t0 = time.perf_counter()
                log.info("induction: %s", name)

            def __exit__(self, *exc):
                timer.timings[name] = round(time.perf_counter() - self.t0, 2)

        return _Step()


def _head_label(heads) -> str:
    return "+".join(f"L{l}H{h}" for l, h in heads) or "none"


def _ablation_table(model, tokens, neurons, names, sets, make_hooks, batch_size) -> pd.DataFrame:
    """Mean activation per position of each neuron under each head set's hooks (one forward per batch)."""
    rows = []
    for kind, heads in [("clean", ())] + sets:
        acts = H.neuron_activations_under(model, tokens, neurons, make_hooks(heads) if heads else [],
                                          batch_size=batch_size)  # (n_neurons, seq_len)
        for k, name in enumerate(names):
            rows.append(pd.DataFrame({"neuron": name, "head_set": _head_label(heads), "kind": kind,
                                      "position": np.arange(acts.shape[1]), "activation": acts[k].numpy()}))
    return pd.concat(rows, ignore_index=True)


@torch.no_grad()
def induction(model: LoadedModel, config: InductionConfig, *, layer=None, progress: bool = True) -> InductionResult:
    layer = layer if layer is not None else final_layer(model)
    neurons, family = chosen_neurons(config, layer)
    names = [f"{layer.layer}.{i}" for i in neurons]
    d, T, timer, bos_id = config.data, config.half_len, _Timer(), model.bos_id
    tables: dict[str, pd.DataFrame] = {}

    with timer("synthetic sequences and forward pass"):
        tokens, source = synthetic_induction(model.tokenizer, d.dataset, n_seqs=config.n_seqs, half_len=T,
                                             bos_id=bos_id, seed=d.seed, text_field=d.text_field, split=d.split)
        cache = run_forward(model, layer, tokens, batch_size=config.batch_size, progress=progress)
        curves = N.curves_from_cache(layer, cache, neurons)
    offset = copy_offset(tokens.shape[1], T)
    start2 = offset + T
    with timer("clipped ablation (Fig. 5b)"):
        draws = N.random_neuron_draws(layer.d_mlp, config.n_random_draws, len(neurons), exclude=neurons, seed=d.seed)
        clipped = N.clipped_ablation_curves(layer, cache, tuple(tokens.shape), neurons, half_len=T,
                                            random_neurons=draws, backend=d.backend)
        tables["clipped_per_position"] = clipped["per_position"]
        tables["clipped_summary"] = clipped["summary"]
        tables["second_copy_token_effects"] = N.second_copy_token_effects(
            layer, cache, tokens, neurons, half_len=T, threshold=clipped["first_copy_mean"],
            tokenizer=model.tokenizer, backend=d.backend)
    with timer("activation change of every neuron (Fig. 11)"):
        change = N.activation_change(N.acts_by_position(cache), T)
        rho = weight_stats(layer, d.k or default_k(layer.d_model)).rho.numpy()
        tables["activation_change"] = pd.DataFrame({"neuron": np.arange(layer.d_mlp), "change": change, "rho": rho,
                                                    "family": [family.get(i, "") for i in range(layer.d_mlp)]})
    del cache
    with timer("head scores (Sec. 6.2)"):
        vocab_hi = min(len(model.tokenizer), layer.d_vocab)
        rep = H.repeated_random_tokens(config.n_prefix_seqs, T // 2, min(100, vocab_hi // 2), vocab_hi,
                                       bos_id=bos_id if bos_id is not None else 0, seed=d.seed)
        prefix = H.prefix_matching_scores(model, rep, batch_size=config.batch_size)
        natural = sample_token_sequences(model.tokenizer, d.dataset, n_seqs=config.n_bos_seqs, seq_len=T + 1,
                                         seed=d.seed + 1, bos_id=bos_id, text_field=d.text_field, split=d.split).tokens
        bos = H.mean_bos_attention(model, natural, batch_size=config.batch_size)
        ind_heads, base_heads = H.choose_heads(prefix, bos, seed=d.seed)
        nl, nh = prefix.shape
        tables["head_scores"] = pd.DataFrame({"layer": np.repeat(np.arange(nl), nh), "head": np.tile(np.arange(nh), nl),
                                              "prefix_matching": prefix.flatten().numpy(), "bos_attention": bos.flatten().numpy()})
    abl_tokens = tokens[: config.n_ablation_seqs]
    sets = [("induction", s) for s in H.head_combinations(ind_heads)]
    sets += [("baseline", s) for s in H.baseline_combinations(base_heads, seed=d.seed)]
    with timer("BOS ablation (Fig. 5c, 12)"):
        tables["bos_ablation"] = _ablation_table(model, abl_tokens, neurons, names, sets, H.bos_ablation_hooks,
                                                 config.batch_size)
    with timer("mean attention-output ablation (Fig. 13)"):
        mean_z = H.mean_z_over(model, abl_tokens, ind_heads, slice(start2, None), batch_size=config.batch_size)
        zsets = [("induction", s) for s in H.head_combinations(ind_heads)]
        tables["mean_z_ablation"] = _ablation_table(model, abl_tokens, neurons, names, zsets,
                                                    lambda hs: H.mean_z_ablation_hooks(hs, mean_z), config.batch_size)
    dfa: dict[str, tuple[list[str], np.ndarray]] = {}
    with timer("direct feature attribution (Fig. 14)"):
        other = sample_token_sequences(model.tokenizer, d.dataset, n_seqs=abl_tokens.shape[0], seq_len=T,
                                       seed=d.seed + 2, prepend_bos=False, text_field=d.text_field, split=d.split).tokens
        corrupted = corrupt_first_copy(abl_tokens, other)
        try:
            for i, name in zip(neurons, names):
                labels, ind = H.direct_feature_attribution(model, abl_tokens, i, batch_size=config.batch_size)
                _, cor = H.direct_feature_attribution(model, corrupted, i, batch_size=config.batch_size)
                dfa[name] = (labels, (ind[:, start2:].mean(1) - cor[:, start2:].mean(1)).numpy())
            if dfa:
                tables["dfa"] = pd.DataFrame({name: v for name, (_, v) in dfa.items()}, index=labels).rename_axis("component").reset_index()
        except ValueError as exc:
            log.warning("direct feature attribution skipped: %s", exc)
    with timer("natural induction (Fig. 9)"):
        try:
            nat_tokens, repeats, nat_source = natural_induction(
                model.tokenizer, d.dataset, n_seqs=config.n_natural, seq_len=config.natural_seq_len, n=config.ngram,
                bos_id=bos_id, seed=d.seed, text_field=d.text_field, split=d.split)
            nat_cache = run_forward(model, layer, nat_tokens, batch_size=config.batch_size, progress=progress)
            tables["natural_effects"] = N.natural_induction_effects(
                layer, nat_cache, repeats, neurons, reference_mean=clipped["first_copy_mean"], n=config.ngram)
            tables["natural_activation_change"] = pd.DataFrame(
                {"neuron": np.arange(layer.d_mlp), "change": N.natural_activation_change(nat_cache, repeats, n=config.ngram)})
        except CorpusError as exc:
            log.warning("natural induction skipped: %s", exc)
            nat_source = {"skipped": str(exc)}
    tables["curves"] = pd.DataFrame({"position": curves.positions, "entropy_mean": curves.entropy_mean,
                                     "entropy_se": curves.entropy_se, "loss_mean": curves.loss_mean,
                                     "loss_se": curves.loss_se,
                                     **{f"act_{n}": curves.activation_mean[k] for k, n in enumerate(names)},
                                     **{f"act_se_{n}": curves.activation_se[k] for k, n in enumerate(names)}})
    settings = {"model": model.name, "neurons": {n: family[i] for i, n in zip(neurons, names)},
                "induction_heads": [_head_label([h]) for h in ind_heads],
                "baseline_heads": [_head_label([h]) for h in base_heads],
                "synthetic": {k: v for k, v in source.items() if k != "corpus"}, "natural": nat_source,
                "sizes": {k: getattr(config, k) for k in ("half_len", "n_seqs", "n_prefix_seqs", "n_bos_seqs",
                                                          "n_ablation_seqs", "n_natural", "natural_seq_len", "ngram")},
                "timings_s": timer.timings}
    return InductionResult(tables=tables, neurons=neurons, names=names, family=family, induction_heads=ind_heads,
                           baseline_heads=base_heads, curves=curves, half_len=T, dfa=dfa, prefix=prefix.numpy(),
                           bos=bos.numpy(), timings=timer.timings, settings=settings)


def default_induction_dir(config: InductionConfig) -> Path:
    import hashlib

    name = Path(config.data.model).stem if config.data.model else "smollm2-135m-instruct"
    digest = hashlib.sha256(json.dumps(config.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("runs") / f"induction-{name.replace('/', '_')}-{digest}"


def run_induction(config: InductionConfig, out: Path | None = None, *, progress: bool = True) -> InductionResult:
    from confidence_neurons.induction.outputs import write_induction_outputs

    model = load_model(config.data.model)
    layer = final_layer(model)
    chosen_neurons(config, layer)  # bad neurons or scan dirs fail before anything is written
    out = Path(out) if out is not None else default_induction_dir(config)
    prepare_run_dir(out, config.fingerprint())
    base = {"fingerprint": config.fingerprint(), "status": "running", "versions": _versions(), "model_source": model.source}
    write_config(out, base)
    result = induction(model, config, layer=layer, progress=progress)
    result.run_dir = out
    write_induction_outputs(result, out)
    write_config(out, {**base, "status": "complete", "settings": result.settings})
    return result
