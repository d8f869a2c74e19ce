"""The induction case study of Sec. 6 and Appendices H and I as one computation.

Steps (each timed): synthetic induction curves (Fig. 5a), clipped ablation in the second copy
against random neurons (Fig. 5b), the change of every final-layer neuron (Fig. 11), prefix-matching
and BOS-attention scores of every head (Sec. 6.2), BOS ablation (Fig. 5c, 12), mean
attention-output ablation (Fig. 13), both per-position (the paper's) or at all positions
(``config.head_ablation``), direct feature attribution (Fig. 14) and natural induction
(Fig. 9, Fig. 11's natural panel). ``commands/induction.py`` runs it and writes the run directory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from confidence_neurons.analysis.activity import parse_neuron
from confidence_neurons.analysis.forward import run_forward
from confidence_neurons.analysis.weights import default_k, weight_stats
from confidence_neurons.data.corpus import CorpusError, sample_token_sequences
from confidence_neurons.errors import ConfigError
from confidence_neurons.induction import heads as H
from confidence_neurons.induction import neurons as N
from confidence_neurons.induction.sequences import (
    copy_offset,
    corrupt_first_copy,
    natural_induction,
    synthetic_induction,
)
from confidence_neurons.induction.two_pass import head_ablation_activations
from confidence_neurons.models.final_layer import FinalLayer, final_layer
from confidence_neurons.models.loading import LoadedModel

if TYPE_CHECKING:
    from confidence_neurons.commands.induction import InductionConfig

log = logging.getLogger(__name__)


def scan_table(scan_dir: str) -> pd.DataFrame:
    """The neuron table of a finished scan, or a ConfigError naming ``--scan``."""
    table_path = Path(scan_dir) / "neurons.parquet"
    if not table_path.is_file():
        raise ConfigError(
            f"{scan_dir} holds no finished scan (no neurons.parquet); run `confidence-neurons scan` first",
            field="scan_dir",
        )
    return pd.read_parquet(table_path)


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
    t = scan_table(config.scan_dir)
    if int(t["layer"].iloc[0]) != layer.layer or len(t) != layer.d_mlp:
        raise ConfigError(
            f"the scan in {config.scan_dir} was made on another model (layer {t['layer'].iloc[0]}, {len(t)} neurons)",
            field="scan_dir",
        )
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
    """Tables of the case study (by name, see the README), the neurons studied (indices, names
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
        from confidence_neurons.report.induction import induction_figures

        return induction_figures(self)

    def _repr_html_(self) -> str:
        summary = self.tables["clipped_summary"]
        sel = summary[summary["group"] == "selected"][["neuron", "rel_delta_entropy_pct", "delta_loss", "frac_clipped"]]
        return (
            f"<p><b>Induction case study on {self.settings['model']}</b>: induction heads "
            f"{', '.join(self.settings['induction_heads'])}</p>" + sel.to_html(index=False)
        )

    @classmethod
    def load(cls, rd) -> InductionResult:
        """The result a finished induction run wrote into the run directory ``rd``."""
        from confidence_neurons.commands.induction import InductionConfig

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


def _ablation_table(
    model, tokens, neurons, names, sets, hooks_for, batch_size, variant: H.HeadAblation
) -> pd.DataFrame:
    """Mean activation per position of each neuron, clean and under each head set's ablation.

    ``hooks_for(heads)`` builds the ablation at every query position; ``variant`` "per-position"
    reads each position with the heads ablated there only (the paper's), "all-positions" with them
    ablated everywhere. Both in one clean pass and one pass per head set per batch (``two_pass``).
    """
    clean, ablated = head_ablation_activations(
        model, tokens, neurons, [heads for _, heads in sets], hooks_for, variant=variant, batch_size=batch_size
    )
    rows = []
    for (kind, heads), acts in zip([("clean", ())] + sets, [clean, *ablated]):
        for k, name in enumerate(names):  # acts: (n_neurons, seq_len)
            rows.append(
                pd.DataFrame(
                    {
                        "neuron": name,
                        "head_set": _head_label(heads),
                        "kind": kind,
                        "position": np.arange(acts.shape[1]),
                        "activation": acts[k].numpy(),
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


@torch.no_grad()
def induction(
    model: LoadedModel, config: InductionConfig, *, layer: FinalLayer | None = None, progress: bool = True
) -> InductionResult:
    """The case study on the chosen neurons, step by step (each step timed into ``settings``)."""
    layer = layer if layer is not None else final_layer(model)
    neurons, family = chosen_neurons(config, layer)
    names = [f"{layer.layer}.{i}" for i in neurons]
    T, timer, bos_id = config.half_len, _Timer(), model.bos_id
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
        )
        cache = run_forward(model, layer, tokens, batch_size=config.batch_size, progress=progress)
        curves = N.curves_from_cache(layer, cache, neurons)
    with timer("clipped ablation (Fig. 5b)"):
        draws = (
            N.random_neuron_draws(layer.d_mlp, 1, config.n_random, exclude=neurons, seed=config.seed)
            if config.n_random
            else []
        )  # App. H.2: one draw of 10 random neurons, each clipped on its own
        clipped = N.clipped_ablation_curves(
            layer, cache, tuple(tokens.shape), neurons, half_len=T, random_neurons=draws, backend=config.backend
        )
        tables["clipped_per_position"] = clipped["per_position"]
        tables["clipped_summary"] = clipped["summary"]
        tables["second_copy_token_effects"] = N.second_copy_token_effects(
            layer,
            cache,
            tokens,
            neurons,
            half_len=T,
            threshold=clipped["first_copy_mean"],
            tokenizer=model.tokenizer,
            backend=config.backend,
        )
    with timer("activation change of every neuron (Fig. 11)"):
        change = N.activation_change(N.acts_by_position(cache), T)
        rho = weight_stats(layer, config.k or default_k(layer.d_model, config.model)).rho.numpy()
        tables["activation_change"] = pd.DataFrame(
            {
                "neuron": np.arange(layer.d_mlp),
                "change": change,
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
        natural = sample_token_sequences(
            model.tokenizer,
            config.dataset,
            n_seqs=config.n_bos_seqs,
            seq_len=T + 1,
            seed=config.seed + 1,
            bos_id=bos_id,
            text_field=config.text_field,
            split=config.split,
        ).tokens
        bos = H.mean_bos_attention(model, natural, batch_size=config.batch_size)
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
    with timer("BOS ablation (Fig. 5c, 12)"):
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
        tables["bos_ablation"] = _ablation_table(
            model, abl_tokens, neurons, names, sets, H.bos_ablation_hooks, config.batch_size, config.head_ablation
        )
    with timer("mean attention-output ablation (Fig. 13)"):
        mean_z = H.mean_z_over(model, abl_tokens, ind_heads, slice(abl_start2, None), batch_size=config.batch_size)
        zsets = [("induction", s) for s in H.head_combinations(ind_heads)]
        tables["mean_z_ablation"] = _ablation_table(
            model,
            abl_tokens,
            neurons,
            names,
            zsets,
            lambda hs: H.mean_z_ablation_hooks(hs, mean_z),
            config.batch_size,
            config.head_ablation,
        )
    dfa: dict[str, tuple[list[str], np.ndarray]] = {}
    with timer("direct feature attribution (Fig. 14)"):
        other = sample_token_sequences(
            model.tokenizer,
            config.dataset,
            n_seqs=abl_tokens.shape[0],
            seq_len=TA,
            seed=config.seed + 2,
            prepend_bos=False,
            text_field=config.text_field,
            split=config.split,
        ).tokens
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
            )
            nat_cache = run_forward(model, layer, nat_tokens, batch_size=config.batch_size, progress=progress)
            tables["natural_effects"] = N.natural_induction_effects(
                layer,
                nat_cache,
                repeats,
                neurons,
                reference_mean=clipped["first_copy_mean"],
                n=config.ngram,
                backend=config.backend,
                tokens=nat_tokens,
                tokenizer=model.tokenizer,
            )
            tables["natural_activation_change"] = pd.DataFrame(
                {
                    "neuron": np.arange(layer.d_mlp),
                    "change": N.natural_activation_change(nat_cache, repeats, n=config.ngram),
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
        "random_neurons": [f"{layer.layer}.{i}" for d in draws for i in d],
        "random_seed": config.seed,
        "synthetic": {k: v for k, v in source.items() if k != "corpus"},
        "natural": nat_source,
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
