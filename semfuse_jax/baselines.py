"""Classical fusion baselines in the methods' interface: ``[B, N, H, W, C]`` → ``[B, H, W, C]``.

- ``average``: pixel mean of the inputs.
- ``max``: pixel maximum of the inputs.
- ``dwt``: 3-level ``db2`` wavelet transform (PyWavelets, symmetric borders) per channel; the
  approximation band is averaged, every detail coefficient is chosen by largest magnitude.
- ``laplacian``: 4-level Laplacian pyramid (5-tap binomial kernel [1 4 6 4 1]/16, reflected
  borders) per channel; detail levels by choose-max on magnitude, the coarsest level averaged.

Inputs are in ``[0, 1]``; results are clipped to ``[0, 1]``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import rules
from semfuse_jax.pyramid import expand, laplacian_pyramid

BASELINES: tuple[str, ...] = ("average", "max", "dwt", "laplacian")


@partial(jax.jit, static_argnames=("levels",))
def laplacian(images: jax.Array, levels: int = 4) -> jax.Array:
    """Laplacian-pyramid choose-max fusion of ``[B, N, H, W, C]``."""
    pyramid = laplacian_pyramid(jnp.moveaxis(images, 1, 0), levels)  # bands of [N, B, h, w, C]
    fused = jnp.mean(pyramid[-1], axis=0)
    for band in reversed(pyramid[:-1]):
        fused = expand(fused, band.shape[-3:-1]) + rules.choose_max(band)
    return jnp.clip(fused, 0.0, 1.0)


@partial(jax.jit, static_argnames=("levels", "radius", "smooth", "base_radius"))
def activity_pyramid(
    images: jax.Array,
    levels: int = 4,
    radius: int = 1,
    smooth: int = 2,
    base_radius: int | None = 4,
) -> tuple[jax.Array, jax.Array]:
    """FM4's initial image: a Laplacian pyramid whose levels follow local activity.

    Each detail band is taken, per position and for all channels at once, from the input whose
    band energy (summed over channels, averaged over ``(2·radius+1)²`` windows) is largest, with
    the winner map box-smoothed over ``(2·smooth+1)²`` windows so seams are soft
    (:func:`semfuse_jax.rules.activity_weights`). The coarsest level follows the coarsest band's
    energy over ``(2·base_radius+1)²`` windows, so intensity and colour come from the input with
    more local contrast instead of being averaged (``base_radius=None`` averages it).

    Args:
      images: ``[B, N, H, W, C]`` in ``[0, 1]``.

    Returns:
      The fused ``[B, H, W, C]`` (clipped to ``[0, 1]``) and the finest band's activity
      ``[B, N, H, W]`` (energy summed over channels).
    """
    pyramid = laplacian_pyramid(jnp.moveaxis(images, 1, 0), levels)  # [N, B, h, w, C] each
    bands, base = pyramid[:-1], pyramid[-1]
    if not bands:
        return jnp.mean(images, axis=1), jnp.ones(images.shape[:-1], images.dtype)
    energy = [jnp.sum(jnp.square(band), axis=-1) for band in bands]
    if base_radius is None:
        fused = jnp.mean(base, axis=0)
    else:
        base_weights = rules.activity_weights(energy[-1][..., ::2, ::2], base_radius, smooth)
        fused = rules.blend(base, base_weights)
    for band, activity in reversed(list(zip(bands, energy, strict=True))):
        weights = rules.activity_weights(activity, radius, smooth)
        fused = expand(fused, band.shape[-3:-1]) + rules.blend(band, weights)
    return jnp.clip(fused, 0.0, 1.0), jnp.swapaxes(energy[0], 0, 1)


def dwt(images: np.ndarray, wavelet: str = "db2", levels: int = 3) -> np.ndarray:
    """Wavelet choose-max fusion of ``[B, N, H, W, C]`` (PyWavelets)."""
    import pywt

    images = np.asarray(images, np.float64)
    b, n, h, w, c = images.shape
    out = np.empty((b, h, w, c))
    level = min(levels, pywt.dwtn_max_level((h, w), wavelet))
    for i in range(b):
        for ch in range(c):
            coeffs = [
                pywt.wavedec2(images[i, k, ..., ch], wavelet, "symmetric", level) for k in range(n)
            ]
            fused = [np.mean([cs[0] for cs in coeffs], axis=0)]
            for d in range(1, level + 1):
                bands = [np.stack([cs[d][j] for cs in coeffs]) for j in range(3)]
                fused.append(tuple(np.asarray(rules.choose_max(band)) for band in bands))
            out[i, ..., ch] = pywt.waverec2(fused, wavelet, "symmetric")[:h, :w]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def fuse_baseline(method: str, images: np.ndarray) -> np.ndarray:
    """Run baseline ``method`` (one of :data:`BASELINES`) on ``[B, N, H, W, C]`` in ``[0, 1]``."""
    images = np.asarray(images, np.float32)
    if method == "average":
        return images.mean(axis=1)
    if method == "max":
        return images.max(axis=1)
    if method == "dwt":
        return dwt(images)
    return np.asarray(laplacian(jnp.asarray(images)))
