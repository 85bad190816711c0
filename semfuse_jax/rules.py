"""Feature-map fusion rules Ψ (jittable; N ≥ 2 inputs stacked on axis 0).

Every rule takes ``features`` of shape ``[N, ...]`` (typically ``[N, B, H, W, C]`` or
``[N, H, W, C]``) and returns the fused map ``[...]``. Ties go to the lowest input index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def select(features: jax.Array, index: jax.Array) -> jax.Array:
    """Pick ``features[index[...], ...]`` element-wise: ``[N, ...]`` × ``[...]`` → ``[...]``."""
    return jnp.take_along_axis(features, index[None], axis=0)[0]


def choose_max_index(features: jax.Array) -> jax.Array:
    """Per element, the input with the largest absolute value: ``[N, ...]`` → int ``[...]``."""
    return jnp.argmax(jnp.abs(features), axis=0)


def choose_max(features: jax.Array) -> jax.Array:
    """Ψ0: keep, per element, the value of largest magnitude. ``[N, ...]`` → ``[...]``."""
    return select(features, choose_max_index(features))


def majority_index(index: jax.Array, n_inputs: int, window: int = 3) -> jax.Array:
    """Windowed vote on a choice map: each element takes the choice most common around it.

    Args:
      index: int ``[..., H, W, C]`` choice map (values in ``0 .. n_inputs − 1``).
      n_inputs: number of inputs N.
      window: odd window size (3 in the paper).

    Returns:
      int ``[..., H, W, C]``. Votes are counted per channel over the in-image part of the
      ``window × window`` neighbourhood (no padding votes). For N = 2 in the image interior this is
      the 3×3 median filter of the boolean mask. A tied vote keeps the element's own choice when it
      is among the tied, else the lowest index.
    """
    one_hot = jax.nn.one_hot(index, n_inputs, axis=0, dtype=jnp.float32)  # [N, ..., H, W, C]
    dims = (1,) * (one_hot.ndim - 3) + (window, window, 1)
    votes = lax.reduce_window(one_hot, 0.0, lax.add, dims, (1,) * one_hot.ndim, "SAME")
    return jnp.argmax(votes + 0.5 * one_hot, axis=0)


def majority_filter(features: jax.Array, window: int = 3) -> jax.Array:
    """Ψ1: choose-max decisions smoothed by a per-channel windowed majority vote.

    ``features``: ``[N, ..., H, W, C]`` → ``[..., H, W, C]``.
    """
    index = majority_index(choose_max_index(features), features.shape[0], window)
    return select(features, index)


def cam_weighted_choose_max(
    features: jax.Array, probabilities: jax.Array, weighted_target: bool = False
) -> jax.Array:
    """FM2's rule: choose-max on CAM-weighted features.

    Args:
      features: ``[N, ..., H, W, C]`` feature maps.
      probabilities: ``[N, ..., H, W]`` CAM probability maps in ``[0, 1]`` (same spatial size).
      weighted_target: return the selected *weighted* values ``P_i·F_i`` (True) or the selected
        original values ``F_i`` (False, the default: the CAM decides where, not how strong).

    Returns:
      ``[..., H, W, C]``.
    """
    weighted = features * probabilities[..., None]
    index = choose_max_index(weighted)
    return select(weighted if weighted_target else features, index)
