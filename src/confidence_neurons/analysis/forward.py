"""The one forward pass the analyses need, and its cache (Sec. 3.2).

Mean-ablating a final-layer neuron moves only the final residual, so everything the sweep,
``inspect`` and the induction statistics compute follows from the clean pass's final residual and
final-layer activations. ``run_forward`` caches them (in float32 on the host, whatever the model's
device and dtype) and checks the closed form against the model. Given an
:class:`~confidence_neurons.stores.ActivationStore` it writes them into the run directory batch by
batch, each batch hashed as it is written, so a stopped pass resumes, a finished one is read back
(verified, memory-mapped) without the model, and a damaged batch is recomputed.

Which cached tokens the averages count is ``analysed_tokens`` (``--token-filter``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from confidence_neurons.analysis.kernel import is_out_of_memory
from confidence_neurons.errors import ToolkitError
from confidence_neurons.files import require_memory, sha256_of
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.models.loading import LoadedModel
from confidence_neurons.models.placement import LOGPROB_TOLERANCE

log = logging.getLogger(__name__)

#: Bumped whenever what the activation store holds or its stamp records changes.
STORE_FORMAT = 2

#: Which predictions the averages count (``analysed_tokens``). ``paper`` is what runs made before the
#: authors' filter became the default called ``toolkit``; config.json may still say so.
TokenFilter = Literal["authors", "toolkit", "all"]
#: Over which positions the mean-ablation value is taken: ``all`` every cached position (the authors'
#: ``mean_ablate_components``), ``analysed`` only those the token filter keeps (the toolkit's variant).
AblationMean = Literal["all", "analysed"]

#: Model families the authors' ``filter_entropy_activation_df`` (utils.py) knows, and whether it
#: also drops their newline token: only GPT-2's ("gpt" in the model name, Stanford's GPT-2s included).
_AUTHORS_FAMILIES = {"gpt": True, "pythia": False, "phi": False, "llama": False, "gemma": False, "mistral": False}


@dataclass
class ForwardCache:
    """One clean forward pass over the run's tokens, flattened over (sequence, position).

    resid: (N, d_model) input of the final norm; acts: (N, d_mlp) final-layer neuron activations;
    target: (N,) next token; logits_check: max |closed-form clean logits - model logits|.
    Position p of each sequence predicts token p + 1, so N = n_seqs * (seq_len - 1); after
    ``select`` only some of those rows remain and ``rows`` holds their flat indices.
    """

    resid: Float[Tensor, "N d_model"]
    acts: Float[Tensor, "N d_mlp"]
    target: Int[Tensor, " N"]
    seq_len: int
    logits_check: float = 0.0
    mlp_out: Float[Tensor, "N d_model"] | None = None  # the last MLP's output before a post-MLP norm
    rows: Int[Tensor, " N"] | None = None  # flat (seq * (seq_len - 1) + pos) index of each row; None: all
    from_store: bool = False  # read back from a finished activation store, without running the model
    digest: str | None = None  # sha256 of the rows' content, where a store recorded it (else hashed on demand)

    @property
    def n_tokens(self) -> int:
        return self.target.shape[0]

    @property
    def flat_rows(self) -> Tensor:
        return self.rows if self.rows is not None else torch.arange(self.n_tokens)

    def select(self, keep: Bool[Tensor, " N"], store=None) -> ForwardCache:
        """The rows where ``keep`` is True (every row kept: this cache itself). With ``store`` (an
        ``ActivationStore``) the selected rows are copied into memory-mapped files there, chunk by
        chunk, rather than into memory.
        """
        if bool(keep.all()):
            return self
        idx = keep.nonzero()[:, 0]
        named = {"resid": self.resid, "acts": self.acts, "target": self.target}
        if self.mlp_out is not None:
            named["mlp_out"] = self.mlp_out
        if store is not None:
            picked = store.subset({k: v.numpy() for k, v in named.items()}, idx.numpy())
            picked = {k: torch.from_numpy(v) for k, v in picked.items()}
        else:
            picked = {k: v[idx] for k, v in named.items()}
        return ForwardCache(
            resid=picked["resid"],
            acts=picked["acts"],
            target=picked["target"],
            seq_len=self.seq_len,
            logits_check=self.logits_check,
            mlp_out=picked.get("mlp_out"),
            rows=self.flat_rows[idx],
            from_store=self.from_store,
            digest=None if self.digest is None else sha256_of(self.digest, idx.numpy().astype(np.int64)),
        )

    def content_digest(self) -> str:
        """sha256 of what the sweep reads (resid, acts, target, mlp_out): the store's record, else hashed now."""
        if self.digest is not None:
            return self.digest
        parts = [self.resid, self.acts, self.target] + ([self.mlp_out] if self.mlp_out is not None else [])
        return sha256_of(json.dumps([list(p.shape) for p in parts]), *(p.contiguous().numpy() for p in parts))


def newline_ids(tokenizer, ids: np.ndarray) -> set[int]:
    """The token ids among ``ids`` whose text contains a line break."""
    out = set()
    for i in np.unique(ids).tolist():
        try:
            text = tokenizer.decode([i])
        except Exception:  # noqa: BLE001 - a tokenizer that cannot decode an id alone: not a newline
            continue
        if "\n" in text or "\r" in text:
            out.add(int(i))
    return out


def analysed_tokens(
    tokens: Int[Tensor, "n_seqs seq_len"], mode: TokenFilter, *, special: set[int], first_position: int = 3
) -> Bool[Tensor, " N"]:
    """Which predictions the averages count, flattened like ``ForwardCache`` rows (position p of a
    sequence reads token p and predicts token p + 1; the last position predicts nothing and has no row).

    ``all``: every position. ``authors`` (their ``filter_entropy_activation_df``, utils.py): positions
    >= ``first_position`` (3) whose token and whose next token (the target) are not in ``special``
    (BOS, EOS and, on GPT-2, its newline token; see ``special_ids``). ``toolkit`` (this toolkit's
    earlier filter): positions >= 3 whose token and whose *previous* token are not in ``special``
    (there BOS, EOS and every token holding a line break).
    """
    n_seqs, seq_len = tokens.shape
    P = seq_len - 1
    if mode == "all":
        return torch.ones(n_seqs * P, dtype=torch.bool)
    if mode not in ("authors", "toolkit"):
        raise ValueError(f"unknown token filter {mode!r}")
    is_special = (
        torch.isin(tokens, torch.tensor(sorted(special), dtype=tokens.dtype))
        if special
        else torch.zeros_like(tokens, dtype=torch.bool)
    )  # (n_seqs, seq_len)
    read = is_special[:, :P]
    if mode == "authors":
        neighbour = is_special[:, 1:]  # the target
    else:
        neighbour = torch.zeros_like(read)
        neighbour[:, 1:] = read[:, :-1]  # the token before
    pos = torch.arange(P).expand(n_seqs, P)
    return ((pos >= first_position) & ~read & ~neighbour).reshape(-1)


def ablation_mean(cache: ForwardCache, keep: Bool[Tensor, " N"], over: AblationMean) -> Float[Tensor, " d_mlp"]:
    """The mean-ablation value of every neuron: the mean activation over all of ``cache``'s rows
    (``all``: every position that predicts a token, as the authors' ``mean_ablate_components`` averages
    their whole activation table, BOS included) or over the rows ``keep`` marks (``analysed``).
    """
    if over == "all":
        return cache.acts.mean(0)
    if over != "analysed":
        raise ValueError(f"unknown ablation mean {over!r}")
    return cache.acts[keep].mean(0)


def authors_newline_id(name: str | None, tokenizer) -> tuple[int | None, str]:
    r"""The newline token the authors' filter drops, and why: GPT-2's ``tokenizer.encode("\n")[0]``
    for GPT-2-family names, none for the other families their code ran (Pythia, Phi, LLaMA, Gemma,
    Mistral); for a model their code never ran, the newline token when the tokenizer has one as
    GPT-2's does ("\n" alone encodes to a single token), else none.
    """
    lower = (name or "").lower()
    for family, drops in _AUTHORS_FAMILIES.items():
        if family in lower:
            if not drops:
                return None, f"{family}: the authors' filter drops no newline token"
            break
    else:
        family = None
    try:
        ids = tokenizer.encode("\n", add_special_tokens=False)
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode a newline has no newline token
        ids = []
    if family is not None:
        return (int(ids[0]), "gpt: GPT-2's newline token") if ids else (None, "gpt: no newline token")
    if len(ids) == 1:
        return int(ids[0]), "a single newline token, as GPT-2's (the authors drop it on GPT-2)"
    return None, "no single newline token"


def special_ids(model: LoadedModel, tokens: Tensor, token_filter: TokenFilter = "toolkit") -> set[int]:
    """The tokens ``analysed_tokens`` leaves out: BOS and EOS, with the authors' newline token
    (``authors_newline_id``) or, for the ``toolkit`` filter, every token in ``tokens`` holding a line break.
    """
    if token_filter == "authors":
        newline, _ = authors_newline_id(model.name, model.tokenizer)
        out = set() if newline is None else {newline}
    else:
        out = newline_ids(model.tokenizer, tokens.numpy())
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(model.tokenizer, name, None)
        if value is None:
            value = getattr(model.bridge.original_model.config, name, None)
        if isinstance(value, list):
            out.update(int(v) for v in value)
        elif value is not None:
            out.add(int(value))
    if model.bos_id is not None:
        out.add(model.bos_id)
    return out


def sweep_device(model: LoadedModel) -> str:
    """Where the sweep runs: the model's GPU when it has one (the first, under a device map), else the CPU."""
    placement = getattr(model, "placement", None)
    if placement is None or placement.device == "cpu":
        return "cpu"
    return str(_input_device(model)) if placement.device_map is not None else placement.device


def _input_device(model: LoadedModel) -> torch.device:
    dev = getattr(model.cfg, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def _model_dtype(model: LoadedModel) -> torch.dtype:
    placement = getattr(model, "placement", None)
    return placement.dtype if placement is not None else torch.float32


def layer_digest(layer: FinalLayer) -> str:
    """sha256 of the final layer as the closed form sees it: W_out, W_U, b_U, the norm and any post-MLP norm."""
    post = layer.post_mlp_norm
    tensors = [layer.W_out, layer.W_U, layer.b_U] + ([post.g] if post is not None else [])
    facts = [layer.layer, layer.norm, layer.eps, layer.softcap, None if post is None else post.eps]
    facts += [list(t.shape) for t in tensors]
    return sha256_of(json.dumps(facts), *(t.detach().float().cpu().contiguous().numpy() for t in tensors))


def store_stamp(model: LoadedModel, layer: FinalLayer, tokens: Tensor) -> dict:
    """What a stored forward pass was made from: the tokens, the model's identity and final layer, dtype."""
    return {
        "format": STORE_FORMAT,
        "tokens_sha256": sha256_of(tokens.numpy().astype(np.int64)),
        "tokens_shape": list(tokens.shape),
        "model": model.name,
        "dtype": str(_model_dtype(model)).removeprefix("torch."),
        "final_layer_sha256": layer_digest(layer),
        "post_mlp_norm": layer.post_mlp_norm is not None,
    }


def _shapes(layer: FinalLayer, n: int) -> dict[str, tuple[tuple[int, ...], str]]:
    shapes = {
        "resid": ((n, layer.d_model), "float32"),
        "acts": ((n, layer.d_mlp), "float32"),
        "target": ((n,), "int64"),
    }
    if layer.post_mlp_norm is not None:
        shapes["mlp_out"] = ((n, layer.d_model), "float32")
    return shapes


def _cache_of(
    arrays: dict[str, np.ndarray], seq_len: int, check: float, from_store: bool, digest: str | None = None
) -> ForwardCache:
    t = {name: torch.from_numpy(a) for name, a in arrays.items()}
    return ForwardCache(
        t["resid"], t["acts"], t["target"], seq_len, check, t.get("mlp_out"), from_store=from_store, digest=digest
    )


def _batches(n_seqs: int, seq_len: int, batch_size: int) -> list[tuple[int, int]]:
    """The cache rows (r0, r1) each forward batch of ``batch_size`` sequences fills."""
    P = seq_len - 1
    return [(b * P, min(n_seqs, b + batch_size) * P) for b in range(0, n_seqs, batch_size)]


@torch.no_grad()
def run_forward(
    model: LoadedModel,
    layer: FinalLayer,
    tokens: Int[Tensor, "n_seqs seq_len"],
    batch_size: int = 8,
    progress: bool = True,
    store=None,
    check: Literal["every batch", "first batch"] = "every batch",
) -> ForwardCache:
    """Cache the final residual and neuron activations, and check the closed form's clean logits.

    With ``store`` (an ``ActivationStore``) the cache is written there batch by batch; a finished
    store of the same tokens and model is verified and read back without running the model, and
    the batches that fail verification are recomputed. Without one the cache is held in memory,
    refused up front if the system has not that much memory available.

    ``check``: the closed-form logits are checked against the model's (``check_rows`` of each
    batch) in every batch, or only in the first, the others stopping at the final norm's scale
    (no unembedding: a fifth of the forward on a 49k vocabulary). The final norm's scale is
    checked in every batch either way.
    """
    if check not in ("every batch", "first batch"):
        raise ValueError(f"check must be 'every batch' or 'first batch', not {check!r}")
    n_seqs, seq_len = tokens.shape
    n = n_seqs * (seq_len - 1)
    shapes = _shapes(layer, n)
    batches = _batches(n_seqs, seq_len, batch_size)
    writer, arrays = None, None
    if store is not None:
        writer = store.open(store_stamp(model, layer, tokens), shapes, batches)
        extra = writer.meta.get("extra", {})
        if writer.complete:
            log.info("read the forward pass back from %s (verified; the model is not run)", store.folder)
            return _cache_of(writer.arrays(), seq_len, float(extra.get("logits_check", 0.0)), True, writer.digest)
        todo = writer.todo
    else:
        need = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in shapes.values())
        require_memory(need, f"holding the forward pass of {n:,} tokens in memory", "lower --n-seqs or --seq-len")
        arrays = {name: np.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}
        todo, extra = list(range(len(batches))), {}
    try:
        worst = _forward_batches(
            model,
            layer,
            tokens,
            batch_size,
            batches,
            todo,
            writer,
            arrays,
            float(extra.get("logits_check", 0.0)),
            progress,
            every=check == "every batch",
        )
    finally:
        if writer is not None:
            writer.close()
    tol = LOGPROB_TOLERANCE.get(_model_dtype(model), 1e-2)
    if worst > tol:
        raise RuntimeError(
            f"closed-form logits differ from the model's by {worst:.3g} (log-prob; {tol:g} allowed in "
            f"{_model_dtype(model)}): the final norm or unembedding of this architecture is not what the "
            "closed form assumes"
        )
    if writer is None:
        return _cache_of(arrays, seq_len, worst, False)
    writer.finish({"logits_check": worst})
    return _cache_of(writer.arrays(), seq_len, worst, False, writer.digest)


#: Positions per batch at which the closed-form logits are checked against the model's (evenly spaced,
#: the first and last included): the check reads the whole vocabulary twice per position, which on
#: every position cost as much as a third of the forward pass itself.
CHECK_POSITIONS = 256


def check_rows(n: int, most: int = CHECK_POSITIONS) -> Tensor:
    """At most ``most`` of the row indices 0..n-1, evenly spaced, the first and the last included."""
    if n <= most:
        return torch.arange(n)
    return torch.linspace(0, n - 1, most).round().long().unique()


def _logits_error(layer: FinalLayer, x: Tensor, logits: Tensor) -> float:
    """Largest |closed-form - model| log-probability over ``check_rows`` of the batch's positions;
    x (batch, pos, d_model) the final norm's input, logits (batch, pos, d_vocab) the model's.
    """
    x, logits = x.reshape(-1, x.shape[-1]), logits.reshape(-1, logits.shape[-1])
    rows = check_rows(x.shape[0])
    mine = layer.logits(x[rows]).log_softmax(-1)
    theirs = logits[rows.to(logits.device)].float().cpu().log_softmax(-1)
    return (mine - theirs).abs().max().item()


def _hooked_forward(
    model: LoadedModel, batch: Tensor, names: set[str], stop_after: FinalLayer | None
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """The model's logits and the activations at hook points ``names``; with ``stop_after`` (the final
    layer) the forward stops once its norm's scale is read: no unembedding, no logits (None).
    """
    cache: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> None:
        cache[hook.name] = act

    def stop(act: Tensor, hook) -> None:
        raise _Stop

    hooks = [(n, keep) for n in names] + ([(stop_after.scale_hook, stop)] if stop_after is not None else [])
    try:
        return model.bridge.run_with_hooks(batch, fwd_hooks=hooks), cache
    except _Stop:
        return None, cache


def _forward_batches(
    model, layer, tokens, batch_size, batches, todo, writer, arrays, worst, progress, every: bool = True
) -> float:
    """Run the model on the batches ``todo``, writing each one's rows to ``writer`` or into ``arrays``;
    return the largest closed-form logit error seen (starting from ``worst``). ``every`` False: only
    the first batch runs to the logits and is checked; the others stop at the final norm's scale.
    """
    seq_len = tokens.shape[1]
    tol = LOGPROB_TOLERANCE.get(_model_dtype(model), 1e-2)
    post = layer.post_mlp_norm
    names = {layer.act_hook, layer.resid_hook, layer.scale_hook} | ({post.in_hook} if post else set())
    device = _input_device(model)
    bar = tqdm(
        total=len(batches), initial=len(batches) - len(todo), desc="forward pass", disable=not progress, unit="batch"
    )
    for b in todo:
        batch = tokens[b * batch_size : (b + 1) * batch_size]
        try:
            logits, cache = _hooked_forward(model, batch.to(device), names, None if b == todo[0] or every else layer)
        except (RuntimeError, MemoryError) as exc:
            if is_out_of_memory(exc):
                raise ToolkitError(
                    f"out of memory in the forward pass of {batch.shape[0]} sequences of {seq_len} tokens; "
                    "lower --batch-size (or use --device-map auto to spread the model over more devices)"
                ) from exc
            raise
        x = cache[layer.resid_hook][:, :-1].float().cpu()
        if logits is not None:
            worst = max(worst, _logits_error(layer, x, logits[:, :-1]))
        theirs = cache[layer.scale_hook][:, :-1].float().cpu()
        scale_err = (layer.scale(x) - theirs).abs().max().item()
        if scale_err > max(1e-3, tol / 10) * max(1.0, theirs.abs().max().item()):
            raise RuntimeError(
                f"the final norm's scale differs from the closed form by {scale_err:.3g}: unsupported norm"
            )
        block = {
            "resid": x.reshape(-1, layer.d_model).numpy(),
            "acts": cache[layer.act_hook][:, :-1].float().cpu().reshape(-1, layer.d_mlp).numpy(),
            "target": batch[:, 1:].reshape(-1).numpy().astype(np.int64),
        }
        if post is not None:
            block["mlp_out"] = cache[post.in_hook][:, :-1].float().cpu().reshape(-1, layer.d_model).numpy()
        del logits, cache
        if writer is not None:
            writer.set_extra({"logits_check": worst})
            writer.write(b, block)
        else:
            r0, r1 = batches[b]
            for name, rows in block.items():
                arrays[name][r0:r1] = rows
        bar.update(1)
    bar.close()
    return worst


class _Stop(Exception):
    """Raised once the final norm's scale has been read: nothing after it is needed."""


@torch.no_grad()
def forward_at(
    model: LoadedModel,
    layer: FinalLayer,
    tokens: Int[Tensor, "n_seqs seq_len"],
    rows: Int[Tensor, " R"],
    *,
    batch_size: int = 8,
) -> ForwardCache:
    """``run_forward``'s cache at the flat positions ``rows`` only (seq * (seq_len - 1) + pos, sorted,
    unique), for analyses that read a few positions of each sequence (natural induction, Fig. 9).

    Exact and cheaper: a causal model's final residual at p depends on tokens 0..p only, so each
    batch of sequences is cut after its last needed position (sequences are batched by that
    position, longest first, so a batch runs little past what it needs), and the forward stops at the final
    norm's scale (no unembedding: the closed form computes what the analysis reads). The closed
    form's logits are checked against the model's at the rows of the first batch, which runs whole.
    The returned cache holds the rows in the order given, with ``rows`` set.
    """
    n_seqs, seq_len = tokens.shape
    P = seq_len - 1
    rows = torch.as_tensor(rows, dtype=torch.long)
    if rows.ndim != 1 or len(rows) == 0 or bool((rows.diff() <= 0).any()) or rows[0] < 0 or rows[-1] >= n_seqs * P:
        raise ValueError(f"rows must be sorted, unique flat positions in [0, {n_seqs * P}), not {rows.tolist()[:8]}...")
    seq, pos = rows // P, rows % P
    post = layer.post_mlp_norm
    names = [layer.act_hook, layer.resid_hook, layer.scale_hook] + ([post.in_hook] if post else [])
    device, tol = _input_device(model), LOGPROB_TOLERANCE.get(_model_dtype(model), 1e-2)
    wanted = seq.unique()
    # longest cut first (the first batch runs whole for the check), then batches of similar cuts, so
    # each batch runs little past its sequences' own last positions
    last = torch.zeros(n_seqs, dtype=torch.long).scatter_reduce(0, seq, pos, "amax")[wanted]
    wanted = wanted[torch.sort(last, descending=True, stable=True).indices]
    parts: dict[str, list[Tensor]] = {"resid": [], "acts": [], "mlp_out": [], "order": []}
    worst = 0.0
    for b0 in range(0, len(wanted), batch_size):
        seqs = wanted[b0 : b0 + batch_size].sort().values
        mine = torch.isin(seq, seqs)
        parts["order"].append(mine.nonzero().flatten())
        s_idx = torch.searchsorted(seqs, seq[mine])  # each row's place in the batch
        p_idx = pos[mine]
        batch = tokens[seqs, : int(p_idx.max()) + 1].to(device)
        cache: dict[str, Tensor] = {}

        def keep(act: Tensor, hook) -> None:
            cache[hook.name] = act

        def stop(act: Tensor, hook) -> None:
            raise _Stop

        hooks = [(n, keep) for n in names] + ([] if b0 == 0 else [(layer.scale_hook, stop)])
        try:
            logits = model.bridge.run_with_hooks(batch, fwd_hooks=hooks)
        except _Stop:
            logits = None
        x = cache[layer.resid_hook][s_idx.to(device), p_idx.to(device)].float().cpu()  # (rows, d_model)
        if logits is not None:  # the first batch: closed form against the model's own logits
            worst = max(worst, _logits_error(layer, x, logits[s_idx.to(device), p_idx.to(device)]))
        theirs = cache[layer.scale_hook][s_idx.to(device), p_idx.to(device)].float().cpu()
        if (layer.scale(x) - theirs).abs().max().item() > max(1e-3, tol / 10) * max(1.0, theirs.abs().max().item()):
            raise RuntimeError("the final norm's scale differs from the closed form: unsupported norm")
        parts["resid"].append(x)
        parts["acts"].append(cache[layer.act_hook][s_idx.to(device), p_idx.to(device)].float().cpu())
        if post is not None:
            parts["mlp_out"].append(cache[post.in_hook][s_idx.to(device), p_idx.to(device)].float().cpu())
    if worst > tol:
        raise RuntimeError(
            f"closed-form logits differ from the model's by {worst:.3g} (log-prob; {tol:g} allowed in "
            f"{_model_dtype(model)}): the final norm or unembedding of this architecture is not what the "
            "closed form assumes"
        )
    # the rows come back in the order given
    back = torch.empty(len(rows), dtype=torch.long)
    back[torch.cat(parts["order"])] = torch.arange(len(rows))
    return ForwardCache(
        resid=torch.cat(parts["resid"])[back],
        acts=torch.cat(parts["acts"])[back],
        target=tokens[seq, pos + 1].clone(),
        seq_len=seq_len,
        logits_check=worst,
        mlp_out=torch.cat(parts["mlp_out"])[back] if post is not None else None,
        rows=rows.clone(),
    )
