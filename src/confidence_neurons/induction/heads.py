"""Induction heads and how they reach a final-layer neuron (Sec. 6.2, App. I, App. D).

Heads are found by Olsson et al.'s prefix-matching score on repeated random tokens; baselines are
heads that rest on BOS just as much but do no prefix matching. Three interventions follow:
BOS ablation (App. I.1: the head attends only to position 0), mean attention-output ablation
(App. I.2: the head's z vectors are replaced by their mean over the second copy) and direct
feature attribution (App. I.3: each component's write into the residual, read through the last
block's ln2 and the neuron's input weights).

Two ablation variants. "all-positions" ablates the head at every query position in one forward.
"per-position" is the authors' (Sec. 6.2, App. I): the head is ablated only at the query position q
whose activation is read. In a causal model, a change at q reaches only positions >= q, so the
activation at q under the per-position ablation needs the clean positions < q and q ablated, which
an all-positions forward does not give (there positions < q are ablated too and feed q through
attention). ``neuron_activations_per_position`` computes it exactly and batched: each row of a
batch is one (sequence, q) pair, ablated at q only, cut after q (later tokens cannot reach q).

Every hook returns a new tensor (in-place edits are not seen on some TransformerBridge paths).
A head is ``(layer, head)``; a head set is a tuple of heads. Hooks take ``positions``: None for
every query position, or a (batch,) tensor giving each row's single ablated query position.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel

log = logging.getLogger(__name__)

Head = tuple[int, int]
HeadSet = tuple[Head, ...]
Hook = tuple[str, Callable]
HeadAblation = Literal["per-position", "all-positions"]
HEAD_ABLATIONS: tuple[HeadAblation, ...] = ("per-position", "all-positions")


def _device(model: LoadedModel) -> torch.device:
    return next(model.bridge.parameters()).device


def _batches(tokens: Tensor, batch_size: int) -> Iterator[Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
    for b0 in range(0, tokens.shape[0], batch_size):
        yield tokens[b0 : b0 + batch_size]


class _StopForward(Exception):
    """Raised once the last hook a computation reads has fired: the rest of the forward is not needed."""


def _run_until(model: LoadedModel, tokens: Tensor, hooks: Sequence[Hook], last: str) -> None:
    """Forward ``tokens`` with ``hooks``, stopped once hook point ``last`` has fired (after its hooks)."""

    def stop(act: Tensor, hook) -> None:
        raise _StopForward

    try:
        model.bridge.run_with_hooks(tokens.to(_device(model)), fwd_hooks=[*hooks, (last, stop)])
    except _StopForward:
        pass


def repeated_random_tokens(
    n_seqs: int, half_len: int, vocab_lo: int, vocab_hi: int, *, bos_id: int, seed: int = 0
) -> Int[Tensor, "n_seqs seq_len"]:
    """(n_seqs, 1 + 2 half_len): BOS, then R, then R again, R uniform in [vocab_lo, vocab_hi) (App. D)."""
    if half_len < 2 or vocab_hi <= vocab_lo:
        raise ValueError(f"need half_len >= 2 and vocab_hi > vocab_lo (got {half_len}, [{vocab_lo}, {vocab_hi}))")
    gen = torch.Generator().manual_seed(seed)
    body = torch.randint(vocab_lo, vocab_hi, (n_seqs, half_len), generator=gen)
    return torch.cat([torch.full((n_seqs, 1), int(bos_id), dtype=torch.long), body, body], dim=1)


@torch.no_grad()
def _mean_pattern_stat(
    model: LoadedModel,
    tokens: Tensor,
    stat: Callable[[Tensor], Tensor],
    batch_size: int,
    extra: Sequence[Hook] = (),
    last: str | None = None,
) -> Float[Tensor, "n_layers n_heads"]:
    """Mean over sequences of ``stat(pattern)`` -> (batch, head), for every layer, one forward per
    batch, stopped after the last pattern (or after hook point ``last``, with ``extra`` hooks run too).
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)

    def record(layer: int) -> Callable:
        def hook(pattern: Tensor, hook) -> None:  # (batch, head, q, k)
            total[layer] += stat(pattern.float()).sum(0).double().cpu()

        return hook

    hooks = [(f"blocks.{l}.attn.hook_pattern", record(l)) for l in range(n_layers)]
    for batch in _batches(tokens, batch_size):
        _run_until(model, batch, [*hooks, *extra], last or hooks[-1][0])
    return (total / tokens.shape[0]).float()


def prefix_matching_scores(
    model: LoadedModel, tokens_rep: Int[Tensor, "n_seqs seq_len"], *, batch_size: int = 16
) -> Float[Tensor, "n_layers n_heads"]:
    """Olsson et al.'s prefix-matching score on ``repeated_random_tokens`` (seq_len = 1 + 2T).

    Query i in the second copy (i = T+1 .. 2T) holds the token seen earlier at i - T; the score is
    its attention to the token after that occurrence, key i - T + 1, averaged over the T queries
    and the sequences.
    """
    seq_len = tokens_rep.shape[1]
    half = (seq_len - 1) // 2
    if seq_len != 1 + 2 * half or half < 2 or not torch.equal(tokens_rep[:, 1 : 1 + half], tokens_rep[:, 1 + half :]):
        raise ValueError(
            "tokens_rep must be BOS + R + R (see repeated_random_tokens), "
            f"got shape {tuple(tokens_rep.shape)} without two equal halves"
        )
    queries = torch.arange(half + 1, 2 * half + 1)

    def stat(pattern: Tensor) -> Tensor:
        return pattern[:, :, queries, queries - half + 1].mean(-1)  # (batch, head)

    return _mean_pattern_stat(model, tokens_rep, stat, batch_size)


def mean_bos_attention(
    model: LoadedModel, tokens: Int[Tensor, "n_seqs seq_len"], *, batch_size: int = 16
) -> Float[Tensor, "n_layers n_heads"]:
    """Mean attention to position 0 (BOS) over query positions >= 1 and sequences (App. D: C4 text)."""
    if tokens.shape[1] < 2:
        raise ValueError("mean_bos_attention needs sequences of at least 2 tokens")
    return _mean_pattern_stat(model, tokens, lambda p: p[:, :, 1:, 0].mean(-1), batch_size)


def bos_attention_and_mean_activation(
    model: LoadedModel, tokens: Int[Tensor, "n_seqs seq_len"], *, batch_size: int = 16
) -> tuple[Float[Tensor, "n_layers n_heads"], Float[Tensor, " d_mlp"]]:
    """One pass over plain text for two of the case study's references: ``mean_bos_attention`` of
    every head (Sec. 6.2's baseline criterion) and each final-layer neuron's mean activation over
    every position, BOS and the last included (the authors' ``mean_activation_on_normal_text``, the
    value natural induction ablates to). The authors read both off 256-token C4 windows through
    ``get_entropy_activation_df``; each forward stops after the final MLP.
    """
    if tokens.shape[1] < 2:
        raise ValueError("bos_attention_and_mean_activation needs sequences of at least 2 tokens")
    act_hook = final_layer(model).act_hook
    total: list[Tensor] = []

    def add(acts: Tensor, hook) -> None:  # (batch, pos, d_mlp)
        total.append(acts.double().sum((0, 1)).cpu())

    bos = _mean_pattern_stat(
        model, tokens, lambda p: p[:, :, 1:, 0].mean(-1), batch_size, extra=[(act_hook, add)], last=act_hook
    )
    return bos, (torch.stack(total).sum(0) / tokens.numel()).float()


def choose_heads(
    prefix: Float[Tensor, "n_layers n_heads"],
    bos: Float[Tensor, "n_layers n_heads"],
    *,
    n_induction: int = 3,
    n_baseline: int = 6,
    min_bos: float = 0.6,
    max_prefix: float = 0.1,
    baseline_layers: Sequence[int] | None = None,
    seed: int = 0,
) -> tuple[list[Head], list[Head]]:
    """Sec. 6.2: the ``n_induction`` heads of highest prefix score (best first), and ``n_baseline``
    heads drawn at random (with ``seed``) among those with bos > ``min_bos`` and prefix < ``max_prefix``
    in ``baseline_layers`` (default: the induction heads' layers, as the paper's layers 5 and 6).

    Too few qualifying heads there: the search widens to all layers (logged); still too few: all
    qualifying heads are returned (logged). Baselines are sorted by (layer, head).
    """
    if prefix.shape != bos.shape or prefix.ndim != 2:
        raise ValueError(f"prefix {tuple(prefix.shape)} and bos {tuple(bos.shape)} must both be (n_layers, n_heads)")
    n_layers, n_heads = prefix.shape
    if not 1 <= n_induction <= prefix.numel():
        raise ValueError(f"n_induction must be between 1 and {prefix.numel()} (got {n_induction})")
    order = prefix.flatten().argsort(descending=True, stable=True)[:n_induction]
    induction = [(int(i) // n_heads, int(i) % n_heads) for i in order]
    layers = sorted({l for l, _ in induction}) if baseline_layers is None else sorted(set(baseline_layers))

    def qualifying(allowed: Sequence[int]) -> list[Head]:
        return [
            (l, h)
            for l in allowed
            for h in range(n_heads)
            if bos[l, h] > min_bos and prefix[l, h] < max_prefix and (l, h) not in induction
        ]

    pool = qualifying(layers)
    if len(pool) < n_baseline:
        wider = qualifying(range(n_layers))
        log.warning(
            "%s of layers %s %s BOS attention > %g and prefix score < %g, fewer than the %d baseline heads "
            "requested; widening the search to all layers (%s there)",
            _n_heads(len(pool)).capitalize(),
            layers,
            "meets" if len(pool) == 1 else "meet",
            min_bos,
            max_prefix,
            n_baseline,
            _n_heads(len(wider)),
        )
        pool = wider
    if len(pool) < n_baseline:
        log.warning("%s", _few_baselines(len(pool), n_baseline, min_bos, max_prefix))
    baseline = sorted(random.Random(seed).sample(pool, min(n_baseline, len(pool))))
    return induction, baseline


def _n_heads(n: int) -> str:
    return "no head" if n == 0 else ("1 head" if n == 1 else f"{n} heads")


def _few_baselines(found: int, wanted: int, min_bos: float, max_prefix: float) -> str:
    """The warning when fewer heads than asked meet the baseline criteria, in words that fit the count."""
    criteria = f"BOS attention > {min_bos:g} and prefix score < {max_prefix:g}"
    if found == 0:
        return f"no head has {criteria}, so there are no baseline heads (of the {wanted} requested)"
    heads = "head meets" if found == 1 else "heads meet"
    using = "it" if found == 1 else "all of them"
    return f"only {found} {heads} {criteria}, fewer than the {wanted} baseline heads requested; using {using}"


def head_combinations(heads: Sequence[Head], max_size: int = 3) -> list[HeadSet]:
    """Every set of 1 .. ``max_size`` heads: singles, then pairs, then triples (3 heads -> 7 sets)."""
    heads = [tuple(h) for h in heads]
    return [c for k in range(1, max_size + 1) for c in itertools.combinations(heads, k)]


def baseline_combinations(
    heads: Sequence[Head], seed: int = 0, *, n_pairs: int = 3, n_triples: int = 3
) -> list[HeadSet]:
    """App. D: every baseline head alone, plus ``n_pairs`` random pairs and ``n_triples`` random triples
    (distinct sets, drawn with ``seed``; fewer when fewer exist).
    """
    rng = random.Random(seed)
    heads = [tuple(h) for h in heads]
    out: list[HeadSet] = [(h,) for h in heads]
    for k, n in ((2, n_pairs), (3, n_triples)):
        sets = list(itertools.combinations(heads, k))
        out += rng.sample(sets, min(n, len(sets)))
    return out


def _by_layer(heads: Sequence[Head]) -> dict[int, list[int]]:
    layers: dict[int, list[int]] = defaultdict(list)
    for l, h in heads:
        layers[int(l)].append(int(h))
    return layers


def _row_positions(positions: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """The (batch,) query positions of a per-position hook on this batch, checked; None for all."""
    if positions is None:
        return None
    if positions.shape != (batch,):
        raise ValueError(f"per-position hooks got {tuple(positions.shape)} positions for a batch of {batch} rows")
    return positions.to(device)


def bos_ablation_hooks(heads: Sequence[Head], positions: Tensor | None = None) -> list[Hook]:
    """fwd_hooks that make each head's attention pattern one-hot on key 0 (App. I.1), one per layer.

    ``positions`` None: at every query position; a (batch,) tensor: row b only at query ``positions[b]``.
    """

    def make(head_idx: list[int]) -> Callable:
        def hook(pattern: Tensor, hook) -> Tensor:  # (batch, head, q, k)
            out = pattern.clone()
            rows = _row_positions(positions, pattern.shape[0], pattern.device)
            if rows is None:
                onehot = torch.zeros_like(pattern[:, :1])
                onehot[..., 0] = 1.0
                out[:, head_idx] = onehot
            else:
                onehot = torch.zeros(pattern.shape[-1], dtype=pattern.dtype, device=pattern.device)
                onehot[0] = 1.0
                b = torch.arange(pattern.shape[0], device=pattern.device)[:, None]
                h = torch.as_tensor(head_idx, device=pattern.device)[None, :]
                out[b, h, rows[:, None]] = onehot  # (batch, n_heads_ablated, k)
            return out

        return hook

    return [(f"blocks.{l}.attn.hook_pattern", make(hs)) for l, hs in sorted(_by_layer(heads).items())]


@contextmanager
def bos_ablation(model: LoadedModel, heads: Sequence[Head]) -> Iterator[LoadedModel]:
    """While active, every forward of ``model`` BOS-ablates ``heads``; the hooks go in ``finally``.

    Only the hooks added here are removed (hooks the caller attached are left alone); capture
    hooks added inside the block (e.g. by ``run_with_cache``) run after the ablation.
    """
    with model.bridge.hooks(fwd_hooks=bos_ablation_hooks(heads)):
        yield model


def mean_z_ablation_hooks(
    heads: Sequence[Head], mean_z: dict[Head, Float[Tensor, " d_head"]], positions: slice | Tensor | None = None
) -> list[Hook]:
    """fwd_hooks that replace each head's z (attention output before W_O) by ``mean_z[head]`` at
    ``positions`` (App. I.2, footnote 11): None for all positions, a slice for those positions of
    every row, a (batch,) tensor for one position per row (row b at ``positions[b]``).
    """
    missing = [h for h in heads if tuple(h) not in mean_z]
    if missing:
        raise ValueError(f"no mean z given for heads {missing}")
    per_row = isinstance(positions, Tensor)
    where = slice(None) if positions is None else positions

    def make(layer: int, head_idx: list[int]) -> Callable:
        def hook(z: Tensor, hook) -> Tensor:  # (batch, pos, head, d_head)
            out = z.clone()
            rows = _row_positions(positions, z.shape[0], z.device) if per_row else None
            b = torch.arange(z.shape[0], device=z.device)
            for h in head_idx:
                value = mean_z[(layer, h)].to(z.device, z.dtype)
                if rows is None:
                    out[:, where, h] = value
                else:
                    out[b, rows, h] = value
            return out

        return hook

    return [(f"blocks.{l}.attn.hook_z", make(l, hs)) for l, hs in sorted(_by_layer(heads).items())]


@torch.no_grad()
def mean_z_over(
    model: LoadedModel,
    tokens: Int[Tensor, "n_seqs seq_len"],
    heads: Sequence[Head],
    positions: slice,
    *,
    batch_size: int = 16,
) -> dict[Head, Float[Tensor, " d_head"]]:
    """Mean z of each head over ``positions`` and sequences (App. I.2: over the second copy)."""
    layers = _by_layer(heads)
    sums: dict[Head, Tensor] = {}
    count = 0

    def record(layer: int) -> Callable:
        def hook(z: Tensor, hook) -> None:  # (batch, pos, head, d_head)
            for h in layers[layer]:
                s = z[:, positions, h].double().sum((0, 1)).cpu()
                sums[(layer, h)] = sums[(layer, h)] + s if (layer, h) in sums else s

        return hook

    hooks = [(f"blocks.{l}.attn.hook_z", record(l)) for l in sorted(layers)]
    for batch in _batches(tokens, batch_size):
        _run_until(model, batch, hooks, hooks[-1][0])
        count += batch[:, positions].numel()
    if count == 0:
        raise ValueError(f"positions {positions} select no token of sequences of length {tokens.shape[1]}")
    return {tuple(h): (sums[tuple(h)] / count).float() for h in heads}


@torch.no_grad()
def neuron_activations_under(
    model: LoadedModel,
    tokens: Int[Tensor, "n_seqs seq_len"],
    neurons: Sequence[int],
    hooks: Sequence[Hook],
    *,
    batch_size: int = 16,
) -> Float[Tensor, "n_neurons seq_len"]:
    """Mean activation over sequences of final-layer ``neurons`` at each position, under ``hooks``
    (e.g. ``bos_ablation_hooks(head_set)``; [] for clean). One forward per batch.
    """
    act_hook = final_layer(model).act_hook
    idx = torch.as_tensor(list(neurons), dtype=torch.long)
    total = torch.zeros(len(idx), tokens.shape[1], dtype=torch.float64)

    def capture(acts: Tensor, hook) -> None:  # (batch, pos, d_mlp)
        total.add_(acts[..., idx.to(acts.device)].double().sum(0).T.cpu())

    for batch in _batches(tokens, batch_size):
        model.bridge.run_with_hooks(batch.to(_device(model)), fwd_hooks=[*hooks, (act_hook, capture)])
    return (total / tokens.shape[0]).float()


@torch.no_grad()
def neuron_activations_per_position(
    model: LoadedModel,
    tokens: Int[Tensor, "n_seqs seq_len"],
    neurons: Sequence[int],
    hooks_at: Callable[[Tensor], Sequence[Hook]],
    *,
    batch_size: int = 16,
) -> Float[Tensor, "n_neurons seq_len"]:
    """Like ``neuron_activations_under``, with the ablation at the read position only (Sec. 6.2's
    per-position variant): the value at position q is the activation at q when the hooks ablate
    query position q alone, averaged over sequences.

    ``hooks_at(positions)`` gives the hooks for a batch whose row b ablates query ``positions[b]``
    (e.g. ``lambda pos: bos_ablation_hooks(heads, pos)``). Exact and batched: every (sequence, q)
    pair is one row, holding tokens 0..q of its sequence (a causal model's activation at q does not
    see later tokens), ablated at q; rows are sorted by q so each batch is cut after its largest q.
    Costs seq_len times the rows of one all-positions pass, about half as many tokens.
    """
    n_seqs, seq_len = tokens.shape
    act_hook = final_layer(model).act_hook
    idx = torch.as_tensor(list(neurons), dtype=torch.long)
    total = torch.zeros(len(idx), seq_len, dtype=torch.float64)
    pairs = torch.cartesian_prod(torch.arange(seq_len), torch.arange(n_seqs))  # (seq_len * n_seqs, 2): (q, seq)
    device = _device(model)
    for chunk in _batches(pairs, batch_size):
        q, seq = chunk[:, 0], chunk[:, 1]
        rows = tokens[seq, : int(q.max()) + 1]  # (batch, max q + 1)
        read: dict[str, Tensor] = {}

        def capture(acts: Tensor, hook) -> None:  # (batch, pos, d_mlp)
            b = torch.arange(acts.shape[0], device=acts.device)
            read["acts"] = acts[b, q.to(acts.device)][:, idx.to(acts.device)].double().cpu()  # (batch, n_neurons)

        model.bridge.run_with_hooks(rows.to(device), fwd_hooks=[*hooks_at(q), (act_hook, capture)])
        total.index_add_(1, q, read["acts"].T)
    return (total / n_seqs).float()


def direct_feature_attribution(
    model: LoadedModel, tokens: Int[Tensor, "n_seqs seq_len"], neuron: int, *, batch_size: int = 16
) -> tuple[list[str], Float[Tensor, "n_components seq_len"]]:
    """App. I.3 for one neuron: ``direct_feature_attributions`` of ``[neuron]``."""
    labels, dfa = direct_feature_attributions(model, tokens, [neuron], batch_size=batch_size)
    return labels, dfa[0]


@torch.no_grad()
def direct_feature_attributions(
    model: LoadedModel, tokens: Int[Tensor, "n_seqs seq_len"], neurons: Sequence[int], *, batch_size: int = 16
) -> tuple[list[str], Float[Tensor, "n_neurons n_components seq_len"]]:
    """App. I.3: direct contribution of each component to the PRE-activation of final-layer ``neurons``.

    The input of the last block's ln2 is a sum of writes: "embed" (token embedding, with any
    embedding scale), "pos_embed" (learned positions only), each head "L{l}H{h}" (z_h W_O[l, h]),
    each earlier MLP "mlp{l}" (with its output bias) and, unless attention and MLP run in parallel,
    the last block's heads too. A write c contributes center(c) / s . w with s the clean ln2 scale
    (frozen; Phi's single ln1 where there is no ln2) and w the neuron's folded input weights
    W_in[L][:, neuron]; "bias" collects the attention output biases b_O read the same way, plus
    b_in[L][neuron]. The rows sum to the pre-activation ``blocks.L.mlp.hook_pre``. For gated MLPs
    (LLaMA, Gemma) hook_pre is the gate's pre-activation, so w is the gate's input weights
    W_gate[L][:, neuron] and the gate has no bias.

    Returns the labels and a (n_neurons, n_components, seq_len) tensor: each component's
    contribution at each position, averaged over sequences. One forward per batch serves every
    neuron, stopped at the final MLP's input.
    """
    bridge, cfg = model.bridge, model.cfg
    L, n_heads = cfg.n_layers - 1, cfg.n_heads
    if getattr(cfg, "use_normalization_before_and_after", False):
        raise ValueError(f"{model.name} normalises block outputs before the residual; direct attribution is not linear")
    gated = bool(getattr(cfg, "gated_mlp", False))
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    attn_layers = range(L if parallel else L + 1)
    device = _device(model)
    idx = torch.as_tensor(list(neurons), dtype=torch.long)
    W_O = bridge.W_O.detach().float()  # (layer, head, d_head, d_model)
    w = (bridge.W_gate if gated else bridge.W_in)[L][:, idx].detach().float().to(device)  # (d_model, n_neurons)
    if cfg.normalization_type.startswith("LN"):
        w = w - w.mean(0)  # center(c) . w == c . center(w)
    b_mlp = None if gated else bridge.blocks[L].mlp.b_in
    b_in = torch.zeros(len(idx)) if b_mlp is None else b_mlp[idx].detach().float().cpu()  # (n_neurons,)
    b_O = torch.stack(
        [
            torch.zeros(cfg.d_model, device=device)
            if bridge.blocks[l].attn.b_O is None
            else bridge.blocks[l].attn.b_O.detach().float().to(device)
            for l in attn_layers
        ]
    )
    head_w = torch.einsum("lhdm,mn->lhdn", W_O[list(attn_layers)].to(device), w)  # (layer, head, d_head, n)
    norm = "ln2" if f"blocks.{L}.ln2.hook_scale" in bridge.hook_dict else "ln1"  # Phi: one norm feeds both
    scale_hook = f"blocks.{L}.{norm}.hook_scale"
    has_pos = "hook_pos_embed" in bridge.hook_dict and cfg.positional_embedding_type == "standard"

    labels = ["embed"] + (["pos_embed"] if has_pos else [])
    labels += [f"L{l}H{h}" for l in attn_layers for h in range(n_heads)] + [f"mlp{l}" for l in range(L)] + ["bias"]
    total = torch.zeros(len(idx), len(labels), tokens.shape[1], dtype=torch.float64)
    names = ["blocks.0.hook_resid_pre", scale_hook] + (["hook_pos_embed"] if has_pos else [])
    names += [f"blocks.{l}.attn.hook_z" for l in attn_layers] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    for batch in _batches(tokens, batch_size):
        cache: dict[str, Tensor] = {}

        def keep(name: str) -> Hook:
            def hook(act: Tensor, hook) -> None:
                cache[name] = act

            return (name, hook)

        # blocks.L.mlp.hook_pre fires after every write read here and the ln2 scale
        _run_until(model, batch, list(map(keep, names)), f"blocks.{L}.mlp.hook_pre")
        scale = cache[scale_hook].float()  # (batch, pos, 1)
        resid0 = cache["blocks.0.hook_resid_pre"].float()  # (batch, pos, d_model)
        if has_pos:
            pos = cache["hook_pos_embed"].float()
            rows = [(resid0 - pos) @ w, pos @ w]  # each (batch, pos, n)
        else:
            rows = [resid0 @ w]
        for i, l in enumerate(attn_layers):
            z = cache[f"blocks.{l}.attn.hook_z"].float()  # (batch, pos, head, d_head)
            rows += list(torch.einsum("bphd,hdn->hbpn", z, head_w[i]))
        rows += [cache[f"blocks.{l}.hook_mlp_out"].float() @ w for l in range(L)]
        rows.append((b_O.sum(0) @ w).expand(*scale.shape[:2], len(idx)))
        contrib = torch.stack(rows) / scale[None]  # (component, batch, pos, n)
        total += contrib.double().sum(1).permute(2, 0, 1).cpu()
    total[:, -1] += b_in[:, None].double() * tokens.shape[0]
    return labels, (total / tokens.shape[0]).float()
