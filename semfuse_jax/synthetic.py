"""Synthetic multi-focus sets with a known answer: a sharp image and copies blurred in parts."""

from __future__ import annotations

import numpy as np


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``[H, W, C]`` (radius 3σ, reflected borders)."""
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(k * padded[i : i + image.shape[0]] for i, k in enumerate(kernel))
    return sum(k * rows[:, i : i + image.shape[1]] for i, k in enumerate(kernel))


def multifocus_set(sharp: np.ndarray, sigma: float = 2.5) -> np.ndarray:
    """Two copies of ``sharp`` ``[H, W, C]``: left half blurred in one, right half in the other.

    Returns:
      float32 ``[2, H, W, C]``; the ideal fusion is ``sharp``.
    """
    blurred = gaussian_blur(sharp, sigma)
    half = sharp.shape[1] // 2
    a, b = sharp.copy(), sharp.copy()
    a[:, :half], b[:, half:] = blurred[:, :half], blurred[:, half:]
    return np.stack([a, b]).astype(np.float32)
