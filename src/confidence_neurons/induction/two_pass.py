"""Per-position head ablation in two forwards instead of seq_len (Sec. 6.2, App. I; issue 18).

The authors ablate a head set only at the query position q whose neuron activation they read
(``bos_ablate_attn_heads`` / ``mean_ablate_attn_heads`` in their utils.py). The identity that makes
this cheap: let l0 be the lowest layer of the head set.

1. Ablating at q alone changes nothing at positions j < q (the model is causal), so every layer's
   keys and values at j < q are the clean ones.
2. Up to layer l0 position q is clean too; from l0 on, its residual is the "ablated at q" one,
   and so are its own query, key and value in every later layer.
3. Hence one "mixed" forward gives every q at once: from l0 on, each position q is ablated (its own
   query position), and in every layer after l0 its query attends to the CLEAN keys and values of
   j < q and to its OWN (ablated) key and value at j = q.

In hooks, per layer l > l0 (k^c, v^c cached from the clean forward of the same batch):
- the last hook that carries K (hook_rot_k, else hook_k) returns k^c, and hook_v returns v^c, so
  every off-diagonal score and value is the clean one;
- hook_attn_scores puts back the diagonal score f(q^a_q . k^a_q), f = the layer's scale and soft-cap
  (rotary rotates q_q and k_q by the same angle, so the dot product is the same before rotation);
- hook_z adds p_qq (v^a_q - v^c_q), p_qq the diagonal of the final pattern.
The diagonal transform f is checked against the clean forward's own scores in every call.

One clean pass per batch serves every head set; each ablated pass starts at l0 from the cached
clean residual (``start_at_layer``) and stops once the final MLP's ``hook_post`` has run (no final
norm, no unembedding). TransformerBridge's ``start_at_layer`` still runs blocks 0..l0-1 on the
injected residual and discards their output, so ``_blocks_skipped`` makes those blocks pass their
input through while the pass runs (measured on SmolLM2-135M, 16 x 101 tokens from layer 25: 3.45 s
with the bridge alone, as much as a whole forward).

Memory: the clean keys and values of the batch for the layers after the lowest l0, (batch, pos,
n_kv_heads, d_head) each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float, Int
from torch import Tensor

from confidence_neurons.induction.heads import HEAD_ABLATIONS, HeadAblation, HeadSet, Hook, _batches, _device
from confidence_neurons.models.final_layer import final_layer
from confidence_neurons.models.loading import LoadedModel

# Relative tolerance of the check that the replicated diagonal score f(q . k) is the model's own.
_F_CHECK_RTOL = {torch.float32: 1e-4, torch.float64: 1e-8}


_QK_HOOKS = {x: (f"hook_{x}", f"hook_{x}_normed", f"hook_rot_{x}") for x in "qk"}


class _Stop(Exception):
    """Raised by the read hook once the final MLP has run: nothing after it is needed."""


def _last_fired(model: LoadedModel) -> tuple[list[str], list[str]]:
    """Per layer, the hooks carrying the final query and key: the last of hook_q, hook_q_normed and
    hook_rot_q to fire (the same for k), found with one forward of two tokens.
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.attn.{n}" for l in range(n_layers) for x in "qk" for n in _QK_HOOKS[x]]
    order: dict[str, int] = {}

    def record(name: str) -> Hook:
        def hook(act: Tensor, hook) -> None:
            order.setdefault(name, len(order))

        return (name, hook)

    bos = model.bos_id if model.bos_id is not None else 0
    model.bridge.run_with_hooks(
        torch.full((1, 2), int(bos), device=_device(model)),
        fwd_hooks=[record(n) for n in names if n in model.bridge.hook_dict],
    )
    final: dict[str, list[str]] = {"q": [], "k": []}
    for l in range(n_layers):
        for x in "qk":
            fired = [f"blocks.{l}.attn.{n}" for n in _QK_HOOKS[x] if f"blocks.{l}.attn.{n}" in order]
            if not fired:
                raise NotImplementedError(
                    f"{model.name}: no hook carries layer {l}'s {x}; per-position head ablation cannot mix its "
                    "attention, use --head-ablation all-positions"
                )
            final[x].append(max(fired, key=order.__getitem__))
    return final["q"], final["k"]


def _block_output_kind(model: LoadedModel) -> tuple[bool, int]:
    """How the model's own blocks return: (a tuple?, its length), seen on one forward of two tokens."""
    seen: list[tuple[bool, int]] = []
    block = model.bridge.blocks[0].original_component

    def hook(module, args, output) -> None:
        seen.append((isinstance(output, tuple), len(output) if isinstance(output, tuple) else 1))

    handle = block.register_forward_hook(hook)
    try:
        bos = model.bos_id if model.bos_id is not None else 0
        model.bridge(torch.full((1, 2), int(bos), device=_device(model)))
    finally:
        handle.remove()
    return seen[0]


@contextmanager
def _blocks_skipped(model: LoadedModel, below: int, kind: tuple[bool, int]) -> Iterator[None]:
    """While active, blocks 0..below-1 return their input unchanged (in the output form ``kind``).

    For a pass started at layer ``below`` with ``start_at_layer``: block ``below`` replaces its input
    by the injected residual, so what the blocks under it compute is never read.
    """
    is_tuple, length = kind
    patched = [model.bridge.blocks[l].original_component for l in range(below)]

    def passthrough(hidden_states=None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        return (hidden_states,) + (None,) * (length - 1) if is_tuple else hidden_states

    for module in patched:
        module.forward = passthrough
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _score_fn(model: LoadedModel, layer: int) -> Callable[[Tensor], Tensor]:
    """f(q . k): the layer's scale and attention soft-cap (Gemma 2), as the bridge applies them."""
    hf = model.bridge.blocks[layer].attn.original_component
    scale = float(getattr(hf, "scaling", model.cfg.d_head**-0.5))
    if getattr(model.cfg, "scale_attn_by_inverse_layer_idx", False):
        scale /= layer + 1
    cap = getattr(hf, "attn_logit_softcapping", None)
    if cap is None:
        return lambda x: x * scale
    return lambda x: torch.tanh(x * scale / cap) * cap


def _diag_qk(q: Tensor, k: Tensor) -> Float[Tensor, "batch head pos"]:
    """q_p . k_p per query head; q (batch, pos, head, d_head), k (batch, pos, kv_head, d_head)."""
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)  # head h reads kv head h // n_rep
    return (q * k).sum(-1).transpose(1, 2)


def _diagonal(x: Tensor) -> Tensor:
    """(batch, head, pos, pos) -> (batch, head, pos)."""
    return x.diagonal(dim1=-2, dim2=-1)


def _with_diagonal(x: Tensor, diag: Tensor) -> Tensor:
    out = x.clone()
    out.diagonal(dim1=-2, dim2=-1).copy_(diag)
    return out


@torch.no_grad()
def head_ablation_activations(
    model: LoadedModel,
    tokens: Int[Tensor, "n_seqs seq_len"],
    neurons: Sequence[int],
    head_sets: Sequence[HeadSet],
    hooks_for: Callable[[HeadSet], Sequence[Hook]] | Sequence[Callable[[HeadSet], Sequence[Hook]]],
    *,
    variant: HeadAblation = "per-position",
    batch_size: int = 16,
) -> tuple[Float[Tensor, "n_neurons seq_len"], list[Float[Tensor, "n_neurons seq_len"]]]:
    """Mean activation over sequences of final-layer ``neurons`` at each position: clean, and under
    each head set's ablation.

    ``hooks_for(heads)`` gives the ablation at every query position (``bos_ablation_hooks(heads)``,
    ``mean_z_ablation_hooks(heads, mean_z)``), or one such builder per head set (BOS and mean-z
    ablations sharing one clean pass). ``variant`` "per-position" (the paper's): the value
    at q is the activation at q with the heads ablated at q only, exact by the identity in the
    module docstring; "all-positions": ablated at every query position at once. Both run one
    clean pass per batch and one pass per head set from the head set's lowest layer.
    """
    if variant not in HEAD_ABLATIONS:
        raise ValueError(f"variant must be one of {HEAD_ABLATIONS}, not {variant!r}")
    head_sets = [tuple(tuple(h) for h in hs) for hs in head_sets]
    builders = [hooks_for] * len(head_sets) if callable(hooks_for) else list(hooks_for)
    if len(builders) != len(head_sets):
        raise ValueError(f"{len(builders)} hook builders for {len(head_sets)} head sets: give one, or one per set")
    if any(not hs for hs in head_sets):
        raise ValueError("every head set needs at least one head (the clean row is returned separately)")
    bridge, n_layers = model.bridge, model.cfg.n_layers
    act_hook = final_layer(model).act_hook
    idx = torch.as_tensor(list(neurons), dtype=torch.long)
    starts = sorted({min(l for l, _ in hs) for hs in head_sets})
    mixed = range(starts[0] + 1, n_layers) if head_sets and variant == "per-position" else range(0)
    q_final, k_final = _last_fired(model) if len(mixed) else ([], [])
    f = {l: _score_fn(model, l) for l in mixed}
    clean_total = torch.zeros(len(idx), tokens.shape[1], dtype=torch.float64)
    totals = [torch.zeros_like(clean_total) for _ in head_sets]

    def read_into(total: Tensor) -> Hook:
        def hook(acts: Tensor, hook) -> None:  # (batch, pos, d_mlp)
            total.add_(acts[..., idx.to(acts.device)].double().sum(0).T.cpu())
            raise _Stop

        return (act_hook, hook)

    kind = _block_output_kind(model) if starts and starts[0] > 0 else (False, 1)

    def run(inputs: Tensor, hooks: list[Hook], start: int | None) -> None:
        try:
            with _blocks_skipped(model, start or 0, kind):
                bridge.run_with_hooks(inputs, fwd_hooks=hooks, start_at_layer=start)
        except _Stop:
            pass

    checked = False
    for batch in _batches(tokens, batch_size):
        batch = batch.to(_device(model))
        cache: dict[str, Tensor] = {}

        def keep(name: str) -> Hook:
            def hook(act: Tensor, hook) -> None:
                cache[name] = act

            return (name, hook)

        keep_names = [f"blocks.{l}.hook_resid_pre" for l in starts]
        keep_names += [k_final[l] for l in mixed] + [f"blocks.{l}.attn.hook_v" for l in mixed]
        if not checked:  # the replicated f must be the model's own, on this model's clean pass
            keep_names += [q_final[l] for l in mixed] + [f"blocks.{l}.attn.hook_attn_scores" for l in mixed]
        run(batch, [keep(n) for n in dict.fromkeys(keep_names)] + [read_into(clean_total)], None)
        if not checked:
            for l in mixed:
                mine = f[l](_diag_qk(cache.pop(q_final[l]), cache[k_final[l]]))
                theirs = _diagonal(cache.pop(f"blocks.{l}.attn.hook_attn_scores"))
                tol = _F_CHECK_RTOL.get(mine.dtype, 1e-2) * (1 + theirs.abs().max())
                if (mine - theirs).abs().max() > tol:
                    raise NotImplementedError(
                        f"{model.name}: layer {l}'s attention scores are not scale * q.k (soft-capped); "
                        "per-position head ablation cannot mix its attention, use --head-ablation all-positions"
                    )
            checked = True
        for heads, total, build in zip(head_sets, totals, builders):
            l0 = min(l for l, _ in heads)
            mix = _MixedPass(cache, range(l0 + 1, n_layers) if len(mixed) else range(0), q_final, k_final, f)
            hooks = [*mix.before(), *build(heads), *mix.after(), read_into(total)]
            run(cache[f"blocks.{l0}.hook_resid_pre"], hooks, l0)
    n = tokens.shape[0]
    return (clean_total / n).float(), [(t / n).float() for t in totals]


class _MixedPass:
    """The hooks of one mixed forward over ``layers`` (those after the head set's lowest layer).

    ``before()`` runs ahead of the ablation's hooks: clean K and V off the diagonal, the ablated
    diagonal score put back, the ablated diagonal value added to z. ``after()`` runs behind them:
    it records the final pattern's diagonal (after a BOS ablation has rewritten the pattern) for
    the z fix, which fires later in the same layer.
    """

    def __init__(self, clean: dict[str, Tensor], layers: Sequence[int], q_final, k_final, f) -> None:
        self.clean, self.layers, self.q_final, self.k_final, self.f = clean, layers, q_final, k_final, f
        self.seen: dict[str, Tensor] = {}  # this pass's ablated q, k, v and pattern diagonal, by name

    def _record(self, name: str) -> Hook:
        def hook(act: Tensor, hook) -> None:
            self.seen[name] = act

        return (name, hook)

    def _swap(self, name: str) -> Hook:
        def hook(act: Tensor, hook) -> Tensor:  # k or v: (batch, pos, kv_head, d_head)
            self.seen[name] = act
            return self.clean[name].clone()

        return (name, hook)

    def before(self) -> list[Hook]:
        hooks: list[Hook] = []
        for l in self.layers:

            def scores(s: Tensor, hook, l=l) -> Tensor:  # (batch, head, q, k), masked, pre-softmax
                diag = self.f[l](_diag_qk(self.seen[self.q_final[l]], self.seen[self.k_final[l]]))
                return _with_diagonal(s, diag.to(s.dtype))

            def fix_z(z: Tensor, hook, l=l) -> Tensor:  # (batch, pos, head, d_head)
                v = f"blocks.{l}.attn.hook_v"
                dv = self.seen[v] - self.clean[v]  # (batch, pos, kv_head, d_head)
                dv = dv.repeat_interleave(z.shape[2] // dv.shape[2], dim=2)
                p = self.seen[f"blocks.{l}.attn.pattern_diag"].transpose(1, 2)[..., None]  # (batch, pos, head, 1)
                return z + p * dv

            hooks += [
                self._record(self.q_final[l]),
                self._swap(self.k_final[l]),
                self._swap(f"blocks.{l}.attn.hook_v"),
                (f"blocks.{l}.attn.hook_attn_scores", scores),
                (f"blocks.{l}.attn.hook_z", fix_z),
            ]
        return hooks

    def after(self) -> list[Hook]:
        def make(l: int) -> Callable:
            def diag(pattern: Tensor, hook) -> None:  # (batch, head, q, k)
                self.seen[f"blocks.{l}.attn.pattern_diag"] = _diagonal(pattern)

            return diag

        return [(f"blocks.{l}.attn.hook_pattern", make(l)) for l in self.layers]
