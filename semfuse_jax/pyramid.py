"""Laplacian and Gaussian pyramids (5-tap binomial kernel [1 4 6 4 1]/16, reflected borders) and
multi-band blending, over the axes ``-3, -2`` of ``[..., H, W, C]`` arrays (jittable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def blur(x: jax.Array) -> jax.Array:
    """Separable 5-tap binomial blur over axes -3, -2 of ``[..., H, W, C]`` (reflected borders)."""
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    mode = "reflect" if min(h, w) > 2 else "edge"
    flat = jnp.pad(x.reshape(-1, h, w, c), ((0, 0), (2, 2), (2, 2), (0, 0)), mode=mode)
    kernel = jnp.asarray(np.outer(_BINOMIAL, _BINOMIAL), x.dtype)[:, :, None, None]
    kernel = jnp.tile(kernel, (1, 1, 1, c))  # depthwise: one 5x5 filter per channel
    out = jax.lax.conv_general_dilated(
        flat,
        kernel,
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
        precision=jax.lax.Precision.HIGHEST,
    )
    return out.reshape(*lead, h, w, c)


def expand(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Upsample ``[..., h, w, C]`` to ``[..., H, W, C]``: zero insertion, then 4 × blur."""
    up = jnp.zeros((*x.shape[:-3], *shape, x.shape[-1]), x.dtype)
    return 4.0 * blur(up.at[..., ::2, ::2, :].set(x))


def laplacian_pyramid(x: jax.Array, levels: int) -> list[jax.Array]:
    """Detail bands (fine to coarse) followed by the coarsest Gaussian level."""
    bands = []
    for _ in range(levels):
        if min(x.shape[-3:-1]) < 2:
            break
        down = blur(x)[..., ::2, ::2, :]
        bands.append(x - expand(down, x.shape[-3:-1]))
        x = down
    return [*bands, x]


def gaussian_pyramid(x: jax.Array, levels: int) -> list[jax.Array]:
    """``x`` followed by up to ``levels`` blurred, 2× subsampled levels (the sizes of
    :func:`laplacian_pyramid`'s levels)."""
    out = [x]
    for _ in range(levels):
        if min(x.shape[-3:-1]) < 2:
            break
        x = blur(x)[..., ::2, ::2, :]
        out.append(x)
    return out


def blend(images: jax.Array, weights: jax.Array, levels: int) -> jax.Array:
    """Multi-band blend (Burt & Adelson): each Laplacian level of the inputs is mixed with the
    Gaussian-pyramid level of the weights, then the pyramid is collapsed.

    Args:
      images: ``[N, ..., H, W, C]``.
      weights: ``[N, ..., H, W]``, ≥ 0 and summing to 1 over the N inputs.
      levels: number of detail levels.

    Returns:
      ``[..., H, W, C]``, not clipped.
    """
    bands = laplacian_pyramid(images, levels)
    masks = gaussian_pyramid(weights[..., None], len(bands) - 1)
    fused = jnp.sum(bands[-1] * masks[-1], axis=0)
    for band, mask in zip(reversed(bands[:-1]), reversed(masks[:-1]), strict=True):
        fused = expand(fused, band.shape[-3:-1]) + jnp.sum(band * mask, axis=0)
    return fused
