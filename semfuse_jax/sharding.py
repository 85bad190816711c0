"""Spreading a batch of image sets over the local devices along a ``batch`` mesh axis.

The batch is padded (by repeating its last set) to a multiple of the device count, split across
devices, and the VGG19 weights are replicated. Sets are independent, so the sharded run computes
exactly what each device would compute for its own sets; the padding is dropped afterwards.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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
