"""Ray, the optional engine under studies and sharded sweeps: whether it is installed, and a session.

Ray is an optional extra (``pip install 'confidence-neurons[ray]'``). Without ``address`` a
session starts a local Ray on this machine (all its CPUs and GPUs); with one (``auto`` or
``ray://host:10001``) it joins a running cluster. A session this process started is shut down at
the end; one that was already running (a notebook's, a test's) is left as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from confidence_neurons.errors import ConfigError

log = logging.getLogger(__name__)

#: What to install for parallel studies and sharded sweeps.
RAY_EXTRA = "pip install 'confidence-neurons[ray]'"


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray(flag: str) -> Any:
    """The ``ray`` module, or a ConfigError naming ``flag`` and how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"{flag} needs Ray, which is not installed; {RAY_EXTRA}") from None
    return ray


@contextmanager
def ray_session(address: str | None, flag: str = "--ray-address") -> Iterator[Any]:
    """The ``ray`` module with a connected session: the running one, a new local one, or the cluster at
    ``address``; ``flag`` is the option named where Ray is missing.
    """
    ray = require_ray(flag)
    if ray.is_initialized():
        yield ray
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise ConfigError(
            f"--ray-address {address}: no Ray cluster answers there ({str(exc).splitlines()[0][:200]}); start one "
            "(`ray start --head`) or leave the flag out to run on this machine",
            field="ray_address",
        ) from None
    log.info("Ray: %s", "a local session" if address is None else f"joined the cluster at {address}")
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_gpus(ray: Any) -> int:
    """GPUs the connected cluster offers in all."""
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus(ray: Any) -> int:
    """CPUs the connected cluster offers in all."""
    return int(ray.cluster_resources().get("CPU", 1))
