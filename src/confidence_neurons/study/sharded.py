"""One big ablation sweep cut into neuron chunks over Ray workers (``scan --ray``).

The scan's forward pass is already memory-mapped in its run directory (``ActivationStore``). Each
worker opens those files itself (the run directory must be on a folder every worker sees), runs
``analysis.sweep.sweep`` on its share of the neuron chunks (``only_chunks``) and keeps each
finished chunk in the run's checkpoint store. The scan then runs the plain sweep, which finds every
chunk finished and reads them back: the merged table is the single-process sweep's, chunk for
chunk, because each chunk is computed by the same code on the same token chunks (and the
checkpoint stamp checks that every worker read the same data). A worker killed half-way is retried
by Ray; its finished chunks are not recomputed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from confidence_neurons.analysis.forward import ForwardCache
from confidence_neurons.analysis.frequency import FreqDirection
from confidence_neurons.analysis.sweep import chunk_starts, sweep
from confidence_neurons.models.final_layer import FinalLayer
from confidence_neurons.rundir import CheckpointStore
from confidence_neurons.study.engine import cluster_cpus, cluster_gpus, ray_session

log = logging.getLogger(__name__)

CACHE_ARRAYS = ("resid", "acts", "target", "mlp_out")


def split_chunks(starts: list[int], workers: int) -> list[list[int]]:
    """``starts`` cut into at most ``workers`` contiguous runs of nearly equal length (none empty)."""
    workers = max(1, min(workers, len(starts)))
    size, extra = divmod(len(starts), workers)
    out, i = [], 0
    for w in range(workers):
        n = size + (w < extra)
        out.append(starts[i : i + n])
        i += n
    return out


def open_cache(folder: Path, prefix: str, seq_len: int) -> ForwardCache:
    """The ForwardCache held by ``folder/{prefix}{resid,acts,target[,mlp_out]}.npy``, memory-mapped."""
    arrays = {}
    for name in CACHE_ARRAYS:
        path = Path(folder) / f"{prefix}{name}.npy"
        if path.is_file():
            arrays[name] = torch.from_numpy(np.load(path, mmap_mode="c"))
    return ForwardCache(
        arrays["resid"], arrays["acts"], arrays["target"], seq_len, mlp_out=arrays.get("mlp_out"), from_store=True
    )


def _shard(
    layer: FinalLayer,
    freq: FreqDirection | None,
    cache_folder: str,
    prefix: str,
    seq_len: int,
    checkpoints: str,
    only: list[int],
    sweep_kwargs: dict,
    hook: Callable[[], None] | None,
) -> dict:
    """One worker's share: its chunks computed into the checkpoint store (finished ones reused)."""
    if hook is not None:  # tests: kill this worker on its first attempt
        hook()
    t0 = time.perf_counter()
    cache = open_cache(Path(cache_folder), prefix, seq_len)
    if sweep_kwargs.get("cache_digest") is not None:  # the scan's own record of these rows, for the stamps
        cache.digest = sweep_kwargs["cache_digest"]
    fx = sweep(
        layer,
        cache,
        freq=freq,
        checkpoints=CheckpointStore(Path(checkpoints)),
        progress=False,
        only_chunks=only,
        **{k: v for k, v in sweep_kwargs.items() if k != "cache_digest"},
    )
    return {
        "chunks": len(only),
        "reused": fx.chunks_reused,
        "seconds": round(time.perf_counter() - t0, 3),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def sharded_sweep(
    layer: FinalLayer,
    cache_folder: Path,
    prefix: str,
    seq_len: int,
    checkpoints: CheckpointStore,
    *,
    freq: FreqDirection | None,
    neuron_chunk: int,
    token_chunk: int,
    backend: str = "auto",
    mean_act: torch.Tensor | None = None,
    cache_digest: str | None = None,
    gpu: bool = False,
    workers: int | None = None,
    address: str | None = None,
    max_retries: int = 3,
    progress: bool = True,
    hook: Callable[[], None] | None = None,
) -> dict:
    """Compute every neuron chunk of the sweep into ``checkpoints`` on Ray workers; return what
    config.json records of it (workers, chunks computed and reused, seconds per shard).

    ``mean_act``: the mean-ablation value (d_mlp,) the scan computed; default the mean over the analysed cache.
    ``cache_folder``/``prefix``: where the analysed ForwardCache's arrays are (``open_cache``).
    ``gpu``: one GPU per worker (the sweep runs on it), else one CPU process per worker.
    ``workers``: default one per GPU (``gpu``) or per CPU of the cluster.
    """
    starts = chunk_starts(layer.d_mlp, neuron_chunk)
    t0 = time.perf_counter()
    with ray_session(address, "--ray") as ray:
        n = workers or (cluster_gpus(ray) if gpu else cluster_cpus(ray)) or 1
        plan = split_chunks(starts, n)
        resources = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 1}
        task = ray.remote(max_retries=max_retries, **resources)(_shard)
        layer_ref = ray.put(layer)
        sweep_kwargs = {
            "neuron_chunk": neuron_chunk,
            "token_chunk": token_chunk,
            "backend": backend,
            "device": "cuda" if gpu else "cpu",
            "mean_act": mean_act,  # the scan's ablation value (forward.ablation_mean), the same in every worker
            "cache_digest": cache_digest,  # the store's sha256 of the rows, so workers' stamps equal the scan's
        }
        refs = [
            task.remote(
                layer_ref, freq, str(cache_folder), prefix, seq_len, str(checkpoints.folder), only, sweep_kwargs, hook
            )
            for only in plan
        ]
        bar = tqdm(total=len(starts), desc=f"sharded sweep ({len(plan)} workers)", unit="chunk", disable=not progress)
        done: list[dict] = []
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    done.append(ray.get(ref))
                    bar.update(done[-1]["chunks"])
        except BaseException:
            for ref in pending:  # Ctrl-C or a failed shard: stop the others; finished chunks stay kept
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
    return {
        "workers": len(plan),
        "device": "cuda" if gpu else "cpu",
        "address": address or "local",
        "chunks": len(starts),
        "chunks_reused": sum(d["reused"] for d in done),
        "shard_seconds": [d["seconds"] for d in done],
        "hosts": sorted({d["host"] for d in done}),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def shard_cache_prefix(selected: bool) -> str:
    """The file prefix of the analysed cache in an activation store: ``analysed_`` when the token
    filter selected rows (``ForwardCache.select`` copies them there), else the full pass's own files.
    """
    return "analysed_" if selected else ""


def sharded_record_check(record: dict, reused_by_merge: int) -> None:
    """Warn when the merging sweep had to recompute chunks the workers should have written."""
    if reused_by_merge < record["chunks"]:
        log.warning(
            "the sharded sweep's workers left %d of %d chunks unusable (a worker read other data?); "
            "they were recomputed in this process",
            record["chunks"] - reused_by_merge,
            record["chunks"],
        )


__all__ = ["open_cache", "shard_cache_prefix", "sharded_record_check", "sharded_sweep", "split_chunks"]
