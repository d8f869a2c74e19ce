"""Whether the Hugging Face hub can be asked, and what its local cache holds: answered in seconds,
so that an offline machine is told at once rather than after a long time-out.
"""

from __future__ import annotations

import os
from functools import lru_cache


def hub_offline_env() -> bool:
    """Whether HF_HUB_OFFLINE asks for no hub access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=1)
def _hub_probe() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be asked at all: False at once under HF_HUB_OFFLINE, else one
    connection attempt (3 s at most) per process, so an offline machine is told in seconds.
    """
    if hub_offline_env():
        return False
    try:
        import huggingface_hub.constants as hub_constants

        if hub_constants.HF_HUB_OFFLINE:
            return False
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        pass
    return _hub_probe()


def hub_cached(repo_id: str, revision: str | None = None) -> bool:
    """Whether ``repo_id``'s config (at ``revision``) is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)
    except Exception:  # noqa: BLE001 - a malformed id or cache is "not cached"
        return False
