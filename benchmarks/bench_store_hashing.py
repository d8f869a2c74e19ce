"""What verifying a run folder costs a rerun (issue 17.2).

Builds an activation store of the embedded model's shapes (SmolLM2-135M: d_model 576, d_mlp 1536)
for the paper's default scan (100 sequences of 256 tokens: 25,500 rows, 216 MB) batch by batch
through ``ActivationStore``, and times:
  1. writing it with the per-batch sha256 taken from memory, against the same writes unhashed;
  2. verifying the finished store as a rerun does (re-read every batch and re-hash it);
  3. the stamp of the sweep's checkpoints: ``layer_digest`` of the real final layer and the
     cache digest of the analysed rows (no re-read: derived from the store's record);
  4. loading the embedded model, the fixed cost every rerun pays before any of this.

    python benchmarks/bench_store_hashing.py [--n-seqs 100] [--seq-len 256] [--batch-size 8] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from confidence_neurons.analysis.forward import ForwardCache, _batches, layer_digest
from confidence_neurons.files import write_at
from confidence_neurons.stores import ActivationStore


def _build(folder: Path, shapes: dict, batches: list, blocks: dict, *, hashed: bool) -> float:
    store = ActivationStore(folder)
    t0 = time.perf_counter()
    writer = store.open({"bench": 1}, shapes, batches)
    for b, (r0, r1) in enumerate(batches):
        part = {name: a[r0:r1] for name, a in blocks.items()}
        if hashed:
            writer.write(b, part)
        else:  # the same ordinary writes and syncs, no hashing: what hashing adds is the difference
            for name, rows in part.items():
                row_bytes = rows[:1].nbytes
                path = folder / f"{name}.npy"
                write_at(writer._fd(name), writer.meta["headers"][name] + r0 * row_bytes, rows, path, name)
            for fd in writer._fds.values():
                os.fdatasync(fd)
    writer.finish({})
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-seqs", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--d-model", type=int, default=576)
    p.add_argument("--d-mlp", type=int, default=1536)
    p.add_argument("--dir", type=Path, default=None, help="where to build the store (default: a temporary folder)")
    p.add_argument("--skip-model", action="store_true", help="do not load the embedded model (step 3 and 4)")
    args = p.parse_args()
    n = args.n_seqs * (args.seq_len - 1)
    shapes = {
        "resid": ((n, args.d_model), "float32"),
        "acts": ((n, args.d_mlp), "float32"),
        "target": ((n,), "int64"),
    }
    rng = np.random.default_rng(0)
    blocks = {
        "resid": rng.standard_normal((n, args.d_model), dtype=np.float32),
        "acts": rng.standard_normal((n, args.d_mlp), dtype=np.float32),
        "target": rng.integers(0, 49152, n),
    }
    batches = _batches(args.n_seqs, args.seq_len, args.batch_size)
    size = sum(a.nbytes for a in blocks.values())
    print(f"store: {n:,} rows, {len(batches)} batches, {size / 1e6:.1f} MB")
    root = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        t_plain = _build(root / "plain", shapes, batches, blocks, hashed=False)
        t_hashed = _build(root / "hashed", shapes, batches, blocks, hashed=True)
        print(f"1. write: {t_hashed:.2f} s with per-batch sha256, {t_plain:.2f} s without")
        store = ActivationStore(root / "hashed")
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            writer = store.open({"bench": 1}, shapes, batches)
            times.append(time.perf_counter() - t0)
            assert writer.complete and not store.problems
        print(f"2. verify the finished store (re-read and re-hash): {', '.join(f'{t:.2f}' for t in times)} s")
        arrays = writer.arrays()
        cache = ForwardCache(
            torch.from_numpy(arrays["resid"]),
            torch.from_numpy(arrays["acts"]),
            torch.from_numpy(arrays["target"]),
            args.seq_len,
            digest=writer.digest,
        )
        keep = torch.rand(n, generator=torch.Generator().manual_seed(0)) < 0.9
        t0 = time.perf_counter()
        sub = cache.select(keep)
        t_select = time.perf_counter() - t0
        t0 = time.perf_counter()
        sub.content_digest()
        t_digest = time.perf_counter() - t0
        print(f"3. cache digest of the analysed rows: {t_digest * 1e3:.1f} ms (select in memory {t_select:.2f} s)")
        if not args.skip_model:
            from confidence_neurons import load_model
            from confidence_neurons.models.final_layer import final_layer

            t0 = time.perf_counter()
            model = load_model()
            t_load = time.perf_counter() - t0
            layer = final_layer(model)
            t0 = time.perf_counter()
            layer_digest(layer)
            print(f"3. layer_digest of the embedded model's final layer: {time.perf_counter() - t0:.2f} s")
            print(f"4. load the embedded model: {t_load:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
