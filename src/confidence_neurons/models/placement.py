"""Where a model runs and in what precision: ``--device``, ``--dtype``, ``--device-map``, ``--max-memory``.

The weights stay in their dtype on their device(s); the analyses take the final-layer quantities
the closed form needs in float32 on the host (``final_layer``, ``run_forward``), so TE, DE and
DE_freq keep their agreement with a brute-force forward whatever the model's own precision.

``resolve_placement`` turns the user's words into a :class:`Placement` and refuses, in one sentence,
what this machine cannot do (a GPU that is not there, a dtype the GPU cannot run, a map for one
device kind given with another).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

import torch

from confidence_neurons.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")

#: Largest |closed-form - model| log-probability the forward's sanity check accepts, by the model's
#: dtype: float32 agrees to about 1e-5 on every test model (1e-2 leaves room for long contexts);
#: half precision rounds the residual stream itself (bfloat16 keeps 8 bits of mantissa, so logits
#: of size 20 carry errors of about 0.1), so the check can only catch a wrong architecture there.
LOGPROB_TOLERANCE = {torch.float32: 1e-2, torch.float16: 0.5, torch.bfloat16: 1.0}


@dataclass(frozen=True)
class Placement:
    """A resolved placement: one ``device`` (``device_map`` None) or an Accelerate map."""

    device: str
    dtype: torch.dtype
    device_map: str | dict | None = None
    max_memory: dict | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """What config.json records: device, dtype, GPU name(s), map."""
        out = {"device": self.device, "dtype": str(self.dtype).removeprefix("torch.")}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            ids = (
                range(torch.cuda.device_count())
                if self.device_map is not None
                else [torch.device(self.device).index or 0]
            )
            out["gpus"] = [torch.cuda.get_device_name(i) for i in ids]
        if self.device_map is not None:
            out["device_map"] = self.device_map
            out["max_memory"] = self.max_memory
        return out


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` if a CUDA GPU is present, else ``cpu``; others checked against this machine."""
    d = (device or "auto").strip().lower()
    if d == "auto":
        return "cuda" if _cuda_count() else "cpu"
    if d == "cpu":
        return d
    m = re.fullmatch(r"cuda(?::(\d+))?", d)
    if m:
        n = _cuda_count()
        if n == 0:
            raise ConfigError(
                "--device cuda was asked for but this machine has no CUDA GPU that torch can use "
                f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA); "
                "use --device cpu or auto",
                field="device",
            )
        if m.group(1) is not None and int(m.group(1)) >= n:
            raise ConfigError(f"--device {d}: this machine has {n} CUDA GPU(s), numbered 0 to {n - 1}", field="device")
        return d
    if d == "mps":
        if not _mps_available():
            raise ConfigError(
                "--device mps was asked for but this machine has no Apple GPU (MPS) that torch can use; "
                "use --device cpu or auto",
                field="device",
            )
        log.warning(
            "running on MPS: some operations are not exact there (and some fall back to the CPU); "
            "check important numbers on --device cpu"
        )
        return d
    raise ConfigError(f"--device {device!r} is not a device: use auto, cpu, cuda, cuda:N or mps", field="device")


def checkpoint_dtype(hf_config) -> torch.dtype | None:
    """The dtype a checkpoint was saved in, from its config (None when it does not say)."""
    # transformers 5 names it dtype and warns on every read of the old torch_dtype
    raw = getattr(hf_config, "dtype", None)
    if raw is None and "torch_dtype" in getattr(hf_config, "__dict__", {}):
        raw = hf_config.__dict__["torch_dtype"]
    if isinstance(raw, torch.dtype):
        return raw if raw in DTYPES.values() else None
    if isinstance(raw, str):
        return DTYPES.get(raw.removeprefix("torch."))
    return None


def resolve_dtype(dtype: str, device: str, saved: torch.dtype | None = None) -> torch.dtype:
    """``auto``: the checkpoint's own dtype on a GPU, float32 on the CPU; others checked against the device."""
    name = (dtype or "auto").strip().lower()
    if name == "auto":
        return (saved or torch.float32) if device.split(":")[0] in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}", field="dtype")
    out = DTYPES[name]
    if out is torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"--dtype bfloat16: {torch.cuda.get_device_name(torch.device(device))} cannot compute in bfloat16; "
            "use --dtype float16 or float32",
            field="dtype",
        )
    if out is torch.bfloat16 and device == "mps" and not _mps_bf16():
        raise ConfigError("--dtype bfloat16 is not supported by this MPS device; use float16 or float32", field="dtype")
    if out is not torch.float32 and device == "cpu":
        log.warning("%s on the CPU: often slower than float32 there, and the activations carry its rounding", name)
    return out


def _mps_bf16() -> bool:
    try:
        torch.zeros(1, dtype=torch.bfloat16, device="mps")
        return True
    except (RuntimeError, TypeError):
        return False


def parse_device_map(spec: str | None) -> str | dict | None:
    """``auto``/``balanced``/``balanced_low_0``/``sequential``, or a JSON object {module: device}."""
    if spec is None:
        return None
    text = spec.strip()
    if text in DEVICE_MAPS:
        return text
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--device-map is not valid JSON ({exc.msg} at character {exc.pos})", field="device_map"
            ) from None
        if not isinstance(mapping, dict) or not mapping:
            raise ConfigError("--device-map as JSON must be a non-empty object {module: device}", field="device_map")
        return mapping
    raise ConfigError(
        f"--device-map {spec!r} is not one of {', '.join(DEVICE_MAPS)} or a JSON object {{module: device}}",
        field="device_map",
    )


def parse_max_memory(spec: str | None) -> dict | None:
    """``0=70GiB,1=70GiB,cpu=200GiB`` -> {0: '70GiB', 1: '70GiB', 'cpu': '200GiB'}."""
    if spec is None:
        return None
    out: dict = {}
    for part in spec.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B)?", value.strip(), flags=re.I):
            raise ConfigError(
                f"--max-memory entry {part.strip()!r} is not DEVICE=SIZE (for example 0=70GiB or cpu=200GiB)",
                field="max_memory",
            )
        key = key.strip().lower()
        out[int(key) if key.isdigit() else key] = value.strip()
    return out


def resolve_placement(
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    *,
    saved: torch.dtype | None = None,
) -> Placement:
    """Check and resolve the user's placement against this machine (see the module docstring)."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    dev = resolve_device(device)
    dmap = parse_device_map(device_map) if isinstance(device_map, str) or device_map is None else device_map
    mem = parse_max_memory(max_memory) if isinstance(max_memory, str) or max_memory is None else max_memory
    if mem is not None and dmap is None:
        raise ConfigError(
            "--max-memory only applies with --device-map (for example --device-map auto)", field="max_memory"
        )
    if dmap is not None and (device or "auto").strip().lower() not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            "--device-map places the model itself; give it with --device auto (or cuda/cpu), not a single device",
            field="device_map",
        )
    if isinstance(mem, dict):
        n = _cuda_count()
        bad = [k for k in mem if isinstance(k, int) and k >= n]
        if bad:
            raise ConfigError(
                f"--max-memory names GPU {bad[0]} but this machine has {n} CUDA GPU(s)", field="max_memory"
            )
    return Placement(device=dev, dtype=resolve_dtype(dtype, dev, saved), device_map=dmap, max_memory=mem)
