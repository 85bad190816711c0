"""FM4 (beyond the paper): the parts that make it.

- **Start**: an activity-guided Laplacian pyramid (:func:`activity_pyramid`): every detail band and
  the coarsest level come from the input with more local band energy, with soft seams.
- **Target**: the inputs' VGG19 features blended with the same activity choice
  (:func:`semfuse_jax.rules.blend` of the finest band's winner map).
- **Range**: every Adam step is projected onto the inputs' local range (:func:`local_range`: per
  pixel and channel, the min and max of all inputs over its 3×3 neighbourhood), so FM4 makes no
  new extremes: no halos or ringing beside strong edges (its overshoot measure is 0 by
  construction).
- **Stopping**: Adam runs the schedule; per set the last epoch that improved source-referenced
  quality is kept (Q_E and Petrovic Q^{AB/F}, neither worse: :func:`quality`). Its result
  therefore often *is* the start image (``best_epoch`` 0): reports say which epoch was kept.

``benchmarks/quality.py`` and ``benchmarks/RESULTS.md`` show why each part is there.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from semfuse_jax import metrics, rules
from semfuse_jax.pyramid import expand, laplacian_pyramid


@partial(jax.jit, static_argnames=("levels", "radius", "smooth", "base_radius"))
def activity_pyramid(
    images: jax.Array,
    levels: int = 4,
    radius: int = 1,
    smooth: int = 2,
    base_radius: int | None = 4,
) -> tuple[jax.Array, jax.Array]:
    """FM4's start image: a Laplacian pyramid whose levels follow local activity.

    Each detail band is taken, per position and for all channels at once, from the input whose
    band energy (summed over channels, averaged over ``(2·radius+1)²`` windows) is largest, with
    the winner map box-smoothed over ``(2·smooth+1)²`` windows so seams are soft
    (:func:`semfuse_jax.rules.activity_weights`). The coarsest level follows the coarsest band's
    energy over ``(2·base_radius+1)²`` windows, so intensity and colour come from the input with
    more local contrast instead of being averaged (``base_radius=None`` averages it).

    Args:
      images: one set ``[N, H, W, C]`` in ``[0, 1]``.

    Returns:
      The fused ``[H, W, C]`` (clipped to ``[0, 1]``) and the finest band's energy ``[N, H, W]``
      (summed over channels).
    """
    pyramid = laplacian_pyramid(images, levels)  # [N, h, w, C] each
    bands, base = pyramid[:-1], pyramid[-1]
    if not bands:
        return jnp.mean(images, axis=0), jnp.ones(images.shape[:-1], images.dtype)
    energy = [jnp.sum(jnp.square(band), axis=-1) for band in bands]
    if base_radius is None:
        fused = jnp.mean(base, axis=0)
    else:
        base_weights = rules.activity_weights(energy[-1][..., ::2, ::2], base_radius, smooth)
        fused = rules.blend(base, base_weights)
    for band, activity in reversed(list(zip(bands, energy, strict=True))):
        weights = rules.activity_weights(activity, radius, smooth)
        fused = expand(fused, band.shape[-3:-1]) + rules.blend(band, weights)
    return jnp.clip(fused, 0.0, 1.0), energy[0]


def start(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FM4's start image and feature choice for one set: ``[N, H, W, C]`` → (``[H, W, C]``,
    weights ``[N, H, W]``: the finest band's local winner, a hard choice)."""
    init, energy = activity_pyramid(images)
    return init, rules.activity_weights(energy, 1, 0)


RANGE_MARGIN = 0.0  # grey levels (of 255) FM4 may go beyond the inputs' local range (ablation)


def local_range(
    images: jax.Array, radius: int = 1, margin: float = RANGE_MARGIN
) -> tuple[jax.Array, jax.Array]:
    """Per pixel and channel, the min and max of all inputs of one set ``[N, H, W, C]`` over the
    ``(2·radius+1)²`` neighbourhood (cut at the border), widened by ``margin`` grey levels and
    kept in ``[0, 1]``: ``(low, high)``, each ``[H, W, C]``."""
    size = (2 * radius + 1, 2 * radius + 1, 1)
    low = lax.reduce_window(jnp.min(images, 0), jnp.inf, lax.min, size, (1, 1, 1), "SAME")
    high = lax.reduce_window(jnp.max(images, 0), -jnp.inf, lax.max, size, (1, 1, 1), "SAME")
    return jnp.maximum(low - margin / 255.0, 0.0), jnp.minimum(high + margin / 255.0, 1.0)


def quality(images: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """FM4's stopping signal for a batch of sets ``[B, N, H, W, C]``: a function scoring
    candidates ``[B, H, W, C] → [B, 2]`` by Q_E and Petrovic Q^{AB/F} against the inputs
    (luminance, float64); both use only the inputs, no reference image. None for images
    smaller than the metrics' 11×11 minimum (FM4 then runs its whole schedule)."""
    if min(images.shape[2:4]) < 11:
        return None
    sources = metrics.luminance_255(images)

    def score(fused: np.ndarray) -> np.ndarray:
        candidate = metrics.luminance_255(fused)
        return np.stack(
            [metrics.qe(sources, candidate), metrics.qabf_petrovic(sources, candidate)], axis=-1
        )

    return score


QUALITY_NAMES = ("qe", "qabf_petrovic")  # the columns of quality()'s scores
