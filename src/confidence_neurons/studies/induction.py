"""The induction case study of Sec. 6 and Appendices H and I as one computation.

Steps (each timed): synthetic induction curves (Fig. 5a), clipped ablation in the second copy
against random neurons (Fig. 5b), the change of every final-layer neuron (Fig. 11), prefix-matching
and BOS-attention scores of every head (Sec. 6.2), BOS ablation (Fig. 5c, 12), mean
attention-output ablation (Fig. 13), both per-position (the paper's) or at all positions
(``config.head_ablation``), direct feature attribution (Fig. 14) and natural induction
(Fig. 9, Fig. 11's natural panel), and its figures. ``commands/induction.py`` runs it and writes the run
directory.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from plotly.graph_objects import Figure

from confidence_neurons.analysis.activity import parse_neuron
from confidence_neurons.analysis.forward import forward_at, run_forward
from confidence_neurons.analysis.weights import default_k, null_space_rho
from confidence_neurons.data.corpus import CorpusError, sample_token_sequences
from confidence_neurons.errors import ConfigError
from confidence_neurons.figures import induction as F
from confidence_neurons.figures.activity import fig_loss_change_vs_initial
from confidence_neurons.figures.style import escape_text
from confidence_neurons.induction import heads as H
from confidence_neurons.induction import neurons as N
from confidence_neurons.induction.heads import HEAD_ABLATIONS, HeadAblation
from confidence_neurons.induction.neurons import Fig5bClip, NaturalAblation
from confidence_neurons.induction.sequences import (
    copy_offset,
    corrupt_first_copy,
    natural_induction,
    synthetic_induction,
)
from confidence_neurons.induction.two_pass import head_ablation_activations
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.studies.inputs import scan_table
from confidence_neurons.studies.options import KernelOptions, SourceOptions, option

log = logging.getLogger(__name__)


# App. D's sizes: 500 synthetic induction sequences, 100 for the head ablations and DFA, 1024
# repeated random-token sequences for prefix matching, 1000 natural sequences (BOS attention and
# natural induction alike).
PAPER_SIZES = {"n_seqs": 500, "n_ablation_seqs": 100, "n_prefix_seqs": 1024, "n_bos_seqs": 1000, "n_natural": 1000}


@dataclass(frozen=True, kw_only=True)
class InductionConfig(KernelOptions, SourceOptions):
    """Which neurons, and how much text for each step of the case study."""

    neurons: tuple[str, ...] = option((), "comma-separated final-layer neurons LAYER.INDEX (e.g. 29.830,29.1022)")
    scan_dir: str | None = option(
        None, "a finished scan run directory: study its entropy and token frequency neurons", flag="--scan"
    )
    half_len: int = option(100, "tokens per copy (paper: 100)", minimum=1)
    n_seqs: int = option(48, "synthetic sequences for the curves (paper: 500)", flag="--n-induction-seqs", minimum=1)
    n_random: int = option(
        10,
        "random final-layer neurons, each clipped on its own, as the baseline of Fig. 5b (paper App. H.2: 10)",
        minimum=0,
    )
    fig5b_clip: Fig5bClip = option(
        "authors",
        "Fig. 5b's clipping: authors (to the mean over the first half of the positions, BOS included; from "
        "below for neurons that fall in the second copy, as their case_studies/induction.py) or toolkit (every "
        "neuron from above to its first-copy mean)",
    )
    n_prefix_seqs: int = option(32, "repeated random-token sequences for prefix matching (paper: 1024)", minimum=1)
    n_bos_seqs: int = option(
        16,
        "plain-text windows of --natural-seq-len tokens for the mean BOS attention and the mean activation "
        "natural induction ablates to (paper: 1000)",
        minimum=1,
    )
    n_ablation_seqs: int = option(16, "sequences for BOS / mean-z ablation and DFA (paper: 100)", minimum=1)
    ablation_half_len: int = option(
        50,
        "tokens per copy of the BOS / mean-z ablation and DFA sequences, BOS + T + T (paper: 50; "
        "equal to --half-len: the first sequences of the curves, as before 2026-12)",
        minimum=2,
    )
    head_ablation: HeadAblation = option(
        "per-position",
        "where BOS / mean-z ablation acts: per-position (the paper's, Sec. 6.2: only at the query position "
        "read; exact, in two forwards per head set) or all-positions (every query position at once; the "
        "default before 2026-12)",
    )
    n_natural: int = option(32, "natural induction sequences (paper: 1000)", minimum=1)
    natural_seq_len: int = option(
        256, "tokens per natural induction sequence and per plain-text window (the authors': 256)", minimum=2
    )
    natural_ablation: NaturalAblation = option(
        "authors",
        "how natural induction (Fig. 9) ablates: authors (set to the neuron's mean over every position of plain "
        "text, unclipped, as their natural_induction_true.py) or toolkit (clip from above to the synthetic "
        "first copy's mean)",
    )
    ngram: int = option(6, "repeated n-gram length for natural induction (paper: 6)", minimum=1)
    paper_sizes: bool = option(
        False,
        "App. D's sizes: 500 synthetic, 100 ablation, 1024 prefix-matching and 1000 natural sequences; a size "
        "flag given with it wins unless it equals the scaled default",
    )
    k: int | None = option(
        None,
        "null-space size for rho in Fig. 11 (default: the paper's: 12 for GPT-2 Small, "
        "else floor(1%% of d_model), at least 1)",
    )

    def neuron_specs(self) -> list[tuple[str, str]]:
        return [(s, "neurons") for s in self.neurons]

    def sequence_lengths(self) -> dict[str, int]:
        return {  # BOS + two copies (curves, head ablations), and the natural windows
            "half_len": 2 * self.half_len + 1,
            "ablation_half_len": 2 * self.ablation_half_len + 1,
            "natural_seq_len": self.natural_seq_len,
        }

    def __post_init__(self) -> None:
        if self.paper_sizes:  # sizes still at the scaled default take the paper's
            defaults = {f.name: f.default for f in fields(self)}
            for name, value in PAPER_SIZES.items():
                if getattr(self, name) == defaults[name]:
                    object.__setattr__(self, name, value)
        super().__post_init__()
        if self.head_ablation not in HEAD_ABLATIONS:
            raise ConfigError(
                f"head_ablation must be one of {', '.join(HEAD_ABLATIONS)}, not {self.head_ablation!r}",
                field="head_ablation",
            )
        if not self.neurons and self.scan_dir is None:
            raise ConfigError(
                "name the neurons to study with --neurons L.I,L.J or give a finished scan with --scan RUN_DIR",
                field="neurons",
            )
        if self.natural_seq_len < 2 * self.ngram + 2:  # two occurrences, a gap and a predicted token after
            raise ConfigError(
                f"ngram = {self.ngram} needs natural sequences of at least {2 * self.ngram + 2} tokens "
                f"(--natural-seq-len is {self.natural_seq_len}); lower --ngram or raise --natural-seq-len",
                field="ngram",
            )


def chosen_neurons(config: InductionConfig, layer) -> tuple[list[int], dict[int, str]]:
    """Neuron indices and their family ("entropy", "token frequency" or "chosen"), checked against
    the layer (also that ``n_random`` other neurons exist for the baseline).
    """
    idx, family = _chosen_neurons(config, layer)
    if config.n_random > layer.d_mlp - len(idx):
        raise ConfigError(
            f"n_random = {config.n_random} random neurons cannot be drawn from the {layer.d_mlp - len(idx)} "
            "final-layer neurons not studied; lower --n-random",
            field="n_random",
        )
    return idx, family


def _chosen_neurons(config: InductionConfig, layer) -> tuple[list[int], dict[int, str]]:
    if config.neurons:
        idx = [parse_neuron(s, layer, field="neurons") for s in config.neurons]
        return idx, {i: "chosen" for i in idx}
    t = scan_table(config.scan_dir, layer)
    family = {int(i): "entropy" for i in t.loc[t["is_entropy_neuron"], "neuron"]}
    family |= {
        int(i): "token frequency" for i in t.loc[t["is_token_frequency_neuron"], "neuron"] if int(i) not in family
    }
    if not family:
        top = t.assign(s=t["TE"] * t["ln_share"].clip(lower=0)).nlargest(3, "s")["neuron"]
        log.warning("the scan flagged no neuron; studying its 3 strongest entropy-neuron candidates")
        family = {int(i): "candidate" for i in top}
    return sorted(family), family


@dataclass
class InductionResult:
    """Tables of the case study (by name, see docs/induction.md), the neurons studied (indices, names
    ``LAYER.INDEX`` and family), the heads chosen, the Fig. 5a curves, the direct feature
    attribution per neuron (component labels, induction minus corrupted), the prefix-matching and
    BOS-attention scores (n_layers, n_heads), step timings and the settings config.json records.
    """

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
    config: InductionConfig | None = None
    run_dir: Path | None = None

    def figures(self) -> dict:
        return induction_figures(self)

    def _repr_html_(self) -> str:
        summary = self.tables["clipped_summary"]
        sel = summary[summary["group"] == "selected"][["neuron", "rel_delta_entropy_pct", "delta_loss", "frac_clipped"]]
        return (
            f"<p><b>Induction case study on {html.escape(str(self.settings['model']))}</b>: induction heads "
            f"{', '.join(self.settings['induction_heads'])}</p>" + sel.to_html(index=False)
        )

    @classmethod
    def load(cls, rd) -> InductionResult:
        """The result a finished induction run wrote into the run directory ``rd``."""
        record = rd.read_config()
        settings, config = record["settings"], InductionConfig.from_dict(record["config"])
        tables = {name: rd.read_table(name) for name in rd.tables()}
        names = list(settings["neurons"])
        neurons = [int(n.split(".")[1]) for n in names]
        c = tables["curves"]
        curves = N.PositionCurves(
            positions=c["position"].to_numpy(),
            entropy_mean=c["entropy_mean"].to_numpy(),
            entropy_se=c["entropy_se"].to_numpy(),
            loss_mean=c["loss_mean"].to_numpy(),
            loss_se=c["loss_se"].to_numpy(),
            activation_mean=np.stack([c[f"act_{n}"].to_numpy() for n in names]),
            activation_se=np.stack([c[f"act_se_{n}"].to_numpy() for n in names]),
            neurons=neurons,
            n_seqs=config.n_seqs,
        )
        hs = tables["head_scores"]
        shape = (int(hs["layer"].max()) + 1, int(hs["head"].max()) + 1)
        dfa = {}
        if "dfa" in tables:
            labels = tables["dfa"]["component"].tolist()
            dfa = {n: (labels, tables["dfa"][n].to_numpy()) for n in names if n in tables["dfa"]}
        return cls(
            tables=tables,
            neurons=neurons,
            names=names,
            family={i: settings["neurons"][n] for i, n in zip(neurons, names)},
            induction_heads=[_parse_head(h) for h in settings["induction_heads"]],
            baseline_heads=[_parse_head(h) for h in settings["baseline_heads"]],
            curves=curves,
            half_len=config.half_len,
            dfa=dfa,
            prefix=hs["prefix_matching"].to_numpy().reshape(shape),
            bos=hs["bos_attention"].to_numpy().reshape(shape),
            timings=settings["timings_s"],
            settings=settings,
            config=config,
            run_dir=rd.path,
        )


def _parse_head(label: str) -> tuple[int, int]:
    """Parse a head label: L18H6 is layer 18, head 6."""
    layer, head = label[1:].split("H")
    return int(layer), int(head)


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


def _ablation_tables(
    model, tokens, neurons, names, families, batch_size, variant: H.HeadAblation
) -> list[pd.DataFrame]:
    """Mean activation per position of each neuron, clean and under each head set's ablation, one
    table per family of ablations.

    ``families``: (hooks_for, [(kind, heads), ...]) per family (BOS ablation, mean-z ablation), where
    ``hooks_for(heads)`` builds the ablation at every query position; ``variant`` "per-position" reads
    each position with the heads ablated there only (the paper's), "all-positions" with them ablated
    everywhere. Every family shares one clean pass per batch (``two_pass``).
    """
    sets = [(kind, heads, build) for build, family in families for kind, heads in family]
    clean, ablated = head_ablation_activations(
        model,
        tokens,
        neurons,
        [heads for _, heads, _ in sets],
        [build for _, _, build in sets],
        variant=variant,
        batch_size=batch_size,
    )

    def frame(kind, heads, acts) -> pd.DataFrame:  # acts: (n_neurons, seq_len)
        return pd.concat(
            [
                pd.DataFrame(
                    {
                        "neuron": name,
                        "head_set": _head_label(heads),
                        "kind": kind,
                        "position": np.arange(acts.shape[1]),
                        "activation": acts[k].numpy(),
                    }
                )
                for k, name in enumerate(names)
            ],
            ignore_index=True,
        )

    tables, i = [], 0
    for _, family in families:
        rows = [frame("clean", (), clean)]
        for kind, heads in family:
            rows.append(frame(kind, heads, ablated[i]))
            i += 1
        tables.append(pd.concat(rows, ignore_index=True))
    return tables


@torch.no_grad()
def induction(
    model: LoadedModel, config: InductionConfig, *, layer: FinalLayer | None = None, progress: bool = True
) -> InductionResult:
    """The case study on the chosen neurons, step by step (each step timed into ``settings``)."""
    layer = layer if layer is not None else final_layer(model)
    neurons, family = chosen_neurons(config, layer)
    names = [f"{layer.layer}.{i}" for i in neurons]
    T, timer, bos_id = config.half_len, _Timer(), model.bos_id

    def corpus_windows(n_seqs: int, seq_len: int, seed_offset: int, **kw) -> torch.Tensor:
        """Windows of the run's corpus as every step draws them (the config's text settings), seed + offset."""
        return sample_token_sequences(
            model.tokenizer,
            config.dataset,
            n_seqs=n_seqs,
            seq_len=seq_len,
            seed=config.seed + seed_offset,
            text_field=config.text_field,
            split=config.split,
            sampling=config.sampling,
            **kw,
        ).tokens

    tables: dict[str, pd.DataFrame] = {}

    with timer("synthetic sequences and forward pass"):
        tokens, source = synthetic_induction(
            model.tokenizer,
            config.dataset,
            n_seqs=config.n_seqs,
            half_len=T,
            bos_id=bos_id,
            seed=config.seed,
            text_field=config.text_field,
            split=config.split,
            sampling=config.sampling,
        )
        # the closed form is checked on the first batch; the others skip the model's unembedding
        cache = run_forward(model, layer, tokens, batch_size=config.batch_size, progress=progress, check="first batch")
        clean = N.clean_loss_entropy(layer, cache, backend=config.backend)
        curves = N.curves_from_cache(layer, cache, neurons, clean)
    with timer("clipped ablation (Fig. 5b)"):
        draws = (
            N.random_neuron_draws(layer.d_mlp, 1, config.n_random, exclude=neurons, seed=config.seed)
            if config.n_random
            else []
        )  # App. H.2: one draw of 10 random neurons, each clipped on its own
        clipped = N.clipped_ablation_curves(
            layer,
            cache,
            tuple(tokens.shape),
            neurons,
            half_len=T,
            random_neurons=draws,
            backend=config.backend,
            clip=config.fig5b_clip,
            clean_entropy=clean[1],
        )
        tables["clipped_per_position"] = clipped["per_position"]
        tables["clipped_summary"] = clipped["summary"]
        tables["second_copy_token_effects"] = N.second_copy_token_effects(
            layer,
            cache,
            tokens,
            neurons,
            half_len=T,
            threshold=clipped["threshold"],  # Fig. 5b's clipping (the authors': threshold and direction)
            from_below=clipped["from_below"],
            tokenizer=model.tokenizer,
            backend=config.backend,
        )
    with timer("activation change of every neuron (Fig. 11)"):
        change = N.activation_change(N.acts_by_position(cache), T)
        w_out_norm = layer.W_out.double().norm(dim=-1).numpy()  # (d_mlp,)
        rho = null_space_rho(layer, config.k or default_k(layer.d_model, config.model)).numpy()
        tables["activation_change"] = pd.DataFrame(
            {
                "neuron": np.arange(layer.d_mlp),
                "change": change,
                "w_out_norm": w_out_norm,  # Fig. 11 ranks by change x ||w_out||, as the authors' weighted_diff
                "rho": rho,
                "family": [family.get(i, "") for i in range(layer.d_mlp)],
            }
        )
    del cache
    with timer("head scores (Sec. 6.2)"):
        vocab_hi = min(len(model.tokenizer), layer.d_vocab)
        rep = H.repeated_random_tokens(
            config.n_prefix_seqs,
            T // 2,
            min(100, vocab_hi // 2),
            vocab_hi,
            bos_id=bos_id if bos_id is not None else 0,
            seed=config.seed,
        )
        prefix = H.prefix_matching_scores(model, rep, batch_size=config.batch_size)
        # plain text, as the authors' 256-token C4 windows: BOS attention, and the natural-induction mean
        plain = corpus_windows(config.n_bos_seqs, config.natural_seq_len, 1, bos_id=bos_id)
        bos, plain_mean = H.bos_attention_and_mean_activation(model, plain, batch_size=config.batch_size)
        ind_heads, base_heads = H.choose_heads(prefix, bos, seed=config.seed)
        nl, nh = prefix.shape
        tables["head_scores"] = pd.DataFrame(
            {
                "layer": np.repeat(np.arange(nl), nh),
                "head": np.tile(np.arange(nh), nl),
                "prefix_matching": prefix.flatten().numpy(),
                "bos_attention": bos.flatten().numpy(),
            }
        )
    sets = [("induction", s) for s in H.head_combinations(ind_heads)]
    sets += [("baseline", s) for s in H.baseline_combinations(base_heads, seed=config.seed)]
    with timer("BOS and mean attention-output ablation (Fig. 5c, 12, 13)"):
        TA = config.ablation_half_len
        if TA == T:
            abl_tokens = tokens[: config.n_ablation_seqs]
        else:  # App. D: BOS + 50 + 50 corpus tokens, drawn like the curves' sequences
            abl_tokens, _ = synthetic_induction(
                model.tokenizer,
                config.dataset,
                n_seqs=config.n_ablation_seqs,
                half_len=TA,
                bos_id=bos_id,
                seed=config.seed,
                text_field=config.text_field,
                split=config.split,
            )
        abl_start2 = copy_offset(abl_tokens.shape[1], TA) + TA
        mean_z = H.mean_z_over(model, abl_tokens, ind_heads, slice(abl_start2, None), batch_size=config.batch_size)
        zsets = [("induction", s) for s in H.head_combinations(ind_heads)]
        tables["bos_ablation"], tables["mean_z_ablation"] = _ablation_tables(
            model,
            abl_tokens,
            neurons,
            names,
            [(H.bos_ablation_hooks, sets), (lambda hs: H.mean_z_ablation_hooks(hs, mean_z), zsets)],
            config.batch_size,
            config.head_ablation,
        )
    dfa: dict[str, tuple[list[str], np.ndarray]] = {}
    with timer("direct feature attribution (Fig. 14)"):
        other = corpus_windows(abl_tokens.shape[0], TA, 2, prepend_bos=False)
        corrupted = corrupt_first_copy(abl_tokens, other)
        try:
            labels, ind = H.direct_feature_attributions(model, abl_tokens, neurons, batch_size=config.batch_size)
            _, cor = H.direct_feature_attributions(model, corrupted, neurons, batch_size=config.batch_size)
            for k, name in enumerate(names):  # ind, cor: (n_neurons, n_components, seq_len)
                dfa[name] = (labels, (ind[k][:, abl_start2:].mean(1) - cor[k][:, abl_start2:].mean(1)).numpy())
            if dfa:
                tables["dfa"] = (
                    pd.DataFrame({name: v for name, (_, v) in dfa.items()}, index=labels)
                    .rename_axis("component")
                    .reset_index()
                )
        except ValueError as exc:
            log.warning("direct feature attribution skipped: %s", exc)
    with timer("natural induction (Fig. 9)"):
        try:
            nat_tokens, repeats, nat_source = natural_induction(
                model.tokenizer,
                config.dataset,
                n_seqs=config.n_natural,
                seq_len=config.natural_seq_len,
                n=config.ngram,
                bos_id=bos_id,
                seed=config.seed,
                text_field=config.text_field,
                split=config.split,
                sampling=config.sampling,
            )
            # only the positions of the repeats are read: each batch is cut after its last one
            rows = N.repeat_rows(repeats, n=config.ngram, seq_len=nat_tokens.shape[1])
            nat_cache = forward_at(model, layer, nat_tokens, rows, batch_size=config.batch_size)
            # authors: the mean over every position of plain text (the head scores' windows)
            reference = plain_mean if config.natural_ablation == "authors" else clipped["first_copy_mean"]
            tables["natural_effects"] = N.natural_induction_effects(
                layer,
                nat_cache,
                repeats,
                neurons,
                ablation=config.natural_ablation,
                reference_mean=reference,
                n=config.ngram,
                backend=config.backend,
                tokens=nat_tokens,
                tokenizer=model.tokenizer,
            )
            tables["natural_activation_change"] = pd.DataFrame(
                {
                    "neuron": np.arange(layer.d_mlp),
                    "change": N.natural_activation_change(nat_cache, repeats, n=config.ngram),
                    "w_out_norm": layer.W_out.double().norm(dim=-1).numpy(),
                }
            )
        except CorpusError as exc:
            log.warning("natural induction skipped: %s", exc)
            nat_source = {"skipped": str(exc)}
    tables["curves"] = pd.DataFrame(
        {
            "position": curves.positions,
            "entropy_mean": curves.entropy_mean,
            "entropy_se": curves.entropy_se,
            "loss_mean": curves.loss_mean,
            "loss_se": curves.loss_se,
            **{f"act_{n}": curves.activation_mean[k] for k, n in enumerate(names)},
            **{f"act_se_{n}": curves.activation_se[k] for k, n in enumerate(names)},
        }
    )
    settings = {
        "model": model.name,
        "placement": model.placement_record(),
        "neurons": {n: family[i] for i, n in zip(neurons, names)},
        "induction_heads": [_head_label([h]) for h in ind_heads],
        "baseline_heads": [_head_label([h]) for h in base_heads],
        "head_ablation": config.head_ablation,
        "natural_ablation": config.natural_ablation,
        "fig5b_clip": config.fig5b_clip,
        "random_neurons": [f"{layer.layer}.{i}" for d in draws for i in d],
        "random_seed": config.seed,
        "synthetic": {k: v for k, v in source.items() if k != "corpus"},
        "natural": nat_source,
        "plain_text": (
            "n_bos_seqs windows of natural_seq_len tokens (seed + 1): the mean BOS attention and the mean "
            "activation natural induction ablates to"
        ),
        "sizes": {
            k: getattr(config, k)
            for k in (
                "half_len",
                "n_seqs",
                "n_prefix_seqs",
                "n_bos_seqs",
                "n_ablation_seqs",
                "ablation_half_len",
                "n_natural",
                "natural_seq_len",
                "ngram",
            )
        },
        # App. D's sizes this run did not use (the defaults are scaled down to run on two CPU cores)
        "smaller_than_paper": {
            k: f"{getattr(config, k)} (App. D: {v}; --paper-sizes for App. D's)"
            for k, v in PAPER_SIZES.items()
            if getattr(config, k) < v
        },
        "timings_s": timer.timings,
    }
    return InductionResult(
        tables=tables,
        neurons=neurons,
        names=names,
        family=family,
        induction_heads=ind_heads,
        baseline_heads=base_heads,
        curves=curves,
        half_len=T,
        dfa=dfa,
        prefix=prefix.numpy(),
        bos=bos.numpy(),
        timings=timer.timings,
        settings=settings,
        config=config,
    )


HEAD_ABLATION_TEXT = {
    "per-position": "heads ablated only at the position read (the paper's)",
    "all-positions": "heads ablated at every position at once",
}


def ablation_half_len(result: InductionResult) -> int:
    """Tokens per copy of the head-ablation and DFA sequences (runs from before the option: half_len)."""
    return int(result.settings["sizes"].get("ablation_half_len", result.half_len))


def head_ablation_variant(result: InductionResult) -> str:
    """Which head-ablation variant the run used (runs from before the option: all-positions)."""
    return str(result.settings.get("head_ablation", "all-positions"))


def _fig11_y(table: pd.DataFrame) -> np.ndarray:
    """Fig. 11's y: the activation change times ||w_out|| (the authors' weighted_diff) where the table has it."""
    y = table["change"].to_numpy()
    return y * table["w_out_norm"].to_numpy() if "w_out_norm" in table.columns else y


def induction_figures(result: InductionResult) -> dict[str, Figure]:
    """Every figure of the case study, by file stem."""
    natural = str(result.settings.get("natural_ablation", "toolkit"))  # runs before the option clipped
    variant = HEAD_ABLATION_TEXT[head_ablation_variant(result)]
    bos_kind = f"BOS ablation, {variant}"
    z_kind = f"Mean attention-output ablation, {variant}"
    summary = result.tables["clipped_summary"]
    T, TA, names = result.half_len, ablation_half_len(result), result.names
    index_names = dict(zip(result.neurons, names))
    change = result.tables["activation_change"]
    w = "w_out_norm" in change.columns  # runs before the authors' weighting hold the raw change only
    is_flagged = change["family"].isin(["entropy", "chosen", "candidate"]).to_numpy()
    prefix_by_label = {
        F.head_label((l, h)): float(result.prefix[l, h])
        for l in range(result.prefix.shape[0])
        for h in range(result.prefix.shape[1])
    }
    kind = "frequency" if set(result.family.values()) == {"token frequency"} else "entropy"  # Fig. 10a/b vs 5a/b
    figs: dict[str, object] = {
        "fig5a_induction_curves": F.fig_induction_curves(result.curves, names, T, kind=kind),
        "fig5b_clipped_ablation": F.fig_clipped_ablation(
            result.tables["clipped_per_position"], summary, T, names=index_names, kind=kind
        ),
        "fig5b_clipped_summary": F.fig_clipped_summary(summary, names=index_names, kind=kind),
        "fig11_activation_change": F.fig_activation_change(
            _fig11_y(change), change["rho"].to_numpy(), is_flagged, [f"{n}" for n in change["neuron"]], weighted=w
        ),
        "head_scores": F.fig_head_scores(result.prefix, result.bos, result.induction_heads, result.baseline_heads),
        "fig12_bos_ablation_summary": F.fig_head_ablation_summary(
            result.tables["bos_ablation"], names, TA, title_kind=f"{bos_kind} (Fig. 12 analogue)"
        ),
        "fig13_mean_z_ablation_summary": F.fig_head_ablation_summary(
            result.tables["mean_z_ablation"], names, TA, title_kind=f"{z_kind} (Fig. 13 analogue)"
        ),
    }
    if "natural_activation_change" in result.tables:  # Fig. 11, natural-text panel (App. H.3)
        nat = result.tables["natural_activation_change"].merge(change[["neuron", "rho", "family"]], on="neuron")
        figs["fig11_natural_activation_change"] = F.fig_activation_change(
            _fig11_y(nat),
            nat["rho"].to_numpy(),
            nat["family"].isin(["entropy", "chosen", "candidate"]).to_numpy(),
            [f"{n}" for n in nat["neuron"]],
            setting="natural",
            weighted="w_out_norm" in nat.columns,
        )
    token_effects = result.tables["second_copy_token_effects"]
    for i, name in zip(result.neurons, names):
        slug = name.replace(".", "_")
        fig = fig_loss_change_vs_initial(token_effects[token_effects["neuron"] == i], name)
        fig.update_layout(
            title_text=f"Fig. 10c analogue: change of loss on clipping {escape_text(name)} in the second copy "
            "vs initial loss"
        )
        figs[f"fig10c_second_copy_loss_{slug}"] = fig
        figs[f"fig5c_bos_ablation_{slug}"] = F.fig_head_ablation(
            result.tables["bos_ablation"], name, TA, title_kind=f"{bos_kind} (Fig. 5c analogue)"
        )
        figs[f"fig13_mean_z_ablation_{slug}"] = F.fig_head_ablation(
            result.tables["mean_z_ablation"], name, TA, title_kind=f"{z_kind} (Fig. 13 analogue)"
        )
        if "natural_effects" in result.tables:
            figs[f"fig9c_natural_loss_{slug}"] = F.fig_natural_loss_change(
                result.tables["natural_effects"], i, name, ablation=natural
            )
        if name in result.dfa:
            labels, diff = result.dfa[name]
            figs[f"fig14_dfa_{slug}"] = F.fig_dfa(labels, np.asarray(diff), prefix_by_label, name)
    if "natural_effects" in result.tables:
        figs["fig9a_natural_activation"] = F.fig_natural_induction(result.tables["natural_effects"], names)
        figs["fig9b_natural_entropy"] = F.fig_natural_induction_entropy(
            result.tables["natural_effects"], names, ablation=natural
        )
    return figs
