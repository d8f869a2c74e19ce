"""Softmax statistics of closed-form ablated logits: a fused C kernel and its torch twin.

Both compute, for every (token t, neuron k) of a chunk, the logits
``y = cap(A*L[t] + B*U[k] + C*P[t] + bias) + D*Q`` and reduce them over the vocabulary to
(max, S = sum exp(y - shift), Sz = sum (y - shift) exp(y - shift), shift, y[target], y[ref]),
from which loss, entropy and "did the top-1 prediction change" follow exactly.
The C kernel (``ablation_kernel.c``) never materialises the (T, K, d_vocab) logits; it is
compiled once with the system C compiler into the user cache and loaded with ctypes. Where no
compiler is available the torch twin is used (same numbers, far slower).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
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


@dataclass
class SoftmaxStats:
    """Per (token, neuron) reductions over the vocabulary; every field has shape (T, K)."""

    max: Float[Tensor, "T K"]
    S: Float[Tensor, "T K"]
    Sz: Float[Tensor, "T K"]
    shift: Float[Tensor, "T K"]
    y_target: Float[Tensor, "T K"]
    y_ref: Float[Tensor, "T K"]

    @property
    def logsumexp(self) -> Tensor:
        return self.shift + self.S.log()

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
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + platform.machine().encode() + _cpu_flags()).hexdigest()[:16]
    lib_path = cache_dir() / "kernels" / f"ablation_kernel_{key}.so"
    if not lib_path.exists():
        lib_path.parent.mkdir(parents=True, exist_ok=True)
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
    return lib


def c_kernel_available() -> bool:
    return _load_library() is not None


def _ptr(x: Tensor | None) -> ctypes.c_void_p | None:
    return None if x is None else ctypes.c_void_p(x.data_ptr())


def _prep(x: Tensor | None, dtype=torch.float32) -> Tensor | None:
    return None if x is None else x.detach().to("cpu", dtype).contiguous()


def softmax_stats(
    L: Float[Tensor, "T V"],
    U: Float[Tensor, "K V"],
    bias: Float[Tensor, "V"],
    A: Float[Tensor, "T K"],
    B: Float[Tensor, "T K"],
    target: Int[Tensor, "T"],
    *,
    shift: Float[Tensor, "T"] | None = None,
    ref: Int[Tensor, "T"] | None = None,
    P: Float[Tensor, "T V"] | None = None,
    C: Float[Tensor, "T K"] | None = None,
    Q: Float[Tensor, "V"] | None = None,
    D: Float[Tensor, "T K"] | None = None,
    softcap: float | None = None,
    backend: Backend = "auto",
) -> SoftmaxStats:
    """Reduce ``y = cap(A L + B U + C P + bias) + D Q`` over the vocabulary for every (t, k).

    ``shift`` (default: max of L + bias per token) only needs to be close to the logits' maximum;
    ``ref`` (default: argmax of L + bias) is the token whose top-1 status ``top1_changed`` reports.
    """
    if shift is None or ref is None:
        base = L.float() + bias.float()
        shift = base.max(-1).values if shift is None else shift
        ref = base.argmax(-1) if ref is None else ref
    if (P is None) != (C is None) or (Q is None) != (D is None):
        raise ValueError("P and C (and Q and D) must be given together")
    lib = _load_library() if backend in ("auto", "c") else None
    if backend == "c" and lib is None:
        raise RuntimeError("the C kernel is not available (no working C compiler); use backend='torch'")
    if lib is None:
        return softmax_stats_torch(L, U, bias, A, B, target, ref=ref, P=P, C=C, Q=Q, D=D, softcap=softcap)
    L, U, bias, A, B, P, C, Q, D = (_prep(x) for x in (L, U, bias, A, B, P, C, Q, D))
    target, ref = (x.to("cpu", torch.int64).contiguous() for x in (target, ref))
    shift = _prep(shift)
    T, V = L.shape
    K = U.shape[0]
    out = SoftmaxStats(*(torch.empty(T, K) for _ in range(6)))
    lib.ablation_softmax_stats(
        ctypes.c_int(T), ctypes.c_int(K), ctypes.c_int(V),
        _ptr(L), _ptr(U), _ptr(P), _ptr(Q), _ptr(bias),
        _ptr(A), _ptr(B), _ptr(C), _ptr(D), ctypes.c_float(softcap or 0.0),
        _ptr(shift), _ptr(target), _ptr(ref),
        _ptr(out.max), _ptr(out.S), _ptr(out.Sz), _ptr(out.shift), _ptr(out.y_target), _ptr(out.y_ref),
    )
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


def softmax_stats_torch(L, U, bias, A, B, target, *, ref=None, P=None, C=None, Q=None, D=None, softcap=None,
                        max_elements: int = 2**24) -> SoftmaxStats:
    """The torch twin of the kernel (exponentials relative to each pair's own maximum), chunked over
    tokens so that memory stays bounded."""
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
        parts.append((m, e.sum(-1), (d * e).sum(-1), m, at(target), at(ref)))
    return SoftmaxStats(*(torch.cat(p) for p in zip(*parts)))
