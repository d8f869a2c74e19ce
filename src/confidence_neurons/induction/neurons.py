"""Final-layer neurons during induction (Sec. 6.1, Fig. 5a/b; App. H.1, Fig. 9; App. H.3, Fig. 11).

Everything works on a ``ForwardCache`` of one clean forward pass: positions are flattened as
(sequence, position), N = n_seqs * P with P = seq_len - 1, and position p is the activation at
token p, which predicts token p + 1 (the last token has no prediction and is not cached).
Clipped ablation of a final-layer neuron at position p changes only that position's logits, so
the closed form of ``per_token_effects`` (total effect, TE) on the chosen positions is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from confidence_neurons.analysis.activity import clean_ranks
from confidence_neurons.analysis.effects import clean_stats, per_token_effects
from confidence_neurons.analysis.forward import ForwardCache, run_forward
from confidence_neurons.analysis.kernel import Backend
from confidence_neurons.induction.sequences import copy_offset
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel

#: How natural induction ablates (App. H.1): ``authors`` sets the activation to the neuron's mean on
#: plain text, unclipped (their case_studies/natural_induction_true.py: ``neurons_no_clipping_hook`` with
#: ``mean_activation_on_normal_text``); ``toolkit`` clips it from above to a reference mean (Sec. 5's
#: clipping, footnote 7), by default the first copy's mean of the synthetic sequences.
NaturalAblation = Literal["authors", "toolkit"]
#: Fig. 5b's clipping (case_studies/induction.py): ``authors`` clips to the mean over the first half of
#: the positions (``pos < pos.max() / 2``: BOS included), from above for a neuron whose activation rises
#: in the second half and from below for one that falls (``strict_neurons_clipped_ablation_hook``, by the
#: sign of its W_out-weighted change); ``toolkit`` clips every neuron from above to its first-copy mean.
Fig5bClip = Literal["authors", "toolkit"]


@dataclass
class PositionCurves:
    """Fig. 5a: per-position mean and standard error over sequences of the clean forward pass.

    positions: (P,) token index p, predicting token p + 1; activation_mean / activation_se:
    (n_neurons, P), rows in the order of ``neurons``; entropy_mean / entropy_se / loss_mean /
    loss_se: (P,) in nats. SE is the sample standard deviation (ddof=1) over sequences / sqrt(n_seqs),
    NaN with a single sequence.
    """

    positions: np.ndarray
    activation_mean: np.ndarray
    activation_se: np.ndarray
    entropy_mean: np.ndarray
    entropy_se: np.ndarray
    loss_mean: np.ndarray
    loss_se: np.ndarray
    neurons: list[int]
    n_seqs: int


def acts_by_position(cache: ForwardCache) -> Float[Tensor, "n_seqs P d_mlp"]:
    """The cached activations as (n_seqs, P, d_mlp)."""
    return cache.acts.reshape(-1, cache.seq_len - 1, cache.acts.shape[-1])


def _mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over axis 0 (sequences)."""
    mean = x.mean(0)
    if x.shape[0] < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, x.std(0, ddof=1) / np.sqrt(x.shape[0])


@torch.no_grad()
def clean_loss_entropy(
    layer: FinalLayer, cache: ForwardCache, *, token_chunk: int = 256, backend: Backend = "auto"
) -> tuple[Float[Tensor, " N"], Float[Tensor, " N"]]:
    """Clean per-token loss and entropy (nats) through the same kernel as the ablations."""
    losses, entropies = [], []
    for t0 in range(0, cache.n_tokens, token_chunk):
        x = cache.resid[t0 : t0 + token_chunk]
        base = clean_stats(
            layer.center(x) @ layer.W_U, layer.scale(x), layer, cache.target[t0 : t0 + token_chunk], backend
        )
        losses.append(base.loss)
        entropies.append(base.entropy)
    return torch.cat(losses), torch.cat(entropies)


def curves_from_cache(
    layer: FinalLayer, cache: ForwardCache, neurons: list[int], clean: tuple[Tensor, Tensor] | None = None
) -> PositionCurves:
    """Fig. 5a from an existing cache (reuse it for ``clipped_ablation_curves``); ``clean``: its
    ``clean_loss_entropy``, when the caller has it already.
    """
    P = cache.seq_len - 1
    acts = acts_by_position(cache)[..., list(neurons)].double().numpy()  # (n_seqs, P, K)
    clean = clean if clean is not None else clean_loss_entropy(layer, cache)
    loss, entropy = (t.double().numpy().reshape(-1, P) for t in clean)
    act_mean, act_se = _mean_se(acts)
    ent_mean, ent_se = _mean_se(entropy)
    loss_mean, loss_se = _mean_se(loss)
    return PositionCurves(
        positions=np.arange(P),
        activation_mean=act_mean.T,
        activation_se=act_se.T,
        entropy_mean=ent_mean,
        entropy_se=ent_se,
        loss_mean=loss_mean,
        loss_se=loss_se,
        neurons=[int(i) for i in neurons],
        n_seqs=acts.shape[0],
    )


def position_curves(
    model: LoadedModel,
    layer: FinalLayer,
    tokens: Int[Tensor, "n_seqs seq_len"],
    neurons: list[int],
    *,
    batch_size: int = 8,
) -> PositionCurves:
    """Fig. 5a (and Fig. 10a): neuron activations, entropy and loss by position over duplicated sequences."""
    cache = run_forward(model, layer, tokens, batch_size=batch_size, progress=False)
    return curves_from_cache(layer, cache, neurons)


def _row_index(cache: ForwardCache, flat: Tensor) -> Tensor:
    """Where the flattened positions ``flat`` are among the cache's rows (a cache of some rows only,
    ``forward_at``, holds them in ``rows``); a position it does not hold is an error.
    """
    if cache.rows is None:
        return flat
    at = torch.searchsorted(cache.rows, flat).clamp(max=len(cache.rows) - 1)
    if not torch.equal(cache.rows[at], flat):
        raise ValueError("the cache does not hold every position asked for; run forward_at on these rows")
    return at


def _sub_cache(cache: ForwardCache, flat: Tensor) -> ForwardCache:
    """The cache restricted to the flattened positions ``flat`` (per-token effects are local): every
    per-token tensor field (resid, acts, target, mlp_out, ...) is indexed, the rest kept.
    """
    flat = _row_index(cache, flat)
    per_token = {
        f.name: v[flat]
        for f in fields(cache)
        if isinstance(v := getattr(cache, f.name), Tensor) and v.shape[:1] == (cache.n_tokens,)
    }
    return replace(cache, **per_token)


def _copy_labels(P: int, offset: int, half_len: int) -> np.ndarray:
    labels = np.full(P, "second", dtype=object)
    labels[: offset + half_len] = "first"
    labels[:offset] = "bos"
    return labels


def clipped_ablation_curves(
    layer: FinalLayer,
    cache: ForwardCache,
    tokens_shape: tuple[int, int],
    neurons: list[int],
    *,
    half_len: int,
    random_neurons: list[list[int]] | None = None,
    token_chunk: int = 256,
    backend: Backend = "auto",
    clip: Fig5bClip = "authors",
    clean_entropy: Float[Tensor, " N"] | None = None,
) -> dict:
    """Fig. 5b (and Fig. 10b): clip each neuron, in the second copy only, to a first-copy threshold.

    ``clip`` (``Fig5bClip``) "toolkit": the threshold is the neuron's mean activation over all
    first-copy positions of all sequences, clipped from above. "authors": the mean over the cached
    positions p < (seq_len - 1) / 2 (BOS included), clipped from above where the mean over the
    positions after them is not lower, else from below. Only positions of the second copy are
    ablated, so the change is exactly 0 at BOS and in the first copy. Each neuron is ablated on its
    own (TE, ablated - clean); each neuron of each ``random_neurons`` draw too, as the baseline. Returns
    ``per_position``: one row per (group, draw, neuron, position) with mean and SE over sequences
    of activation, clean entropy, delta_entropy and delta_loss, and
    rel_delta_entropy_pct = 100 * mean delta_entropy / mean clean entropy at that position;
    ``summary``: one row per (group, draw, neuron) over the second copy, with the threshold, the
    share of clipped tokens, mean delta_entropy / delta_loss (SE over per-sequence means),
    rel_delta_entropy_pct = 100 * sum delta_entropy / sum clean entropy, and the per-position
    extremes of rel_delta_entropy_pct; ``clean_entropy`` (N,): the cache's clean entropy when the caller
    has it (``clean_loss_entropy``); ``first_copy_mean``: the first copy's mean (d_mlp,);
    ``threshold`` (d_mlp,) and ``from_below`` (d_mlp,) bool: the clipping used.
    """
    if clip not in ("authors", "toolkit"):
        raise ValueError(f"unknown Fig. 5b clipping {clip!r}: authors or toolkit")
    n_seqs, seq_len = tokens_shape
    P = seq_len - 1
    if cache.seq_len != seq_len or cache.n_tokens != n_seqs * P:
        raise ValueError(
            f"the cache holds {cache.n_tokens} positions of sequences of {cache.seq_len} tokens, "
            f"not {n_seqs} x {seq_len}; pass the shape of the tokens it was run on"
        )
    offset = copy_offset(seq_len, half_len)
    start2 = offset + half_len
    acts = acts_by_position(cache)  # (n_seqs, P, d_mlp)
    first_mean = acts[:, offset:start2].mean((0, 1))  # (d_mlp,)
    if clip == "authors":
        half = torch.arange(P) < (seq_len - 1) / 2  # their entropy_df.pos < entropy_df.pos.max() / 2
        threshold = acts[:, half].mean((0, 1))
        from_below = acts[:, ~half].mean((0, 1)) < threshold  # falls: the sign of their weighted_diff
    else:
        threshold, from_below = first_mean, torch.zeros(first_mean.shape, dtype=torch.bool)
    draws = [list(map(int, d)) for d in (random_neurons or [])]
    roles = [("selected", None, int(i)) for i in neurons] + [
        ("random", d, i) for d, draw in enumerate(draws) for i in draw
    ]
    unique = sorted({i for _, _, i in roles})
    col = {i: k for k, i in enumerate(unique)}

    flat = (torch.arange(n_seqs)[:, None] * P + torch.arange(start2, P)[None, :]).reshape(-1)
    sub = _sub_cache(cache, flat)
    P2 = P - start2
    d_ent = np.zeros((n_seqs, P, len(unique)))
    d_loss = np.zeros((n_seqs, P, len(unique)))
    eff = per_token_effects(  # each neuron clipped its own way, all in one pass over the second copy
        layer,
        sub,
        unique,
        mode="clip",
        mean_act=threshold,
        token_chunk=token_chunk,
        backend=backend,
        te_only=True,
        below=[bool(from_below[i]) for i in unique],
    )
    d_ent[:, start2:] = (eff.TE.entropy - eff.entropy[:, None]).double().numpy().reshape(n_seqs, P2, -1)
    d_loss[:, start2:] = (eff.TE.loss - eff.loss[:, None]).double().numpy().reshape(n_seqs, P2, -1)
    if clean_entropy is None:
        clean_entropy = clean_loss_entropy(layer, cache, token_chunk=token_chunk, backend=backend)[1]
    entropy = clean_entropy.double().numpy().reshape(n_seqs, P)
    ent_mean, ent_se = _mean_se(entropy)
    act_np = acts[..., unique].double().numpy()  # (n_seqs, P, K)
    labels = _copy_labels(P, offset, half_len)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_pos = 100 * d_ent.mean(0) / ent_mean[:, None]  # (P, K)
    rel_pos[:start2] = 0.0

    frames, summary = [], []
    for group, draw, i in roles:
        k = col[i]
        a_mean, a_se = _mean_se(act_np[..., k])
        de_mean, de_se = _mean_se(d_ent[..., k])
        dl_mean, dl_se = _mean_se(d_loss[..., k])
        frames.append(
            pd.DataFrame(
                {
                    "group": group,
                    "draw": draw,
                    "neuron": i,
                    "position": np.arange(P),
                    "copy": labels,
                    "activation_mean": a_mean,
                    "activation_se": a_se,
                    "entropy_mean": ent_mean,
                    "entropy_se": ent_se,
                    "delta_entropy_mean": de_mean,
                    "delta_entropy_se": de_se,
                    "delta_loss_mean": dl_mean,
                    "delta_loss_se": dl_se,
                    "rel_delta_entropy_pct": rel_pos[:, k],
                }
            )
        )
        second = act_np[:, start2:, k]
        seq_de, seq_dl = _mean_se(d_ent[:, start2:, k].mean(1)), _mean_se(d_loss[:, start2:, k].mean(1))
        summary.append(
            {
                "group": group,
                "draw": draw,
                "neuron": i,
                "clip": clip,
                "clip_threshold": float(threshold[i]),
                "clip_from": "below" if bool(from_below[i]) else "above",
                "activation_first": float(act_np[:, offset:start2, k].mean()),
                "activation_second": float(second.mean()),
                "frac_clipped": float(
                    ((second < float(threshold[i])) if bool(from_below[i]) else (second > float(threshold[i]))).mean()
                ),
                "delta_entropy": float(seq_de[0]),
                "delta_entropy_se": float(seq_de[1]),
                "delta_loss": float(seq_dl[0]),
                "delta_loss_se": float(seq_dl[1]),
                "rel_delta_entropy_pct": float(100 * d_ent[:, start2:, k].sum() / entropy[:, start2:].sum()),
                "min_rel_delta_entropy_pct": float(rel_pos[start2:, k].min()),
                "max_rel_delta_entropy_pct": float(rel_pos[start2:, k].max()),
            }
        )
    per_position = pd.concat(frames, ignore_index=True)
    per_position["draw"] = per_position["draw"].astype("Int64")
    summary_df = pd.DataFrame(summary)
    summary_df["draw"] = summary_df["draw"].astype("Int64")
    return {
        "per_position": per_position,
        "summary": summary_df,
        "first_copy_mean": first_mean,
        "threshold": threshold,
        "from_below": from_below,
    }


def random_neuron_draws(
    d_mlp: int, n_draws: int, size: int, *, exclude: list[int] = (), seed: int = 0
) -> list[list[int]]:
    """Baseline draws for Fig. 5b / 10b: ``n_draws`` sets of ``size`` final-layer neurons, none in ``exclude``."""
    pool = np.setdiff1d(np.arange(d_mlp), np.asarray(list(exclude), dtype=np.int64))
    if size > len(pool):
        raise ValueError(f"cannot draw {size} random neurons from the {len(pool)} that are not excluded")
    rng = np.random.default_rng(seed)
    return [sorted(int(i) for i in rng.choice(pool, size=size, replace=False)) for _ in range(n_draws)]


def activation_change(cache_acts: Float[Tensor, "n_seqs P d_mlp"], half_len: int) -> np.ndarray:
    """Fig. 11 (synthetic): mean activation over the second copy minus over the first copy, (d_mlp,).

    P = seq_len - 1 positions (the last token is not cached), so the second copy contributes
    half_len - 1 positions; a BOS position (P = 2 half_len) is in neither copy.
    """
    offset = copy_offset(cache_acts.shape[1] + 1, half_len)
    start2 = offset + half_len
    acts = cache_acts.double()
    return (acts[:, start2:].mean((0, 1)) - acts[:, offset:start2].mean((0, 1))).numpy()


def _repeat_positions(repeats: list[tuple[int, int]], n: int, P: int) -> list[tuple[int, str, str, int, int]]:
    """(seq, occurrence, label, offset, position) for A0..A{n-1} and B / X of every repeat (Fig. 9)."""
    rows = []
    for s, (first, second) in enumerate(repeats):
        if second < first + n or second + n > P - 1:
            raise ValueError(
                f"repeat {(first, second)} of sequence {s} overlaps itself or leaves no predicted "
                f"position after its second occurrence (P = {P}); use find_repeated_ngrams' output"
            )
        for occurrence, start, after in (("first", first, "B"), ("second", second, "X")):
            rows += [(s, occurrence, f"A{k}" if k < n else after, k, start + k) for k in range(n + 1)]
    return rows


@torch.no_grad()
def plain_text_mean(
    model: LoadedModel, layer: FinalLayer, tokens: Int[Tensor, "n_seqs seq_len"], *, batch_size: int = 8
) -> Float[Tensor, " d_mlp"]:
    """Each final-layer neuron's mean activation over every position of ``tokens`` (BOS and the last
    position included), as the authors' ``mean_activation_on_normal_text`` averages their token table.
    """
    total = torch.zeros(layer.d_mlp, dtype=torch.float64)
    dev = getattr(model.cfg, "device", None) or "cpu"
    for b in range(0, tokens.shape[0], batch_size):
        batch = tokens[b : b + batch_size].to(dev)
        _, cache = model.bridge.run_with_cache(batch, names_filter=lambda name: name == layer.act_hook)
        total += cache[layer.act_hook].double().sum((0, 1)).cpu()  # (d_mlp,)
        del cache
    return (total / tokens.numel()).float()


def repeat_rows(repeats: list[tuple[int, int]], *, n: int, seq_len: int) -> Tensor:
    """The flat positions (seq * (seq_len - 1) + pos, sorted) that Fig. 9 and 11 read of each repeat:
    ``forward_at``'s rows for ``natural_induction_effects`` and ``natural_activation_change``.
    """
    P = seq_len - 1
    return torch.tensor(sorted({s * P + p for s, _, _, _, p in _repeat_positions(repeats, n, P)}))


def natural_activation_change(cache: ForwardCache, repeats: list[tuple[int, int]], *, n: int = 6) -> np.ndarray:
    """Fig. 11 (natural): mean activation over the second occurrence (A0..A{n-1}, X) minus over the
    first (A0..A{n-1}, B), per final-layer neuron, (d_mlp,).
    """
    P = cache.seq_len - 1
    rows = _repeat_positions(repeats, n, P)
    flat = {
        occ: _row_index(cache, torch.tensor([s * P + p for s, o, _, _, p in rows if o == occ]))
        for occ in ("first", "second")
    }
    acts = cache.acts.double()
    return (acts[flat["second"]].mean(0) - acts[flat["first"]].mean(0)).numpy()


def natural_induction_effects(
    layer: FinalLayer,
    cache: ForwardCache,
    repeats: list[tuple[int, int]],
    neurons: list[int],
    *,
    reference_mean: Float[Tensor, " d_mlp"],
    n: int = 6,
    token_chunk: int = 256,
    backend: Backend = "auto",
    tokens: Int[Tensor, "n_seqs seq_len"] | None = None,
    tokenizer=None,
    ablation: NaturalAblation = "authors",
) -> pd.DataFrame:
    """App. H.1, Fig. 9a-c: activations and ablation effects at the positions of each repeat.

    One row per (seq, neuron, occurrence, label): labels A0..A{n-1} are the n-gram's positions,
    B / X the position after the first / second occurrence. Each neuron is set to
    ``reference_mean`` (its mean on non-repeated text, chosen by the caller: the authors take it over
    every position of plain text) at these positions (``ablation`` "authors"; the authors ablate every
    position, but a final-layer neuron changes only its own position's logits, so the effects here
    are theirs) or clipped to it (``toolkit``: only where it is above); columns: activation, clipped
    (ablated at all: every row under ``authors``), entropy, loss (clean, nats), delta_entropy, delta_loss
    (TE, ablated - clean) and reciprocal_rank of the correct token (Fig. 9c colour). With the
    ``tokens`` the cache was run on: token_id (input at the position) and target_id (the token it
    predicts); with a ``tokenizer`` too, their text as token and target (Fig. 9c hover labels).
    """
    P = cache.seq_len - 1
    if cache.rows is None and cache.n_tokens != len(repeats) * P:
        raise ValueError(
            f"the cache holds {cache.n_tokens // P} sequences but {len(repeats)} repeats were given; "
            f"pass one (first_start, second_start) per sequence"
        )
    if reference_mean.shape != (layer.d_mlp,):
        raise ValueError(f"reference_mean must have shape ({layer.d_mlp},), got {tuple(reference_mean.shape)}")
    if ablation not in ("authors", "toolkit"):
        raise ValueError(f"unknown natural induction ablation {ablation!r}: authors or toolkit")
    rows = _repeat_positions(repeats, n, P)
    flat = torch.tensor([s * P + p for s, _, _, _, p in rows])
    sub = _sub_cache(cache, flat)
    eff = per_token_effects(
        layer,
        sub,
        list(neurons),
        mode="mean" if ablation == "authors" else "clip",
        mean_act=reference_mean.float(),
        token_chunk=token_chunk,
        backend=backend,
        te_only=True,
    )
    rank = clean_ranks(layer, sub, chunk=token_chunk)
    meta = pd.DataFrame(rows, columns=["seq", "occurrence", "label", "offset", "position"])
    if tokens is not None:
        if tokens.shape != (len(repeats), cache.seq_len):
            raise ValueError(f"tokens {tuple(tokens.shape)} are not the {len(repeats)} x {cache.seq_len} run")
        seq, pos = torch.tensor(meta["seq"].to_numpy()), torch.tensor(meta["position"].to_numpy())
        meta["token_id"] = tokens[seq, pos].numpy()
        meta["target_id"] = tokens[seq, pos + 1].numpy()
        if tokenizer is not None:
            text = {int(i): tokenizer.decode([int(i)]) for i in np.unique(meta[["token_id", "target_id"]])}
            meta["token"] = meta["token_id"].map(text)
            meta["target"] = meta["target_id"].map(text)
    frames = []
    for k, i in enumerate(neurons):
        act = sub.acts[:, i]
        frames.append(
            meta.assign(
                neuron=int(i),
                activation=act.numpy(),
                reference_mean=float(reference_mean[i]),
                clipped=(act > reference_mean[i]).numpy() if ablation == "toolkit" else np.ones(len(act), bool),
                entropy=eff.entropy.numpy(),
                loss=eff.loss.numpy(),
                delta_entropy=(eff.TE.entropy[:, k] - eff.entropy).numpy(),
                delta_loss=(eff.TE.loss[:, k] - eff.loss).numpy(),
                reciprocal_rank=(1.0 / rank).numpy(),
            )
        )
    return pd.concat(frames, ignore_index=True)


def second_copy_token_effects(
    layer: FinalLayer,
    cache: ForwardCache,
    tokens: Int[Tensor, "n_seqs seq_len"],
    neurons: list[int],
    *,
    half_len: int,
    threshold: Float[Tensor, " d_mlp"],
    tokenizer,
    backend: Backend = "auto",
    from_below: Bool[Tensor, " d_mlp"] | None = None,
) -> pd.DataFrame:
    """Fig. 10c: per token of the second copy, the change of loss on clipping each neuron to
    ``threshold`` against the initial loss, with the correct token's reciprocal rank. The clipping is
    Fig. 5b's (``clipped_ablation_curves``' ``threshold`` and ``from_below``: from above, or from below
    where ``from_below``; None: every neuron from above). One row per (neuron, token), in the columns
    of ``figures.activity``; ``clip_from`` says which way each neuron was clipped.
    """
    n_seqs, seq_len = tokens.shape
    P, start2 = seq_len - 1, copy_offset(seq_len, half_len) + half_len
    flat = (torch.arange(n_seqs)[:, None] * P + torch.arange(start2, P)[None, :]).reshape(-1)
    sub = _sub_cache(cache, flat)
    below = torch.zeros(layer.d_mlp, dtype=torch.bool) if from_below is None else from_below
    rr = (1.0 / clean_ranks(layer, sub).double()).numpy()
    decode = lambda ids: [tokenizer.decode([int(i)]) for i in ids]  # noqa: E731
    seq, pos = np.divmod(flat.numpy(), P)
    flags = [bool(below[i]) for i in neurons]
    eff = per_token_effects(
        layer, sub, list(neurons), mode="clip", mean_act=threshold, backend=backend, te_only=True, below=flags
    )
    base = pd.DataFrame(
        {
            "seq": seq,
            "pos": pos,
            "token": decode(tokens[seq, pos]),
            "target": decode(sub.target),
            "initial_loss": eff.loss.numpy(),
            "reciprocal_rank": rr,
        }
    )
    frames = []
    for k, (i, way) in enumerate(zip(neurons, flags)):
        act = sub.acts[:, i]
        frames.append(
            base.assign(
                neuron=int(i),
                activation=act.numpy(),
                clip_from="below" if way else "above",
                clipped=((act < threshold[i]) if way else (act > threshold[i])).numpy(),
                delta_loss=(eff.TE.loss[:, k] - eff.loss).numpy(),
                delta_entropy=(eff.TE.entropy[:, k] - eff.entropy).numpy(),
            )
        )
    return pd.concat(frames, ignore_index=True)
