"""Softmax statistics of closed-form ablated logits: a fused C kernel and its torch twin.

Both compute, for every (token t, neuron k) of a chunk, the logits
``y = cap(A*L[t] + B*U[k] + C*P[t] + bias) + D*Q`` and reduce them over the vocabulary to
(max, S = sum exp(y - shift), Sz = sum (y - shift) exp(y - shift), shift, y[target], y[ref]),
from which loss, entropy and "did the top-1 prediction change" follow exactly. Given a vector w and
a coefficient G per pair, also logsumexp(y + G w), of the logits moved along w (DE_freq, Eq. 7),
in the same pass: by a series in G with an error below ``tol`` where
that is cheaper, by a second exponential where not (``series_orders``).
The C kernel (``ablation_kernel.c``) never materialises the (T, K, d_vocab) logits; it is
compiled once with the system C compiler into the user cache and loaded with ctypes. Where no
compiler is available the torch twin is used (same numbers, far slower).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from confidence_neurons.paths import cache_dir

log = logging.getLogger(__name__)

Backend = Literal["auto", "c", "torch"]
_SOURCE = Path(__file__).with_name("ablation_kernel.c")
_FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC"]
NMOM = 4  # highest order of the kernel's series for S2 (its NMOM)
EXACT_ORDER = NMOM + 1  # S2 by a second exponential
FAR_ORDER = -1  # |G| max|w| too large for either: the tilt comes from a separate pass with Q = w, D = G
MAX_TILT = 10.0  # largest |G| max|w| the kernel's second exponential takes (no overflow in float32)


@dataclass
class SoftmaxStats:
    """Per (token, neuron) reductions over the vocabulary; every field has shape (T, K)."""

    max: Float[Tensor, "T K"]
    S: Float[Tensor, "T K"]
    Sz: Float[Tensor, "T K"]
    shift: Float[Tensor, "T K"]
    y_target: Float[Tensor, "T K"]
    y_ref: Float[Tensor, "T K"]
    tilt: Float[Tensor, "T K"] | None = None  # logsumexp(y + G w) - logsumexp(y), when w and G are given
    order: Int[Tensor, "T K"] | None = None  # how tilt was computed (series_orders)

    @property
    def logsumexp(self) -> Tensor:
        return self.shift + self.S.log()

    @property
    def logsumexp2(self) -> Tensor:
        """logsumexp(y + G w), the logits moved along w."""
        return self.logsumexp + self.tilt

    @property
    def top1_changed(self) -> Tensor:
        """True where the reference token (the clean argmax) is no longer the top prediction."""
        return self.max > self.y_ref

    @property
    def loss(self) -> Tensor:
        """Cross-entropy of the target token."""
        return self.logsumexp - self.y_target

    @property
    def entropy(self) -> Tensor:
        return self.S.log() - self.Sz / self.S


def _cpu_flags() -> bytes:
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith((b"flags", b"Features"))), b"")
    except OSError:
        return platform.processor().encode()


@lru_cache(maxsize=1)
def _load_library() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        log.warning("no C compiler found: using the slower torch path for the ablation sweep")
        return None
    source = _SOURCE.read_bytes()
    # -march=native: a build is only valid on a processor with the same instruction sets, so the
    # processor's flags are part of the key (a cache shared between machines stays safe).
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + platform.machine().encode() + _cpu_flags()).hexdigest()[
        :16
    ]
    lib_path = cache_dir() / "kernels" / f"ablation_kernel_{key}.so"
    lib_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _safe_to_load(lib_path):
        return None
    if not lib_path.exists():
        with tempfile.TemporaryDirectory(dir=lib_path.parent) as tmp:
            tmp_lib = Path(tmp) / lib_path.name
            cmd = [cc, *_FLAGS, str(_SOURCE), "-o", str(tmp_lib), "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                log.warning("compiling the fused kernel failed (%s); using the torch path", proc.stderr.strip()[:500])
                return None
            os.replace(tmp_lib, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    lib.ablation_softmax_stats.restype = None
    if lib.ablation_kernel_nmom() != NMOM:
        raise RuntimeError(f"the compiled kernel {lib_path} computes {lib.ablation_kernel_nmom()} moments, not {NMOM}")
    return lib


def _safe_to_load(lib_path: Path) -> bool:
    """A compiled library is only loaded from a folder, and as a file, that this user owns and no one
    else can write: loading it runs its code.
    """
    uid = os.getuid() if hasattr(os, "getuid") else None
    for path in (lib_path.parent, lib_path):
        if not path.exists() or uid is None:
            continue
        st = path.stat()
        if st.st_uid != uid or st.st_mode & 0o022:
            log.warning(
                "not loading the kernel from %s: it is owned by another user or writable by others; "
                "using the torch path (delete it, or set CONFIDENCE_NEURONS_CACHE to a private folder)",
                path,
            )
            return False
    return True


def c_kernel_available() -> bool:
    """True when the fused C kernel is compiled (or compiles now) and loads."""
    return _load_library() is not None


def _ptr(x: Tensor | None) -> ctypes.c_void_p | None:
    return None if x is None else ctypes.c_void_p(x.data_ptr())


def _prep(x: Tensor | None, dtype=torch.float32) -> Tensor | None:
    return None if x is None else x.detach().to("cpu", dtype).contiguous()


def moment_powers(w: Float[Tensor, " V"]) -> Float[Tensor, "m V"]:
    """Rows w^1 .. w^NMOM, float32 and contiguous, as the kernel reads them."""
    w = w.detach().to("cpu", torch.float64)
    return torch.stack([w**m for m in range(1, NMOM + 1)]).float().contiguous()


def series_error_bound(x: Tensor, order: int) -> Tensor:
    """Bound on the error of log S2 (S2 = sum exp(y + G w - shift)) when the series is cut after
    ``order``, with x = |G| max|w|.

    S2/S = E_p[exp(G w)] under p = softmax(y). Cutting its Taylor series after G^n changes it by at
    most x^(n+1) e^x / (n+1)! (Lagrange remainder, |G w| <= x), while E_p[exp(G w)] >= e^(-x); so the
    relative error, and hence the error of log S2, is at most x^(n+1) e^(2x) / (n+1)! (for eps << 1).
    """
    x = x.double()
    return x.pow(order + 1) * (2 * x).exp() / math.factorial(order + 1)


def series_orders(G: Float[Tensor, "T K"], w_max: float, tol: float) -> Int[Tensor, "T K"]:
    """Each pair's cheapest way to S2 with an error below ``tol`` (in log S2): 0 where G = 0, the
    lowest series order whose bound is below tol, else EXACT_ORDER, or FAR_ORDER beyond MAX_TILT.
    """
    x = G.double().abs() * w_max
    order = torch.full(G.shape, EXACT_ORDER, dtype=torch.int32)
    for n in range(NMOM, 0, -1):
        order[series_error_bound(x, n) <= tol] = n
    order[x == 0] = 0
    order[x > MAX_TILT] = FAR_ORDER
    return order


def softmax_stats(
    L: Float[Tensor, "T V"],
    U: Float[Tensor, "K V"],
    bias: Float[Tensor, " V"],
    A: Float[Tensor, "T K"],
    B: Float[Tensor, "T K"],
    target: Int[Tensor, " T"],
    *,
    shift: Float[Tensor, " T"] | None = None,
    ref: Int[Tensor, " T"] | None = None,
    P: Float[Tensor, "T V"] | None = None,
    C: Float[Tensor, "T K"] | None = None,
    Q: Float[Tensor, " V"] | None = None,
    D: Float[Tensor, "T K"] | None = None,
    w: Float[Tensor, " V"] | None = None,
    G: Float[Tensor, "T K"] | None = None,
    w_max: float | None = None,
    tol: float = 1e-7,
    softcap: float | None = None,
    backend: Backend = "auto",
) -> SoftmaxStats:
    """Reduce ``y = cap(A L + B U + C P + bias) + D Q`` over the vocabulary for every (t, k).

    ``shift`` (default: max of L + bias per token) only needs to be close to the logits' maximum;
    ``ref`` (default: argmax of L + bias) is the token whose top-1 status ``top1_changed`` reports.
    With ``w`` and ``G`` (only without Q and soft-capping) ``tilt`` holds
    logsumexp(y + G w) - logsumexp(y) = log E_softmax(y)[exp(G w)], within ``tol`` of exact
    (``w_max``, default max |w|, enters the bound); pairs with |G| w_max > MAX_TILT get a separate
    exact pass.
    """
    if (P is None) != (C is None) or (Q is None) != (D is None) or (w is None) != (G is None):
        raise ValueError("P and C (and Q and D, and w and G) must be given together")
    if w is not None and (Q is not None or softcap):
        raise ValueError("the tilt along w (w, G) is computed for logits without a D Q term or soft-capping")
    if shift is None or ref is None:
        base = L.float() + bias.float()
        shift = base.max(-1).values if shift is None else shift
        ref = base.argmax(-1) if ref is None else ref
    lib = _load_library() if backend in ("auto", "c") else None
    if backend == "c" and lib is None:
        raise RuntimeError("the C kernel is not available (no working C compiler); use backend='torch'")
    if lib is None:
        out = softmax_stats_torch(L, U, bias, A, B, target, ref=ref, P=P, C=C, Q=Q, D=D, w=w, G=G, softcap=softcap)
        if w is not None:
            out.order = torch.full(G.shape, EXACT_ORDER, dtype=torch.int32)
        return out
    L, U, bias, A, B, P, C, Q, D, G = (_prep(x) for x in (L, U, bias, A, B, P, C, Q, D, G))
    target, ref = (x.to("cpu", torch.int64).contiguous() for x in (target, ref))
    shift = _prep(shift)
    T, V = L.shape
    K = U.shape[0]
    W = order = None
    if w is not None:
        W = moment_powers(w)
        order = series_orders(G, float(w.abs().max()) if w_max is None else w_max, tol)
    R = None if w is None else torch.empty(T, K)
    out = SoftmaxStats(*(torch.empty(T, K) for _ in range(6)))
    lib.ablation_softmax_stats(
        ctypes.c_int(T),
        ctypes.c_int(K),
        ctypes.c_int(V),
        _ptr(L),
        _ptr(U),
        _ptr(P),
        _ptr(Q),
        _ptr(W),
        _ptr(bias),
        _ptr(A),
        _ptr(B),
        _ptr(C),
        _ptr(D),
        _ptr(G),
        _ptr(order),
        ctypes.c_float(softcap or 0.0),
        _ptr(shift),
        _ptr(target),
        _ptr(ref),
        _ptr(out.max),
        _ptr(out.S),
        _ptr(out.Sz),
        _ptr(out.shift),
        _ptr(out.y_target),
        _ptr(out.y_ref),
        _ptr(R),
    )
    if w is not None:
        out.tilt, out.order = R.double().log1p().float(), order
        if (order == FAR_ORDER).any():  # rare: the logits y + G w themselves, on the rows and columns concerned
            ti, ki = (order == FAR_ORDER).nonzero(as_tuple=True)
            (rows, ri), (cols, ci) = ti.unique(return_inverse=True), ki.unique(return_inverse=True)
            sub = lambda x: None if x is None else x[rows][:, cols]  # noqa: E731
            far = softmax_stats(
                L[rows],
                U[cols],
                bias,
                sub(A),
                sub(B),
                target[rows],
                shift=shift[rows],
                ref=ref[rows],
                P=None if P is None else P[rows],
                C=sub(C),
                Q=_prep(w),
                D=sub(G),
                backend=backend,
            )
            out.tilt[ti, ki] = far.logsumexp[ri, ci] - out.logsumexp[ti, ki]
    return out


def ablated_logits_torch(L, U, bias, A, B, *, P=None, C=None, Q=None, D=None, softcap=None) -> Tensor:
    """The (T, K, V) logits the kernel reduces, materialised: for tests and small chunks."""
    z = A[:, :, None] * L[:, None, :] + B[:, :, None] * U[None, :, :] + bias
    if P is not None:
        z = z + C[:, :, None] * P[:, None, :]
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    if Q is not None:
        z = z + D[:, :, None] * Q
    return z


def softmax_stats_torch(
    L,
    U,
    bias,
    A,
    B,
    target,
    *,
    ref=None,
    P=None,
    C=None,
    Q=None,
    D=None,
    w=None,
    G=None,
    softcap=None,
    max_elements: int = 2**24,
) -> SoftmaxStats:
    """The torch twin of the kernel (exponentials relative to each pair's own maximum), chunked over
    tokens so that memory stays bounded. tilt is always exact.
    """
    if ref is None:
        ref = (L + bias).argmax(-1)
    T, V = L.shape
    K = U.shape[0]
    rows = max(1, max_elements // max(1, K * V))
    parts = []
    for t0 in range(0, T, rows):
        sl = slice(t0, t0 + rows)
        sub = lambda x: None if x is None else x[sl]  # noqa: E731
        y = ablated_logits_torch(L[sl], U, bias, A[sl], B[sl], P=sub(P), C=sub(C), Q=Q, D=sub(D), softcap=softcap)
        m = y.max(-1).values
        d = y - m[..., None]
        e = d.exp()
        at = lambda idx: y.gather(-1, idx[sl].view(-1, 1, 1).expand(-1, K, 1)).squeeze(-1)  # noqa: E731
        tilt = None if w is None else (y + G[sl][..., None] * w.float()).logsumexp(-1) - y.logsumexp(-1)
        parts.append((m, e.sum(-1), (d * e).sum(-1), m, at(target), at(ref), tilt))
    cat = [torch.cat(p) if p[0] is not None else None for p in zip(*parts)]
    return SoftmaxStats(*cat)
