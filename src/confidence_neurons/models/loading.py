"""Load any Hugging Face decoder model through TransformerLens' TransformerBridge.

A model is named by a hub id, a local model directory, or a GGUF file; ``None`` means the
embedded default (SmolLM2-135M-Instruct). Weights are processed as in the paper's Appendix C
by ``enable_compatibility_mode()``: the final norm is folded into W_U, and on LayerNorm models
W_U and the writing weights are centred (RMSNorm models are folded, not centred).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from confidence_neurons.errors import ToolkitError
from confidence_neurons.models.embedded import DEFAULT_MODEL_NAME, embedded_gguf_path
from confidence_neurons.models.hub import hub_cached, hub_offline_env, hub_reachable
from confidence_neurons.models.placement import Placement, checkpoint_dtype, resolve_placement
from confidence_neurons.paper import paper_hub_id

log = logging.getLogger(__name__)


class ModelLoadError(ToolkitError, ValueError):
    """A model could not be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """A booted bridge with the facts the analyses need."""

    bridge: object  # transformer_lens.model_bridge.TransformerBridge, compatibility mode on
    tokenizer: object
    name: str
    source: dict = field(default_factory=dict)
    placement: Placement | None = None  # where the weights are (None: the CPU, float32)

    def placement_record(self) -> dict:
        """What config.json records of where the model ran: device, dtype, GPU name(s), map."""
        return self.placement.describe() if self.placement is not None else {"device": "cpu", "dtype": "float32"}

    @property
    def cfg(self):
        return self.bridge.cfg

    @property
    def n_layers(self) -> int:
        return self.bridge.cfg.n_layers

    @property
    def bos_id(self) -> int | None:
        tok_bos = getattr(self.tokenizer, "bos_token_id", None)
        if tok_bos is not None:
            return int(tok_bos)
        cfg_bos = getattr(self.bridge.original_model.config, "bos_token_id", None)
        return None if cfg_bos is None else int(cfg_bos)

    @torch.no_grad()
    def logits(self, tokens: Tensor) -> Tensor:
        return self.bridge(tokens)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and not spec.endswith(".gguf")


@dataclass(frozen=True)
class _Resolved:
    kind: str  # "embedded" | "gguf" | "path" | "hub"
    location: str  # folder (GGUF, path) or hub id
    gguf_file: str | None
    description: dict
    revision: str | None = None  # a hub revision, passed to from_pretrained (local revisions are folders)


def _resolve(spec: str | None, revision: str | None = None) -> _Resolved:
    """Decide what ``spec`` (at ``revision``, see :func:`load_model`) names, with a clear error for what
    cannot be a model.
    """
    if revision is not None:
        return _resolve_revision(spec, revision)
    if spec is None:
        gguf = embedded_gguf_path()
        return _Resolved(
            "embedded", str(gguf.parent), gguf.name, {"kind": "embedded", "name": DEFAULT_MODEL_NAME, "path": str(gguf)}
        )
    path = Path(spec).expanduser()
    description = {"name": spec, "path": str(path.resolve())}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist; pass an existing .gguf file")
        return _Resolved("gguf", str(path.parent), path.name, {"kind": "gguf", **description})
    if path.exists():
        if not (path.is_dir() and (path / "config.json").is_file()):
            raise ModelLoadError(
                f"{path} is not a model: expected a directory with config.json (as written by "
                "save_pretrained) or a .gguf file"
            )
        return _Resolved("path", str(path), None, {"kind": "path", **description})
    spec = paper_hub_id(spec)  # the paper's short names (pythia-410m, phi-2, ...) name hub ids
    if not _looks_like_hub_id(spec):
        raise ModelLoadError(f"{spec} is neither an existing path nor a Hugging Face model id")
    if not hub_cached(spec) and not hub_reachable():
        raise ModelLoadError(
            f"{spec} is not a local path, not in the Hugging Face cache, and the hub is unreachable"
            f"{' (HF_HUB_OFFLINE is set)' if hub_offline_env() else ''}; "
            "pass a local model directory or a GGUF file with --model"
        )
    return _Resolved("hub", spec, None, {"kind": "hub", "name": spec})


def _resolve_revision(spec: str | None, revision: str) -> _Resolved:
    """A hub model at a revision (branch, tag or commit, e.g. Pythia's ``step143000``), or a local
    model directory's checkpoint ``spec/revision`` (local checkpoints are one folder per revision).
    """
    if not revision.strip() or revision != revision.strip():
        raise ModelLoadError(f"--revision {revision!r} is not a revision name; give a branch, tag or commit")
    if spec is None or spec.endswith(".gguf"):
        raise ModelLoadError(
            f"--revision {revision} needs a Hugging Face model id or a model directory with --model, "
            f"not {'the embedded model' if spec is None else 'a GGUF file'}"
        )
    path = Path(spec).expanduser()
    if path.exists():
        sub = path / revision
        if not (path.is_dir() and (sub / "config.json").is_file()):
            raise ModelLoadError(
                f"{path} has no revision {revision}: a local model's revisions are its subfolders, so expected "
                f"{sub}/config.json; pass an existing revision folder's name with --revision or drop --revision"
            )
        description = {"kind": "path", "name": f"{spec}@{revision}", "path": str(sub.resolve()), "revision": revision}
        return _Resolved("path", str(sub), None, description)
    hub_id = paper_hub_id(spec)
    if not _looks_like_hub_id(hub_id):
        raise ModelLoadError(f"{spec} is neither an existing path nor a Hugging Face model id")
    if not hub_cached(hub_id, revision) and not hub_reachable():
        raise ModelLoadError(
            f"{hub_id} at revision {revision} is not in the Hugging Face cache and the hub is unreachable"
            f"{' (HF_HUB_OFFLINE is set)' if hub_offline_env() else ''}; download it where the hub is "
            "reachable, or pass a local model directory with --model"
        )
    description = {"kind": "hub", "name": f"{hub_id}@{revision}", "hub_id": hub_id, "revision": revision}
    return _Resolved("hub", hub_id, None, description, revision)


@dataclass(frozen=True)
class ModelLimits:
    """The sizes a run is checked against: layers, widths, context length and vocabulary."""

    n_layers: int
    d_model: int
    d_mlp: int | None
    n_ctx: int | None
    d_vocab: int | None


def limits_from_hf_config(cfg) -> ModelLimits | None:
    """Sizes from a transformers config (before any weight loads), or None when it does not say."""
    text = getattr(cfg, "text_config", None) or cfg
    n_layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    d_model = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not n_layers or not d_model:
        return None
    d_mlp = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None)
    if d_mlp is None and getattr(text, "model_type", "") == "gpt2":
        d_mlp = 4 * d_model
    n_ctx = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return ModelLimits(
        int(n_layers), int(d_model), d_mlp and int(d_mlp), n_ctx and int(n_ctx), getattr(text, "vocab_size", None)
    )


def model_limits(spec: str | None, revision: str | None = None) -> ModelLimits | None:
    """The model's sizes read from its config alone, where that is possible without loading weights
    (a model directory, a cached hub model, the embedded model once dequantised); else None.
    """
    from transformers import AutoConfig

    r = _resolve(spec, revision)
    if r.kind == "embedded":
        folder = _dequantised_dir(r)
        if not (folder / "config.json").is_file():
            return None
        location = str(folder)
    elif r.kind in ("path", "hub"):
        location = r.location
    else:
        return None
    try:
        return limits_from_hf_config(AutoConfig.from_pretrained(location, **_revision_kwargs(r)))
    except Exception:  # noqa: BLE001 - the full load reports a broken config with its own message
        return None


def limits_of(model: LoadedModel) -> ModelLimits:
    """The loaded model's sizes, from the bridge's config."""
    cfg = model.cfg
    return ModelLimits(
        cfg.n_layers,
        cfg.d_model,
        getattr(cfg, "d_mlp", None),
        getattr(cfg, "n_ctx", None),
        getattr(cfg, "d_vocab", None),
    )


def _revision_kwargs(r: _Resolved) -> dict:
    return {} if r.revision is None else {"revision": r.revision}


def _from_pretrained(loader, r: _Resolved, **kwargs):
    kwargs = {**_revision_kwargs(r), **kwargs}
    try:
        if r.gguf_file is not None:
            return loader.from_pretrained(r.location, gguf_file=r.gguf_file, **kwargs)
        return loader.from_pretrained(r.location, **kwargs)
    except OSError as exc:
        if r.kind == "hub":
            raise ModelLoadError(
                f"could not load {r.location} from the Hugging Face hub ({str(exc).splitlines()[0][:200]}); "
                "if the hub is unreachable, pass a local model directory or a GGUF file with --model"
            ) from exc
        raise ModelLoadError(f"{r.description['path']} could not be loaded as a causal language model ({exc})") from exc
    except Exception as exc:  # transformers raises many kinds for malformed files
        if "device_map" in kwargs and ("no_split_modules" in str(exc) or "does not support `device_map" in str(exc)):
            raise ModelLoadError(
                f"{r.description.get('name', r.location)} cannot be split over devices by Accelerate (its "
                "architecture declares no module that may not be split); load it on one device with --device"
            ) from exc
        raise ModelLoadError(f"{r.description.get('path', r.location)} could not be loaded ({exc})") from exc


def load_tokenizer(spec: str | None, revision: str | None = None):
    """Only the tokenizer of ``spec`` (same naming rules as ``load_model``)."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, _resolve(spec, revision))


def _load_hf(spec: str | None, placement: Placement, revision: str | None = None):
    """Return (hf_model, tokenizer, bridge_name, description), weights placed as ``placement`` says."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = _resolve(spec, revision)
    if r.kind == "embedded":
        hf, tok = _load_embedded_dequantised(r)
        if placement.device_map is None and placement.dtype == torch.float32 and placement.device == "cpu":
            return hf, tok, str(_dequantised_dir(r)), dict(r.description)
        if (_dequantised_dir(r) / "config.json").is_file():
            r = _Resolved("path", str(_dequantised_dir(r)), None, r.description)
        elif placement.device_map is None:
            return hf.to(placement.dtype).to(placement.device), tok, r.location, dict(r.description)
    tok = _from_pretrained(AutoTokenizer, r)
    kwargs: dict = {"dtype": placement.dtype}
    if placement.device_map is not None:
        kwargs["device_map"] = placement.device_map
        if placement.max_memory is not None:
            kwargs["max_memory"] = placement.max_memory
    hf = _from_pretrained(AutoModelForCausalLM, r, **kwargs)
    if placement.device_map is None and placement.device != "cpu":
        try:
            hf = hf.to(placement.device)
        except torch.OutOfMemoryError as exc:
            raise ModelLoadError(
                f"{r.description.get('name', r.location)} in {placement.dtype} does not fit in the memory of "
                f"{placement.device}; use --dtype bfloat16, or --device-map auto to spread it over GPUs and the CPU"
            ) from exc
    return hf, tok, r.location, dict(r.description)


def _dequantised_dir(r: _Resolved) -> Path:
    return Path(r.location) / "dequantised-float32"


def _load_embedded_dequantised(r: _Resolved):
    """The embedded GGUF, dequantised once and kept as float32 safetensors next to it.

    Dequantising the 4-bit GGUF takes most of a load (about 25 s on 2 cores); the saved copy holds
    the very same float32 weights and loads in a few seconds.
    """
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _dequantised_dir(r)
    if not (target / "config.json").is_file():
        tok = _from_pretrained(AutoTokenizer, r)
        hf = _from_pretrained(AutoModelForCausalLM, r, dtype=torch.float32)
        tmp = Path(tempfile.mkdtemp(dir=r.location))
        try:
            # The GGUF "quantizer" only dequantised at load time; the weights in memory are float32.
            hf.hf_quantizer = None
            if hasattr(hf.config, "quantization_config"):
                del hf.config.quantization_config
            hf.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)
        except (OSError, ValueError):
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("could not keep a dequantised copy of the embedded model in %s", target)
            return hf, tok
    local = _Resolved("path", str(target), None, r.description)
    return _from_pretrained(AutoModelForCausalLM, local, dtype=torch.float32), _from_pretrained(AutoTokenizer, local)


def boot(hf_model, tokenizer, name: str, source: dict | None = None, device: str | None = None) -> LoadedModel:
    """Wrap an already-loaded HF model in a TransformerBridge with the paper's weight processing."""
    from transformer_lens.model_bridge import TransformerBridge

    hf_model.eval()
    if not getattr(hf_model.config, "architectures", None):
        # GGUF configs of newer models (Gemma 3 text: model_type gemma3_text) carry no architectures
        # list; the class transformers loaded names it.
        hf_model.config.architectures = [type(hf_model).__name__]
    kwargs = {} if device is None else {"device": device}
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, **kwargs)
    try:
        bridge.enable_compatibility_mode()
    except RuntimeError as exc:
        if "offloaded device_map" not in str(exc):
            raise
        raise ModelLoadError(
            "the device map offloads part of the model to the CPU or disk, where TransformerLens cannot apply "
            "the paper's weight processing (App. C); give the GPUs more room with --max-memory, or use a map "
            "over GPUs only"
        ) from exc
    bridge.eval()
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, name=(source or {}).get("name", name), source=source or {})


def load_model(
    spec: str | None = None,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    revision: str | None = None,
) -> LoadedModel:
    """Load ``spec`` (hub id, model directory, GGUF file, or None for the embedded default).

    ``device``: auto (cuda if present, else cpu), cpu, cuda[:N] or mps; ``dtype``: auto (the
    checkpoint's own dtype on a GPU, float32 on the CPU), float32, bfloat16 or float16;
    ``device_map`` (auto, balanced, sequential, or {module: device}) and ``max_memory``
    ({0: "70GiB", "cpu": "200GiB"} or "0=70GiB,cpu=200GiB") spread the model over devices with
    Accelerate (``models.placement``).

    ``revision``: a hub model's branch, tag or commit (Pythia's ``step143000``), passed to
    ``from_pretrained``; for a local model directory, its subfolder of that name (local checkpoints
    are one folder per revision). The model's name becomes ``spec@revision``, so every table and
    figure label says which checkpoint it shows.
    """
    saved = _saved_dtype(spec, revision) if (dtype == "auto" and device != "cpu") else None
    placement = resolve_placement(device, dtype, device_map, max_memory, saved=saved)
    hf, tok, bridge_name, description = _load_hf(spec, placement, revision)
    description["architecture"] = type(hf).__name__
    log.info(
        "loaded %s (%s) on %s in %s",
        description["name"],
        description["architecture"],
        placement.device,
        placement.dtype,
    )
    model = boot(
        hf, tok, bridge_name, description, device=None if placement.device_map is not None else placement.device
    )
    model.placement = placement
    return model


def _saved_dtype(spec: str | None, revision: str | None = None) -> torch.dtype | None:
    """The checkpoint's own dtype from its config, where that can be read without loading weights."""
    try:
        from transformers import AutoConfig

        r = _resolve(spec, revision)
        if r.kind == "embedded" or r.gguf_file is not None:
            return None
        if r.kind == "hub" and not (hub_reachable() or hub_cached(r.location, r.revision)):
            return None
        return checkpoint_dtype(AutoConfig.from_pretrained(r.location, **_revision_kwargs(r)))
    except (OSError, ValueError):
        return None
