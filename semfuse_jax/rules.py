"""Feature-map fusion rules Ψ (jittable; N ≥ 2 inputs stacked on axis 0).

Every rule takes ``features`` of shape ``[N, ...]`` (typically ``[N, B, H, W, C]`` or
``[N, H, W, C]``) and returns the fused map ``[...]``. Ties go to the lowest input index.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from semfuse_jax import metrics


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


def _window_count(size: int, radius: int) -> np.ndarray:
    """How many in-range positions each of ``size`` positions has within ``±radius``."""
    i = np.arange(size)
    return (np.minimum(i + radius, size - 1) - np.maximum(i - radius, 0) + 1).astype(np.float64)


def box_mean(x: jax.Array, radius: int) -> jax.Array:
    """Mean over the in-image part of each ``(2r+1) × (2r+1)`` window of the last two axes.

    ``x``: ``[..., H, W]`` → ``[..., H, W]`` (windows are cut at the border, not padded).
    """
    if radius == 0:
        return x
    size = 2 * radius + 1
    dims = (1,) * (x.ndim - 2) + (size, size)
    pads = ((0, 0),) * (x.ndim - 2) + ((radius, radius),) * 2
    strides = (1,) * x.ndim
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    h, w = x.shape[-2:]
    count = np.outer(_window_count(h, radius), _window_count(w, radius))  # static: no folding
    return total / jnp.asarray(count, x.dtype)


def activity_weights(activity: jax.Array, radius: int = 1, smooth: int = 2) -> jax.Array:
    """FM4's choice: per position, the input with the most local activity, with soft seams.

    Args:
      activity: ``[N, ..., H, W]`` non-negative activity of each input (e.g. band energy
        summed over channels, so that one choice serves every channel).
      radius: activity is averaged over ``(2·radius+1)²`` windows before the inputs compete.
      smooth: the one-hot winner map is box-averaged over ``(2·smooth+1)²`` windows, so that
        seams between inputs become ramps (0: hard choice).

    Returns:
      ``[N, ..., H, W]`` weights ≥ 0 that sum to 1 over the inputs. Ties go to the lowest index.
    """
    winner = jnp.argmax(box_mean(activity, radius), axis=0)
    one_hot = jax.nn.one_hot(winner, activity.shape[0], axis=0, dtype=activity.dtype)
    return box_mean(one_hot, smooth)


def blend(features: jax.Array, weights: jax.Array) -> jax.Array:
    """``Σ_i weights[i] · features[i]``.

    ``features`` ``[N, ..., H, W, C]`` and ``weights`` ``[N, ..., H, W]`` → ``[..., H, W, C]``.
    """
    return jnp.sum(weights[..., None] * features, axis=0)


def strongest_gradient(images: jax.Array, radius: int = 1) -> tuple[jax.Array, jax.Array]:
    """The gradient-domain choose-max: per pixel, the Sobel responses of the input with the most
    gradient energy around it, and how clearly that input dominates there.

    Energy is summed over channels (one input serves every channel) and averaged over
    ``(2·radius+1)²`` windows before the inputs compete. Dominance is the winner's share of the
    inputs' summed energy, ramped from 0 where it holds half of it (as much as all the others
    together; for two inputs, a tie) to 1 where it holds all of it.

    Args:
      images: one set ``[N, H, W, C]``.

    Returns:
      The chosen field ``[2, H, W, C]`` (s_x, s_y of :func:`semfuse_jax.metrics.sobel`) and the
      dominance ``[H, W]`` in ``[0, 1]`` (0 where no input has any gradient).
    """
    s_x, s_y = metrics.sobel(jnp.moveaxis(images, -1, 1))  # [N, C, H, W] each
    energy = box_mean(jnp.sum(s_x * s_x + s_y * s_y, axis=1), radius)  # [N, H, W]
    pick = jax.nn.one_hot(jnp.argmax(energy, axis=0), images.shape[0], axis=0)[:, None]
    field = jnp.stack([jnp.sum(pick * s_x, axis=0), jnp.sum(pick * s_y, axis=0)])
    total = jnp.sum(energy, axis=0)
    share = jnp.max(energy, axis=0) / jnp.where(total > 0, total, 1.0)
    return jnp.moveaxis(field, 1, -1), jnp.clip(2.0 * share - 1.0, 0.0, 1.0)
