"""Colour handling: YCbCr (BT.601 full range, as in JPEG) and colour-true fusion of sets that
mix grey and colour inputs.

A medical MR slice with a PET or SPECT colour map, or a grey infrared image with a colour
photograph, carries its colour in one input only. The standard of the field, followed here
(``FusionConfig.colour = "luminance"``): fuse the luminance Y of the inputs with the method, and
take the chroma (Cb, Cr) per pixel from the input whose chroma is strongest there, which for a
grey + colour pair is exactly the colour input's chroma. ``auto`` uses this for sets that mix
grey and colour inputs and fuses other sets in RGB.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# rows: Y, Cb, Cr from R, G, B (BT.601 full range); Cb and Cr are offset by 0.5 (128 of 255)
YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
COLOUR_MODES: tuple[str, ...] = ("auto", "rgb", "luminance")


def to_ycbcr(rgb: jax.Array) -> jax.Array:
    """``[..., 3]`` RGB in ``[0, 1]`` → ``[..., 3]`` (Y, Cb, Cr), chroma centred on 0.5."""
    return rgb @ jnp.asarray(YCBCR.T, rgb.dtype) + jnp.asarray([0.0, 0.5, 0.5], rgb.dtype)


def to_rgb(ycbcr: jax.Array) -> jax.Array:
    """The inverse of :func:`to_ycbcr` (not clipped)."""
    centred = ycbcr - jnp.asarray([0.0, 0.5, 0.5], ycbcr.dtype)
    return centred @ jnp.asarray(np.linalg.inv(YCBCR).T, ycbcr.dtype)


def grey_inputs(images: np.ndarray | jax.Array) -> np.ndarray:
    """Which inputs of each set are grey: ``[B, N, H, W, C]`` → bool ``[B, N]`` (all True for
    C = 1; for C = 3, inputs whose three channels are equal, as :func:`fusion.stack_set` makes
    grey inputs of a colour set)."""
    if images.shape[-1] == 1:
        return np.ones(images.shape[:2], bool)
    xp = jnp if isinstance(images, jax.Array) else np  # a batch on the device stays there
    return np.asarray(xp.all(images[..., :1] == images[..., 1:], axis=(-3, -2, -1)))


def use_luminance(mode: str, images: np.ndarray | jax.Array) -> np.ndarray:
    """Per set ``[B]``: fuse luminance and keep chroma (True) or fuse in RGB (False).

    ``mode``: ``rgb``; ``luminance`` (every colour set); ``auto`` (colour sets that mix grey and
    colour inputs). Grey sets (C = 1) are always False: they have no chroma.
    """
    grey = grey_inputs(images)
    if images.shape[-1] == 1 or mode == "rgb":
        return np.zeros(grey.shape[0], bool)
    if mode == "luminance":
        return np.ones(grey.shape[0], bool)
    return grey.any(axis=1) & ~grey.all(axis=1)


@jax.jit
def chroma_of_strongest(chroma: jax.Array) -> jax.Array:
    """Per pixel, the (Cb, Cr) of the input whose chroma magnitude is largest (ties: the first):
    ``[..., N, H, W, 2]`` centred on 0.5 → ``[..., H, W, 2]``."""
    centred = chroma - 0.5
    strongest = jnp.argmax(jnp.sum(centred * centred, axis=-1), axis=-3)
    picked = jnp.take_along_axis(chroma, strongest[..., None, :, :, None], axis=-4)
    return picked[..., 0, :, :, :]


def chroma_offsets(chroma: jax.Array) -> jax.Array:
    """What ``chroma`` ``[..., 2]`` (centred on 0.5) adds to each of R, G, B over the
    luminance: ``[..., 3]`` (RGB = Y + offsets)."""
    return to_rgb(jnp.concatenate([jnp.zeros_like(chroma[..., :1]), chroma], axis=-1))


def luminance_range(chroma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The luminances at which ``chroma`` ``[..., 2]`` (centred on 0.5) fits in the RGB cube
    unscaled: ``(low, high)``, each ``[..., 1]`` (``low ≤ high`` for the chroma of any RGB
    pixel)."""
    offsets = chroma_offsets(chroma)
    low = jnp.max(-offsets, axis=-1, keepdims=True)
    high = jnp.min(1.0 - offsets, axis=-1, keepdims=True)
    return jnp.clip(low, 0.0, 1.0), jnp.clip(high, 0.0, 1.0)


def keep_chroma(
    bounds: tuple[jax.Array, jax.Array], chroma: jax.Array, start: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Narrow an optimisation's per-pixel luminance box ``bounds`` (each ``[..., H, W, 1]``) so
    that no step takes the luminance further outside :func:`luminance_range` of ``chroma`` than
    ``start`` (inside the box) already is: the chroma :func:`combine` keeps can only grow."""
    fits_low, fits_high = luminance_range(chroma)
    low = jnp.maximum(bounds[0], jnp.minimum(fits_low, start))
    high = jnp.minimum(bounds[1], jnp.maximum(fits_high, start))
    return low, high


def combine(luminance: jax.Array, chroma: jax.Array) -> jax.Array:
    """RGB from a fused luminance ``[..., 1]`` in ``[0, 1]`` and chroma ``[..., 2]`` (centred on
    0.5), keeping the luminance exactly: each channel is ``Y + d_c`` with ``d`` linear in the
    chroma, so where ``Y`` with the full chroma would leave the RGB cube the chroma is scaled
    towards grey just enough to fit (the hue is kept). ``[..., 3]`` in ``[0, 1]``."""
    offsets = chroma_offsets(chroma)  # d_c
    room = jnp.where(offsets > 0, 1.0 - luminance, luminance)  # how far each channel may move
    scale = jnp.min(jnp.where(jnp.abs(offsets) > 1e-12, room / jnp.abs(offsets), 1.0), axis=-1)
    scale = jnp.clip(scale, 0.0, 1.0)[..., None]
    return jnp.clip(luminance + scale * offsets, 0.0, 1.0)
