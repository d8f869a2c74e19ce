"""Entropy neurons as a confidence dial, measured against temperature scaling (beyond the paper;
builds on Sec. 3.2-3.3 and the clipped ablation of Sec. 5).

Steering sets neuron i's activation a_i to mean_i + alpha (a_i - mean_i) + c at every analysed
token (alpha = 1, c = 0: the clean model; alpha = 0: mean ablation; alpha > 1 amplifies), so it
moves by delta_i = (alpha - 1)(a_i - mean_i) + c. As in ``closed_form`` (Eq. 4), only the final
residual moves, by sum_i delta_i w_out_i for all the dial's neurons at once:
    logits' = (L + sum_i delta_i U_i) / s' + b_U,  L = W_U^T center(x),  U_i = W_U^T center(w_out_i),
    s' = scale(x + sum_i delta_i w_out_i)   (formed in d_model space, T x K x d_model).
With a post-MLP norm (Gemma 2, 3) the MLP output m moves to m' = m + sum_i delta_i w_i, r' is its
RMS, and center(x') = center(x) + center(g m')/r' - center(g m)/r, so
    logits' = (L + (1/r' - 1/r) LP + (1/r') sum_i delta_i U^q_i) / s' + b_U,
    LP = W_U^T center(g m),  U^q_i = W_U^T center(g w_i).
L (the one unembedding, T x d_model x V) is computed once per token chunk and shared by every
setting; each setting then costs T x K x V plus one softmax, so a grid of settings costs about one
sweep, not one forward pass each. Temperature scaling divides the final (soft-capped) logits by T.

Metrics per setting (``token_metrics``): NLL of the next token, entropy, top-1 accuracy,
confidence (top-1 probability), the multi-class Brier score sum_v (p_v - [v = y])^2 and the rank
of the correct token (1 = top). ECE uses equal-mass bins (``reliability_bins``).

The implied temperature of a token (``implied_temperature``): the T for which
H(softmax(z / T)) equals the entropy after the dial's clipped ablation (every neuron set to
min(a, mean), Sec. 5), z the clean logits. H(softmax(z / T)) rises monotonically in T, so T is
found by safeguarded Newton steps in log(1/T) inside the bracket [T_MIN, T_MAX]; a target outside
the entropies reachable there gives NaN. Tokens where clipping changes nothing get T = 1 exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from confidence_neurons.analysis.forward import ForwardCache
from confidence_neurons.models.final_layer import FinalLayer

#: The implied temperature's bracket; a token whose clipped entropy no T in it reaches gets NaN.
T_MIN, T_MAX = 0.05, 20.0
#: Convergence of the implied-temperature solve: |H(z / T) - target| in nats.
IMPLIED_TOL = 1e-7
#: The per-token metrics ``token_metrics`` returns.
METRICS = ("nll", "entropy", "correct", "confidence", "brier", "rank", "argmax")


@dataclass(frozen=True)
class Dial:
    """A set of final-layer neurons steered together by one alpha; ``cols`` index ``Steerer.neurons``."""

    name: str
    neurons: tuple[int, ...]
    cols: tuple[int, ...]


@dataclass
class Base:
    """What every setting of a token chunk shares, for T tokens and the K_all steered neurons."""

    xc: Float[Tensor, "T d_model"]  # center(x)
    L: Float[Tensor, "T V"]  # W_U^T center(x)
    s: Float[Tensor, "T 1"]  # clean scale
    acts: Float[Tensor, "T K_all"]  # clean activations of the steered neurons
    target: Int[Tensor, " T"]
    m: Tensor | None = None  # (T, d_model) MLP output before a post-MLP norm
    Pc: Tensor | None = None  # (T, d_model) center(g m)
    LP: Tensor | None = None  # (T, V) W_U^T center(g m)
    r: Tensor | None = None  # (T, 1) RMS of m

    @property
    def n(self) -> int:
        return self.target.shape[0]


class Steerer:
    """The closed form of steering ``neurons`` (K_all of them) around ``mean`` (K_all,)."""

    def __init__(self, layer: FinalLayer, neurons: list[int], mean: Float[Tensor, " K_all"]) -> None:
        self.layer, self.neurons, self.mean = layer, list(neurons), mean.float()
        post = layer.post_mlp_norm
        self.W = layer.W_out[self.neurons]  # (K_all, d_model)
        self.Wc = layer.center(self.W if post is None else post.g * self.W)  # center(w) or center(g w)
        self.U = self.Wc @ layer.W_U  # (K_all, V)

    def bases(self, cache: ForwardCache, token_chunk: int) -> Iterator[Base]:
        """One :class:`Base` per chunk of ``token_chunk`` cached tokens."""
        layer, post = self.layer, self.layer.post_mlp_norm
        for t0 in range(0, cache.n_tokens, token_chunk):
            sl = slice(t0, t0 + token_chunk)
            xc = layer.center(cache.resid[sl])
            base = Base(
                xc=xc,
                L=xc @ layer.W_U,
                s=(xc.pow(2).mean(-1, keepdim=True) + layer.eps).sqrt(),
                acts=cache.acts[sl][:, self.neurons],
                target=cache.target[sl],
            )
            if post is not None:
                m = cache.mlp_out[sl]
                base.m, base.Pc = m, layer.center(post.g * m)
                base.LP = base.Pc @ layer.W_U
                base.r = (m.pow(2).mean(-1, keepdim=True) + post.eps).sqrt()
            yield base

    def delta(self, base: Base, dial: Dial, alpha: float, shift: float = 0.0) -> Float[Tensor, "T K"]:
        """delta_i = (alpha - 1)(a_i - mean_i) + shift for the dial's neurons."""
        cols = list(dial.cols)
        return (alpha - 1.0) * (base.acts[:, cols] - self.mean[cols]) + shift

    def clipped_delta(self, base: Base, dial: Dial) -> Float[Tensor, "T K"]:
        """The clipped ablation's move, min(a, mean) - a (Sec. 5)."""
        cols = list(dial.cols)
        a = base.acts[:, cols]
        return torch.minimum(a, self.mean[cols]) - a

    def clean_logits(self, base: Base) -> Float[Tensor, "T V"]:
        return self._finish(base.L / base.s)

    def logits(self, base: Base, dial: Dial, delta: Float[Tensor, "T K"]) -> Float[Tensor, "T V"]:
        """The logits after moving the dial's neurons by ``delta``, all together (module docstring)."""
        layer, post, cols = self.layer, self.layer.post_mlp_norm, list(dial.cols)
        Wc, U = self.Wc[cols], self.U[cols]
        if post is None:
            xc = base.xc + delta @ Wc
            z = base.L + delta @ U
        else:
            m = base.m + delta @ self.W[cols]
            r = (m.pow(2).mean(-1, keepdim=True) + post.eps).sqrt()
            c1 = 1.0 / r - 1.0 / base.r
            xc = base.xc + c1 * base.Pc + (delta @ Wc) / r
            z = base.L + c1 * base.LP + (delta @ U) / r
        s = (xc.pow(2).mean(-1, keepdim=True) + layer.eps).sqrt()
        return self._finish(z / s)

    def _finish(self, z: Tensor) -> Tensor:
        z = z + self.layer.b_U
        cap = self.layer.softcap
        return cap * torch.tanh(z / cap) if cap else z


def token_metrics(z: Float[Tensor, "T V"], target: Int[Tensor, " T"]) -> dict[str, Tensor]:
    """Per token (T,): nll, entropy, correct (top-1 = target), confidence (top-1 probability),
    brier (sum_v (p_v - [v = y])^2), rank of the correct token (1 = top) and argmax (the top-1 token).
    """
    logp = z.float().log_softmax(-1)
    p = logp.exp()
    p_y = p.gather(-1, target[:, None])[:, 0]
    conf, top = p.max(-1)
    z_y = z.gather(-1, target[:, None])
    return {
        "nll": -logp.gather(-1, target[:, None])[:, 0],
        "entropy": -(p * logp).sum(-1),
        "correct": (top == target).float(),
        "confidence": conf,
        "brier": p.pow(2).sum(-1) - 2 * p_y + 1,
        "rank": (z > z_y).sum(-1).float() + 1,
        "argmax": top,
    }


def mean_nll(z: Float[Tensor, "T V"], target: Int[Tensor, " T"]) -> Tensor:
    """Summed NLL of the chunk (float64), for fitting."""
    return -(z.float().log_softmax(-1).gather(-1, target[:, None])).double().sum()


# --------------------------------------------------------------------------- calibration


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> pd.DataFrame:
    """Equal-mass bins of the tokens sorted by confidence (``np.array_split`` of the stable order, so
    sizes differ by at most one; empty bins, with fewer tokens than bins, are dropped): per bin its
    size, mean confidence and accuracy. Bins past one per token would all be empty, so at most that
    many are made (the same table, without allocating the empty ones).
    """
    conf, corr = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    order = np.argsort(conf, kind="stable")
    rows = [
        {"bin": b, "n": len(idx), "confidence": conf[idx].mean(), "accuracy": corr[idx].mean()}
        for b, idx in enumerate(np.array_split(order, max(1, min(n_bins, len(order)))))
        if len(idx)
    ]
    return pd.DataFrame(rows, columns=["bin", "n", "confidence", "accuracy"])


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over equal-mass bins (``reliability_bins``)."""
    bins = reliability_bins(confidence, correct, n_bins)
    return float((bins["n"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / bins["n"].sum())


def brier_score(probs: np.ndarray, target: np.ndarray) -> float:
    """Mean over tokens of the multi-class Brier score sum_v (p_v - [v = y])^2; probs (N, V)."""
    probs = np.asarray(probs, dtype=float)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(target)), np.asarray(target)] = 1.0
    return float(((probs - onehot) ** 2).sum(-1).mean())


# --------------------------------------------------------------------------- implied temperature


def _entropy_and_slope(z: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """H(softmax(beta z)) and dH/dlog(beta) = -beta^2 Var_p(z), per row."""
    logp = (beta[:, None] * z).log_softmax(-1)
    p = logp.exp()
    ez = (p * z).sum(-1)
    var = (p * (z - ez[:, None]).pow(2)).sum(-1)
    return -(p * logp).sum(-1), -beta.pow(2) * var


@torch.no_grad()
def implied_temperature(
    z: Float[Tensor, "T V"], target_entropy: Float[Tensor, " T"], *, max_iter: int = 100
) -> Float[Tensor, " T"]:
    """Per row, the T in [T_MIN, T_MAX] with H(softmax(z / T)) = ``target_entropy`` (float64; NaN where
    no T in the bracket reaches it). Safeguarded Newton in u = log(1/T): a Newton step that leaves
    the current bracket is replaced by bisection, so it always converges.
    """
    z = z.double()
    h = target_entropy.double()
    u_lo = torch.full_like(h, -math.log(T_MAX))  # high T, high entropy
    u_hi = torch.full_like(h, -math.log(T_MIN))
    h_at_lo, _ = _entropy_and_slope(z, u_lo.exp())
    h_at_hi, _ = _entropy_and_slope(z, u_hi.exp())
    valid = (h <= h_at_lo + IMPLIED_TOL) & (h >= h_at_hi - IMPLIED_TOL)
    u = torch.zeros_like(h).clamp(u_lo, u_hi)
    active = valid.clone()
    for _ in range(max_iter):
        if not active.any():
            break
        idx = active.nonzero()[:, 0]
        H, slope = _entropy_and_slope(z[idx], u[idx].exp())
        f = H - h[idx]  # decreasing in u
        done = f.abs() < IMPLIED_TOL
        lo, hi = u_lo[idx], u_hi[idx]
        lo = torch.where(f > 0, u[idx], lo)
        hi = torch.where(f <= 0, u[idx], hi)
        step = u[idx] - f / slope
        bad = ~torch.isfinite(step) | (step <= lo) | (step >= hi)
        new = torch.where(bad, 0.5 * (lo + hi), step)
        u_lo[idx], u_hi[idx] = lo, hi
        u[idx] = torch.where(done, u[idx], new)
        active[idx] = ~done & ((hi - lo) > 1e-13)
    out = (-u).exp()
    return torch.where(valid, out, torch.full_like(out, float("nan")))


# --------------------------------------------------------------------------- fitting


def refine_candidates(points: dict[float, float], lo: float, hi: float, per_round: int = 8) -> list[float]:
    """The next points of a bracketed minimum search over [lo, hi]: ``per_round`` equally spaced
    points between the neighbours of the best point so far in ``points`` (x -> value). Each round
    shrinks the bracket to 2 / (per_round + 1) of its width; callers evaluate the points of every
    search in one pass over the tokens, then add them to ``points``.
    """
    inside = sorted(x for x in points if lo <= x <= hi)
    best = min(inside, key=points.get)
    i = inside.index(best)
    a = inside[i - 1] if i > 0 else lo
    b = inside[i + 1] if i + 1 < len(inside) else hi
    xs = [a + (b - a) * k / (per_round + 1) for k in range(1, per_round + 1)]
    return [x for x in xs if x not in points]


# --------------------------------------------------------------------------- settings and passes


@dataclass(frozen=True)
class Setting:
    """One point of the comparison: a dial at ``value`` = alpha (plus ``shift``), or global temperature
    scaling at ``value`` = T.
    """

    kind: str  # "neuron dial" or "temperature"
    value: float
    dial: Dial | None = None
    shift: float = 0.0
    fitted: bool = False

    @property
    def label(self) -> str:
        fitted = "fitted " if self.fitted else ""
        if self.kind == "temperature":
            return f"{fitted}T={self.value:.4g}"
        shift = f" c={self.shift:+g}" if self.shift else ""
        return f"{fitted}{self.dial.name} alpha={self.value:.4g}{shift}"


def setting_logits(steerer: Steerer, base: Base, setting: Setting, clean: Tensor) -> Float[Tensor, "T V"]:
    """The logits of a token chunk under ``setting`` (``clean``: the chunk's clean logits)."""
    if setting.kind == "temperature":
        return clean / setting.value
    return steerer.logits(base, setting.dial, steerer.delta(base, setting.dial, setting.value, setting.shift))


class Bases:
    """The chunks of one part of the text, kept in memory when they fit in ``budget_bytes`` (then every
    fitting round reuses the one unembedding), otherwise recomputed on each pass.
    """

    def __init__(self, steerer: Steerer, cache: ForwardCache, token_chunk: int, budget_bytes: float) -> None:
        self.steerer, self.cache, self.token_chunk = steerer, cache, token_chunk
        per_token = 4 * steerer.layer.d_vocab * (2 if steerer.layer.post_mlp_norm is not None else 1)
        self.kept = list(steerer.bases(cache, token_chunk)) if cache.n_tokens * per_token <= budget_bytes else None

    def __iter__(self) -> Iterator[Base]:
        return iter(self.kept) if self.kept is not None else self.steerer.bases(self.cache, self.token_chunk)


@torch.no_grad()
def mean_nlls(steerer: Steerer, bases: Bases, settings: list[Setting]) -> np.ndarray:
    """Mean NLL over the part's tokens of every setting, in one pass (float64), (S,)."""
    sums, n = np.zeros(len(settings)), 0
    for base in bases:
        clean = steerer.clean_logits(base)
        for j, st in enumerate(settings):
            sums[j] += float(mean_nll(setting_logits(steerer, base, st, clean), base.target))
        n += base.n
    return sums / max(n, 1)


@dataclass
class Fit:
    """What the fitting part chose: per dial its alpha of least NLL, the global T of least NLL, every
    point evaluated on the way ({search: {x: NLL}}, x = alpha, or log T under "T"), and whether a
    minimum lies at the edge of its grid (then the true minimum may lie beyond it).
    """

    alpha: dict[str, float]
    T: float
    nll: dict[str, float]  # the fitting part's NLL at the fitted alpha (per dial) and T ("T")
    points: dict[str, dict[float, float]]
    at_edge: dict[str, bool]
    passes: int


@torch.no_grad()
def fit(
    steerer: Steerer,
    bases: Bases,
    dials: list[Dial],
    alphas: list[float],
    temperatures: list[float],
    shift: float = 0.0,
    *,
    rounds: int = 4,
    per_round: int = 8,
) -> Fit:
    """The grid's NLL on the fitting part, then ``rounds`` of bracketed refinement (``refine_candidates``)
    of every dial's alpha and of log T, all searches sharing each pass over the tokens.
    """
    grid = [Setting("neuron dial", a, d, shift) for d in dials for a in alphas]
    grid += [Setting("temperature", t) for t in temperatures]
    values = mean_nlls(steerer, bases, grid)
    points: dict[str, dict[float, float]] = {d.name: {} for d in dials}
    points["T"] = {}
    for st, v in zip(grid, values):
        key, x = (st.dial.name, st.value) if st.kind == "neuron dial" else ("T", math.log(st.value))
        points[key][x] = float(v)
    bounds = {d.name: (min(alphas), max(alphas)) for d in dials}
    bounds["T"] = (math.log(min(temperatures)), math.log(max(temperatures)))
    dial_of = {d.name: d for d in dials}
    passes = 1
    for _ in range(rounds):
        todo = {key: refine_candidates(points[key], *bounds[key], per_round) for key in points}
        settings, keys = [], []
        for key, xs in todo.items():
            for x in xs:
                keys.append((key, x))
                if key == "T":
                    settings.append(Setting("temperature", math.exp(x)))
                else:
                    settings.append(Setting("neuron dial", x, dial_of[key], shift))
        if not settings:
            break
        for (key, x), v in zip(keys, mean_nlls(steerer, bases, settings)):
            points[key][x] = float(v)
        passes += 1
    best = {key: min(p, key=p.get) for key, p in points.items()}
    grid_x = {d.name: set(alphas) for d in dials} | {"T": {math.log(t) for t in temperatures}}
    at_edge = {}
    for key, p in points.items():
        grid_best = min(grid_x[key], key=p.get)
        at_edge[key] = len(grid_x[key]) > 1 and grid_best in (min(grid_x[key]), max(grid_x[key]))
    return Fit(
        alpha={d.name: best[d.name] for d in dials},
        T=math.exp(best["T"]),
        nll={key: points[key][x] for key, x in best.items()},
        points=points,
        at_edge=at_edge,
        passes=passes,
    )


@dataclass
class Measured:
    """Per-token results on the measuring part: ``metrics[label][name]`` (N,) for every setting and
    "clean"; per dial name, the clipped ablation's ``implied`` temperature, entropy and whether it
    changed anything (N,).
    """

    metrics: dict[str, dict[str, np.ndarray]]
    implied_T: dict[str, np.ndarray]
    clipped_entropy: dict[str, np.ndarray]
    clipped: dict[str, np.ndarray]


@torch.no_grad()
def measure(steerer: Steerer, bases: Bases, settings: list[Setting], dials: list[Dial], progress_bar=None) -> Measured:
    """Every setting's per-token metrics and every dial's implied temperature, in one pass."""
    acc: dict[str, dict[str, list[Tensor]]] = {st.label: {m: [] for m in METRICS} for st in settings}
    acc["clean"] = {m: [] for m in METRICS}
    imp = {d.name: {"T": [], "H": [], "clipped": []} for d in dials}
    for base in bases:
        clean = steerer.clean_logits(base)
        for label, z in [("clean", clean)] + [(st.label, setting_logits(steerer, base, st, clean)) for st in settings]:
            for m, v in token_metrics(z, base.target).items():
                acc[label][m].append(v)
        for d in dials:
            clip = steerer.clipped_delta(base, d)
            changed = (clip != 0).any(-1)
            H = token_metrics(steerer.logits(base, d, clip), base.target)["entropy"]
            T = torch.ones(base.n, dtype=torch.float64)
            if changed.any():
                T[changed] = implied_temperature(clean[changed], H[changed])
            imp[d.name]["T"].append(T)
            imp[d.name]["H"].append(H)
            imp[d.name]["clipped"].append(changed)
        if progress_bar is not None:
            progress_bar.update(base.n)
    cat = lambda xs: torch.cat(xs).numpy()  # noqa: E731
    return Measured(
        metrics={label: {m: cat(v) for m, v in ms.items()} for label, ms in acc.items()},
        implied_T={k: cat(v["T"]) for k, v in imp.items()},
        clipped_entropy={k: cat(v["H"]) for k, v in imp.items()},
        clipped={k: cat(v["clipped"]) for k, v in imp.items()},
    )
