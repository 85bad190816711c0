"""Spreading a batch of image sets over the local devices along a ``batch`` mesh axis, and joining
a multi-host run.

The batch is padded (by repeating its last set) to a multiple of the device count, split across
devices, and the VGG19 weights are replicated. Sets are independent, so the sharded run computes
exactly what each device would compute for its own sets; the padding is dropped afterwards.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from semfuse_jax.errors import SemfuseError

BATCH_AXIS = "batch"


def batch_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D ``batch`` mesh over ``devices`` (default: this process's local devices)."""
    devices = devices or jax.local_devices()
    return jax.make_mesh((len(devices),), (BATCH_AXIS,), (AxisType.Auto,), devices=devices)


def pad_batch(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad every leaf's leading axis to a multiple of ``multiple`` by repeating its last entry.

    Returns:
      ``(padded tree, original batch size)``.
    """
    size = jax.tree.leaves(tree)[0].shape[0]
    extra = -size % multiple

    def pad(x: Any) -> Any:
        if extra == 0:
            return x
        tail = np.repeat(np.asarray(x)[-1:], extra, axis=0)
        return np.concatenate([np.asarray(x), tail], axis=0)

    return jax.tree.map(pad, tree), size


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf split along its leading (batch) axis over ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec(BATCH_AXIS)))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a full copy of every leaf on each device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Wait until ``HOST:PORT`` accepts connections, or fail with one line after ``timeout``
    seconds (JAX's own client aborts the process when the coordinator never answers)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SemfuseError(f"--coordinator_address must be HOST:PORT, not {address!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise SemfuseError(
                    f"cannot reach the multi-host coordinator at {address} within {timeout} s "
                    f"({exc.strerror or exc}); start process 0 first or check the address"
                ) from None
            time.sleep(0.2)


def join_processes(address: str, processes: int, process: int, timeout: int) -> None:
    """Join a multi-host run (``jax.distributed.initialize``) as ``process`` of ``processes``,
    waiting up to ``timeout`` seconds for the coordinator at ``address`` (process 0); the first
    log line says what it waits for and how to wait less."""
    waits_for = (
        f"the coordinator at {address} (process 0)"
        if process > 0
        else f"the other {processes - 1} process(es) to join at {address}"
    )
    logging.info(
        "process %d of %d: waiting up to %d s for %s; --coordinator_timeout=SECONDS waits less",
        process,
        processes,
        timeout,
        waits_for,
    )
    if process > 0:
        wait_for_coordinator(address, timeout)
    try:
        jax.distributed.initialize(address, processes, process, initialization_timeout=timeout)
    except Exception as exc:  # jax raises RuntimeError / XlaRuntimeError variants
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SemfuseError(f"cannot join the multi-host run at {address}: {first}") from None
