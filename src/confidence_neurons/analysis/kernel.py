"""Softmax statistics of closed-form ablated logits: a fused C kernel and fused torch paths.

All compute, for every (token t, neuron k) of a chunk, the logits
``y = cap(A*L[t] + B*U[k] + C*P[t] + bias) + D*Q`` and reduce them over the vocabulary to
(max, S = sum exp(y - shift), Sz = sum (y - shift) exp(y - shift), shift, y[target], y[ref]),
from which loss, entropy and "did the top-1 prediction change" follow exactly. Given a vector w and
a coefficient G per pair, also logsumexp(y + G w), of the logits moved along w (DE_freq, Eq. 7),
in the same pass: by a series in G with an error below ``tol`` where
that is cheaper (C kernel), by a second exponential where not (``series_orders``).

Backends (``resolve_backend``):
  * "c": ``ablation_kernel.c``, compiled once with the system C compiler into the user cache and
    loaded with ctypes; CPU only; never materialises the (T, K, d_vocab) logits.
  * "compiled": ``fused_tile`` (one pass over a (T, K, V) tile) through ``torch.compile``: Triton on
    CUDA, C++ on the CPU. Where compilation fails it warns once and runs eagerly
    (``describe_backend`` says which ran).
  * "torch": ``fused_tile`` eagerly, in row groups of ``tile_elements`` (T, K, V) elements.
  * "auto": "c" on the CPU where it compiles, "compiled" on CUDA, "torch" otherwise.
``softmax_stats_torch`` materialises the logits and takes exponentials around each pair's own
maximum: the slow twin the tests hold every backend to.
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

from confidence_neurons.errors import ConfigError
from confidence_neurons.paths import cache_dir

log = logging.getLogger(__name__)

Backend = Literal["auto", "c", "torch", "compiled"]
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
    lib.exp_sum_floor.restype = None
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


def _prep(x: Tensor | None, device: torch.device | str = "cpu") -> Tensor | None:
    return None if x is None else x.detach().to(device, torch.float32).contiguous()


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
    order = torch.full(G.shape, EXACT_ORDER, dtype=torch.int32, device=G.device)
    for n in range(NMOM, 0, -1):
        order[series_error_bound(x, n) <= tol] = n
    order[x == 0] = 0
    order[x > MAX_TILT] = FAR_ORDER
    return order


def resolve_backend(backend: Backend, device: torch.device | str | None = None) -> str:
    """The kernel that ``backend`` means on ``device`` (default CPU): "c", "compiled" or "torch".

    "auto" is the fused C kernel on the CPU where it compiles (measured faster there than the
    compiled torch path, see docs/speed.md), the compiled fused reduction on CUDA, and the eager torch
    path elsewhere. The C kernel only runs on the CPU. The environment variable
    ``CONFIDENCE_NEURONS_BACKEND`` (c, torch or compiled) replaces "auto" where that backend can run,
    so that a whole test suite or pipeline can be run on one backend.
    """
    dev = torch.device(device if device is not None else "cpu")
    if backend == "auto" and (env := os.environ.get("CONFIDENCE_NEURONS_BACKEND", "").strip()):
        if env not in ("c", "torch", "compiled"):
            raise ConfigError(f"CONFIDENCE_NEURONS_BACKEND={env!r} is not a kernel backend; use c, torch or compiled")
        if env != "c" or dev.type == "cpu":
            backend = env
    if backend not in ("auto", "c", "torch", "compiled"):
        raise ConfigError(f"unknown kernel backend {backend!r}; choose auto, c, torch or compiled", field="backend")
    if backend == "c" and dev.type != "cpu":
        raise ConfigError(
            f"the C kernel runs on the CPU, not on {dev}; use --backend compiled or torch with this device",
            field="backend",
        )
    if backend != "auto":
        return backend
    if dev.type == "cpu":
        return "c" if c_kernel_available() else "torch"
    return "compiled" if dev.type == "cuda" else "torch"


def describe_backend(backend: Backend, device: torch.device | str | None = None) -> str:
    """What runs for ``backend`` on ``device``, in words, including a compiled path that fell back to eager."""
    kind = resolve_backend(backend, device)
    if kind == "c":
        return "fused C"
    if kind == "compiled":
        return "torch eager (torch.compile failed)" if _COMPILE_ERROR else "torch.compile"
    return "torch eager"


#: Elements of one (tokens x neurons x vocabulary) tile on the CPU: 2^24 (64 MiB per float32
#: intermediate of the eager path; the compiled path keeps none of that size).
CPU_TILE_ELEMENTS = 2**24
#: Share of the device's free memory one tile may use, and how many float32 (T, K, V) intermediates
#: the eager path keeps alive at once (the compiled path fuses them away; the bound holds for both).
TILE_MEMORY_FRACTION = 0.25
EAGER_INTERMEDIATES = 8


def tile_elements(device: torch.device | str | None = None) -> int:
    """Elements per (T, K, V) tile for the torch paths: CPU_TILE_ELEMENTS on the CPU; on CUDA, such that
    EAGER_INTERMEDIATES float32 buffers of the tile fit in TILE_MEMORY_FRACTION of the free memory.
    """
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return max(2**20, int(free * TILE_MEMORY_FRACTION) // (4 * EAGER_INTERMEDIATES))
    return CPU_TILE_ELEMENTS


def fused_tile(
    L: Tensor,
    U: Tensor,
    bias: Tensor,
    A: Tensor,
    B: Tensor,
    shift: Tensor,
    ref: Tensor,
    P: Tensor | None,
    C: Tensor | None,
    Q: Tensor | None,
    D: Tensor | None,
    w: Tensor | None,
    G: Tensor | None,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """One (T, K, V) tile of the reduction, in one pass over the vocabulary (what ``torch.compile`` fuses).

    With y = cap(A L + B U + C P + bias) + D Q and d = y - shift (shift and the outputs (T, K)):
    (max over v != ref[t] of y, sum exp(d), sum d exp(d), and with w: sum exp(d + G w)).
    The reference token is left out of the max so that top-1 is decided against one value of y[ref]
    (computed by the caller), whatever rounding the fused code uses.
    """
    y = A[:, :, None] * L[:, None, :] + B[:, :, None] * U[None, :, :] + bias
    if P is not None:
        y = y + C[:, :, None] * P[:, None, :]
    if softcap:
        y = softcap * torch.tanh(y / softcap)
    if Q is not None:
        y = y + D[:, :, None] * Q
    is_ref = torch.arange(L.shape[1], device=L.device) == ref[:, None, None]
    mx = torch.where(is_ref, float("-inf"), y).amax(-1)
    d = y - shift[:, :, None]
    e = d.exp()
    S2 = None if w is None else (d + G[:, :, None] * w).exp().sum(-1)
    return mx, e.sum(-1), (d * e).sum(-1), S2


_COMPILE_ERROR: str | None = None  # why torch.compile failed, once it has
#: Inductor realises (stores) a pointwise result that several consumers read once it reads more than
#: ``realize_reads_threshold`` (4) inputs: the logits y read 5-8 (L, U, A, B, bias, ...), so by default
#: they would be written out as a (T, K, V) buffer. Recomputing them in each consumer keeps the tile
#: fused (checked in the generated code: no (T, K, V) store on CUDA; the CPU backend still stores
#: exp(y - shift), which it always keeps when reused).
_INDUCTOR_OPTIONS = {"realize_reads_threshold": 64}


@lru_cache(maxsize=1)
def _compiled_tile():
    """``fused_tile`` through torch.compile (Triton on CUDA, C++ on the CPU); dynamic shapes, so token
    and neuron chunks of any size share one compiled kernel per combination of optional terms.
    """
    return torch.compile(fused_tile, dynamic=True, options=_INDUCTOR_OPTIONS)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an out-of-memory error of any device (torch's, the host's, or a RuntimeError saying so)."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _pad_unit_dims(args: tuple) -> tuple:
    """Arguments of ``fused_tile`` with a token or neuron dimension of size 1 doubled (a copy of the row),
    so that torch.compile, which specialises sizes 0 and 1, keeps one kernel for every chunk size.
    """
    L, U, bias, A, B, shift, ref, P, C, Q, D, w, G, softcap = args
    two = lambda x, dim: None if x is None else torch.cat([x, x], dim)  # noqa: E731
    if L.shape[0] == 1:
        L, A, B, shift, ref, P, C, D, G = (two(x, 0) for x in (L, A, B, shift, ref, P, C, D, G))
    if U.shape[0] == 1:
        U = two(U, 0)
        A, B, shift, C, D, G = (two(x, 1) for x in (A, B, shift, C, D, G))
    return L, U, bias, A, B, shift, ref, P, C, Q, D, w, G, softcap


def _run_tile(compiled: bool, *args):
    global _COMPILE_ERROR
    if compiled and _COMPILE_ERROR is None:
        try:
            T, K = args[0].shape[0], args[1].shape[0]
            out = _compiled_tile()(*_pad_unit_dims(args))
            return tuple(None if x is None else x[:T, :K] for x in out)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back; memory errors do not
            if is_out_of_memory(exc):
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0]
            _COMPILE_ERROR = f"{type(exc).__name__}: {first_line[:300]}"
            log.warning("torch.compile of the sweep kernel failed (%s); using the eager torch path", _COMPILE_ERROR)
    return fused_tile(*args)


def _logits_at(idx, L, U, bias, A, B, P, C, Q, D, softcap) -> Tensor:
    """y[t, k, idx[t]], (T, K), from the columns at idx (the same expression as ``fused_tile``)."""
    col = idx[:, None]
    y = A * L.gather(1, col) + B * U[:, idx].T + bias[col]
    if P is not None:
        y = y + C * P.gather(1, col)
    if softcap:
        y = softcap * torch.tanh(y / softcap)
    if Q is not None:
        y = y + D * Q[col]
    return y


#: A pair whose logits' maximum lies further than this (nats) from the shift is redone around its maximum.
FAR_SHIFT = 60.0


def _tiled(compiled, L, U, bias, A, B, sh, ref, P, C, Q, D, w, G, softcap):
    """``fused_tile`` over row groups of at most ``tile_elements`` (T, K, V) elements; sh is (T, K)."""
    K, V = U.shape
    rows = max(1, tile_elements(L.device) // max(1, K * V))
    parts = []
    for t0 in range(0, L.shape[0], rows):
        sl = slice(t0, t0 + rows)
        sub = lambda x: None if x is None else x[sl]  # noqa: E731
        parts.append(
            _run_tile(
                compiled, L[sl], U, bias, A[sl], B[sl], sh[sl], ref[sl], sub(P), sub(C), Q, sub(D), w, sub(G), softcap
            )
        )
    return tuple(torch.cat(p) if p[0] is not None else None for p in zip(*parts))


def _stats_fused(L, U, bias, A, B, target, shift, ref, P, C, Q, D, w, G, softcap, compiled) -> SoftmaxStats:
    """The torch paths: ``fused_tile`` in row groups, relative to each token's shift; pairs whose
    maximum is far from it are redone around their own.
    """
    T, K = A.shape
    sh = shift[:, None].expand(T, K).contiguous()
    mx, S, Sz, S2 = _tiled(compiled, L, U, bias, A, B, sh, ref, P, C, Q, D, w, G, softcap)
    y_ref = _logits_at(ref, L, U, bias, A, B, P, C, Q, D, softcap)
    y_target = _logits_at(target, L, U, bias, A, B, P, C, Q, D, softcap)
    top = torch.maximum(mx, y_ref)
    far = ((top - sh).abs() > FAR_SHIFT) | ~torch.isfinite(S) | (S <= 0)
    if bool(far.any()):  # rare: exponentials around the pair's own maximum, on the rows and columns concerned
        ti, ki = far.nonzero(as_tuple=True)
        (r, ri), (c, ci) = ti.unique(return_inverse=True), ki.unique(return_inverse=True)
        pick = lambda x: None if x is None else x[r][:, c]  # noqa: E731
        rows_of = lambda x: None if x is None else x[r]  # noqa: E731
        _, S_f, Sz_f, S2_f = _tiled(
            compiled,
            L[r],
            U[c],
            bias,
            pick(A),
            pick(B),
            pick(top),
            ref[r],
            rows_of(P),
            pick(C),
            Q,
            pick(D),
            w,
            pick(G),
            softcap,
        )
        S[ti, ki], Sz[ti, ki], sh[ti, ki] = S_f[ri, ci], Sz_f[ri, ci], top[ti, ki]
        if S2 is not None:
            S2[ti, ki] = S2_f[ri, ci]
    out = SoftmaxStats(top, S, Sz, sh, y_target, y_ref)
    if S2 is not None:
        out.tilt = (S2.double().log() - S.double().log()).float()
    return out


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
    exact pass. The outputs are float32 on the inputs' device; ``backend`` picks the kernel
    (``resolve_backend``): the C kernel takes the series where it is cheaper, the torch paths
    (eager or compiled) always take the tilt by a second exponential.
    """
    if (P is None) != (C is None) or (Q is None) != (D is None) or (w is None) != (G is None):
        raise ValueError("P and C (and Q and D, and w and G) must be given together")
    if w is not None and (Q is not None or softcap):
        raise ValueError("the tilt along w (w, G) is computed for logits without a D Q term or soft-capping")
    device = L.device
    kind = resolve_backend(backend, device)
    if kind == "c" and _load_library() is None:
        raise RuntimeError("the C kernel is not available (no working C compiler); use backend='torch'")
    L, U, bias, A, B, P, C, Q, D, G = (_prep(x, device) for x in (L, U, bias, A, B, P, C, Q, D, G))
    if shift is None or ref is None:
        base = L + bias
        shift = base.max(-1).values if shift is None else shift
        ref = base.argmax(-1) if ref is None else ref
    target, ref = (x.to(device, torch.int64).contiguous() for x in (target, ref))
    shift = _prep(shift, device)
    order = None
    if w is not None:
        w = _prep(w, device)
        wm = float(w.abs().max()) if w_max is None else w_max
        if kind == "c":
            order = series_orders(G, wm, tol)
        else:
            order = torch.full(G.shape, EXACT_ORDER, dtype=torch.int32, device=device)
            order[G.abs() * wm > MAX_TILT] = FAR_ORDER
    if kind == "c":
        out = _stats_c(L, U, bias, A, B, target, shift, ref, P, C, Q, D, w, G, order, softcap)
    else:
        G_near = None if w is None else torch.where(order == FAR_ORDER, 0.0, G)
        out = _stats_fused(L, U, bias, A, B, target, shift, ref, P, C, Q, D, w, G_near, softcap, kind == "compiled")
    if w is None:
        return out
    out.order = order
    if bool((order == FAR_ORDER).any()):  # rare: the logits y + G w themselves, on the rows and columns concerned
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
            Q=w,
            D=sub(G),
            backend=kind,
        )
        out.tilt[ti, ki] = far.logsumexp[ri, ci] - out.logsumexp[ti, ki]
    return out


def _stats_c(L, U, bias, A, B, target, shift, ref, P, C, Q, D, w, G, order, softcap) -> SoftmaxStats:
    """The fused C kernel on CPU tensors (float32 / int64, contiguous)."""
    lib = _load_library()
    T, V = L.shape
    K = U.shape[0]
    W = None if w is None else moment_powers(w)
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
        out.tilt = R.double().log1p().float()
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
    """The slow twin of every backend: the (T, K, V) logits materialised, exponentials relative to each
    pair's own maximum, chunked over tokens so that memory stays bounded; tilt always exact.
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


def _exp_sum(L: Tensor, U: Tensor, bias: Tensor, A: Tensor, B: Tensor) -> Tensor:
    return (A[:, :, None] * L[:, None, :] + B[:, :, None] * U[None, :, :] + bias).exp().sum(-1)


@lru_cache(maxsize=1)
def _compiled_exp_sum():
    return torch.compile(_exp_sum, dynamic=True, options=_INDUCTOR_OPTIONS)


def exp_sum_floor(L: Tensor, U: Tensor, bias: Tensor, A: Tensor, B: Tensor, backend: Backend = "auto") -> Tensor:
    """sum_v exp(A L + B U + bias), (T, K): the bare work any exact sweep pays per logit (the logit itself
    and one exponential), as the benchmark's floor. "c": the C kernel's blocks, tiles, compiler and
    flags, nothing else; otherwise the same expression through torch.compile ("torch": eagerly), in
    row groups of ``tile_elements``.
    """
    kind = resolve_backend(backend, L.device)
    if kind == "c":
        lib = _load_library()
        L, U, bias, A, B = (_prep(x) for x in (L, U, bias, A, B))
        out = torch.empty(A.shape)
        dims = (ctypes.c_int(n) for n in (L.shape[0], U.shape[0], L.shape[1]))
        lib.exp_sum_floor(*dims, *map(_ptr, (L, U, bias, A, B, out)))
        return out
    fn = _compiled_exp_sum() if kind == "compiled" else _exp_sum
    rows = max(1, tile_elements(L.device) // max(1, U.shape[0] * L.shape[1]))
    parts = [fn(L[t0 : t0 + rows], U, bias, A[t0 : t0 + rows], B[t0 : t0 + rows]) for t0 in range(0, L.shape[0], rows)]
    return torch.cat(parts)
