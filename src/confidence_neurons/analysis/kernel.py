"""Softmax statistics of closed-form ablated logits: a fused C kernel and its torch twin.

Both compute, for every (token t, neuron k) of a chunk, the logits
``y = cap(A*L[t] + B*U[k] + C*P[t] + bias) + D*Q`` and reduce them over the vocabulary to
(max, argmax, S = sum exp(y - max), Sz = sum (y - max) exp(y - max), y[target]).
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
    argmax: Int[Tensor, "T K"]
    S: Float[Tensor, "T K"]
    Sz: Float[Tensor, "T K"]
    y_target: Float[Tensor, "T K"]

    @property
    def logsumexp(self) -> Tensor:
        return self.max + self.S.log()

    @property
    def loss(self) -> Tensor:
        """Cross-entropy of the target token."""
        return self.logsumexp - self.y_target

    @property
    def entropy(self) -> Tensor:
        return self.S.log() - self.Sz / self.S


@lru_cache(maxsize=1)
def _load_library() -> ctypes.CDLL | None:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        log.warning("no C compiler found: using the slower torch path for the ablation sweep")
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(_FLAGS).encode() + platform.machine().encode()).hexdigest()[:16]
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
    P: Float[Tensor, "T V"] | None = None,
    C: Float[Tensor, "T K"] | None = None,
    Q: Float[Tensor, "V"] | None = None,
    D: Float[Tensor, "T K"] | None = None,
    softcap: float | None = None,
    backend: Backend = "auto",
) -> SoftmaxStats:
    """Reduce ``y = cap(A L + B U + C P + bias) + D Q`` over the vocabulary for every (t, k)."""
    if (P is None) != (C is None) or (Q is None) != (D is None):
        raise ValueError("P and C (and Q and D) must be given together")
    lib = _load_library() if backend in ("auto", "c") else None
    if backend == "c" and lib is None:
        raise RuntimeError("the C kernel is not available (no working C compiler); use backend='torch'")
    if lib is None:
        return softmax_stats_torch(L, U, bias, A, B, target, P=P, C=C, Q=Q, D=D, softcap=softcap)
    L, U, bias, A, B, P, C, Q, D = (_prep(x) for x in (L, U, bias, A, B, P, C, Q, D))
    target = target.to("cpu", torch.int64).contiguous()
    T, V = L.shape
    K = U.shape[0]
    out = SoftmaxStats(
        max=torch.empty(T, K), argmax=torch.empty(T, K, dtype=torch.int64),
        S=torch.empty(T, K), Sz=torch.empty(T, K), y_target=torch.empty(T, K),
    )
    lib.ablation_softmax_stats(
        ctypes.c_int(T), ctypes.c_int(K), ctypes.c_int(V),
        _ptr(L), _ptr(U), _ptr(P), _ptr(Q), _ptr(bias),
        _ptr(A), _ptr(B), _ptr(C), _ptr(D), ctypes.c_float(softcap or 0.0),
        _ptr(target), _ptr(out.max), _ptr(out.argmax), _ptr(out.S), _ptr(out.Sz), _ptr(out.y_target),
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


def softmax_stats_torch(L, U, bias, A, B, target, *, P=None, C=None, Q=None, D=None, softcap=None,
                        max_elements: int = 2**24) -> SoftmaxStats:
    """The torch twin of the kernel, chunked over tokens so that memory stays bounded."""
    T, V = L.shape
    K = U.shape[0]
    rows = max(1, max_elements // max(1, K * V))
    parts = []
    for t0 in range(0, T, rows):
        sl = slice(t0, t0 + rows)
        sub = lambda x: None if x is None else x[sl]  # noqa: E731
        y = ablated_logits_torch(L[sl], U, bias, A[sl], B[sl], P=sub(P), C=sub(C), Q=Q, D=sub(D), softcap=softcap)
        m, arg = y.max(-1)
        d = y - m[..., None]
        e = d.exp()
        tgt = target[sl].view(-1, 1, 1).expand(-1, K, 1)
        parts.append((m, arg, e.sum(-1), (d * e).sum(-1), y.gather(-1, tgt).squeeze(-1)))
    return SoftmaxStats(*(torch.cat(p) for p in zip(*parts)))
