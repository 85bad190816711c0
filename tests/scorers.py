"""A quality scorer for tests of the quality stop: closeness to reference images."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class Closeness:
    """Scores ``[B, K]``: ``−weights_k · mean |image − references[:, k]|`` per set (a
    :class:`semfuse_jax.optimise.Scorer`; ``references`` ``[B, K, H, W, C]``)."""

    references: jax.Array
    weights: tuple[float, ...] = flax.struct.field(pytree_node=False)

    def __call__(self, images: jax.Array) -> jax.Array:
        distance = jnp.abs(images[:, None] - self.references).mean(axis=(2, 3, 4))
        return -jnp.asarray(self.weights) * distance


def closeness(*references: np.ndarray, weights: tuple[float, ...] | None = None) -> Closeness:
    """A :class:`Closeness` to ``references``, each ``[B, H, W, C]`` (weights default to 1)."""
    stacked = np.stack([np.asarray(r, np.float32) for r in references], axis=1)
    return Closeness(stacked, weights or (1.0,) * len(references))
