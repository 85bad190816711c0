"""Classical fusion baselines in the methods' interface: ``[B, N, H, W, C]`` → ``[B, H, W, C]``.

- ``average``: pixel mean of the inputs.
- ``max``: pixel maximum of the inputs.
- ``dwt``: 3-level ``db2`` wavelet transform (PyWavelets, symmetric borders) per channel; the
  approximation band is averaged, every detail coefficient is chosen by largest magnitude.
- ``laplacian``: 4-level Laplacian pyramid (5-tap binomial kernel [1 4 6 4 1]/16, reflected
  borders) per channel; detail levels by choose-max on magnitude, the coarsest level averaged.

- ``mertens``: exposure fusion (Mertens, Kautz & Van Reeth 2007): per input and pixel the weight
  ``C · S · E`` of contrast (|3×3 Laplacian| of the luminance), saturation (standard deviation of
  R, G, B; left out for grey sets) and well-exposedness (``Π_c exp(−(I_c − 0.5)² / (2·0.2²))``),
  normalised over the inputs, then a multi-band blend: each Laplacian level of the inputs mixed by
  the Gaussian-pyramid level of the weights, down to the coarsest level (:func:`mertens_set`).

Inputs are in ``[0, 1]``; results are clipped to ``[0, 1]``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import pyramid, rules
from semfuse_jax.pyramid import expand, laplacian_pyramid


def average(images: jax.Array) -> jax.Array:
    """Pixel mean of ``[B, N, H, W, C]``."""
    return jnp.mean(jnp.asarray(images), axis=1)


def maximum(images: jax.Array) -> jax.Array:
    """Pixel maximum of ``[B, N, H, W, C]``."""
    return jnp.max(jnp.asarray(images), axis=1)


def laplacian_set(images: jax.Array, levels: int = 4) -> jax.Array:
    """Laplacian-pyramid choose-max fusion of one set ``[N, H, W, C]`` → ``[H, W, C]``."""
    bands = laplacian_pyramid(images, levels)  # [N, h, w, C] each
    fused = jnp.mean(bands[-1], axis=0)
    for band in reversed(bands[:-1]):
        fused = expand(fused, band.shape[-3:-1]) + rules.choose_max(band)
    return jnp.clip(fused, 0.0, 1.0)


@partial(jax.jit, static_argnames=("levels",))
def laplacian(images: jax.Array, levels: int = 4) -> jax.Array:
    """Laplacian-pyramid choose-max fusion of ``[B, N, H, W, C]`` (each set: laplacian_set)."""
    return jax.vmap(partial(laplacian_set, levels=levels))(images)


MERTENS_SIGMA = 0.2  # well-exposedness: Gaussian around mid-grey 0.5 with this width


def exposure_weights(images: jax.Array) -> jax.Array:
    """Mertens's weight maps of one set ``[N, H, W, C]`` → ``[N, H, W]``, summing to 1 over the
    inputs (a tiny floor keeps all-zero pixels an even mix)."""
    luma = jnp.asarray([0.299, 0.587, 0.114], images.dtype)
    grey = images @ luma if images.shape[-1] == 3 else images[..., 0]
    padded = jnp.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
    laplacian = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    ) - 4.0 * grey
    weight = jnp.abs(laplacian)
    if images.shape[-1] == 3:
        weight = weight * jnp.std(images, axis=-1)
    exposed = jnp.exp(-jnp.square(images - 0.5) / (2 * MERTENS_SIGMA**2))
    weight = weight * jnp.prod(exposed, axis=-1) + 1e-12
    return weight / jnp.sum(weight, axis=0, keepdims=True)


def mertens_set(images: jax.Array) -> jax.Array:
    """Exposure fusion of one set ``[N, H, W, C]`` → ``[H, W, C]``: :func:`exposure_weights`
    blended over a pyramid as deep as the image allows."""
    levels = max(1, int(np.log2(min(images.shape[1:3]))))
    return jnp.clip(pyramid.blend(images, exposure_weights(images), levels), 0.0, 1.0)


@jax.jit
def mertens(images: jax.Array) -> jax.Array:
    """Exposure fusion of ``[B, N, H, W, C]`` (:func:`mertens_set` per set)."""
    return jax.vmap(mertens_set)(images)


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
