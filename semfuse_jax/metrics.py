"""Fusion quality metrics, computed in float64 on the 0–255 scale.

Every metric takes the inputs ``sources`` as ``[..., N, H, W]`` (N ≥ 2 registered grey images) and
the fused image ``fused`` as ``[..., H, W]``; leading batch dimensions are allowed and give
``[...]`` scores. Colour images are scored on their luminance Y = 0.299R + 0.587G + 0.114B (see
:func:`luminance_255`). The ``*_jit`` functions are the jittable kernels; the plain names cast to
float64 (with x64 enabled for the call) so results do not depend on the input dtype.

Definitions (N-input forms reduce to the usual two-input ones):

- ``q0``: Wang–Bovik universal quality index, 8×8 sliding windows ('valid', unit stride), Wang's
  special cases for flat windows; score = mean over windows, averaged over the inputs.
- ``qw``/``qe``: Piella–Heijmans weighted and edge-dependent fusion quality (same windows;
  saliency = biased local variance; λ_i = s_i / (Σ s + ε); C(w) = max_i s_i normalised to sum 1;
  Q_E = Q_W^(1−α) · Q_W(Sobel magnitudes)^α with α = 0.2; a negative Q_W counts as 0 in Q_E).
- ``qabf``: Xydeas–Petrovic Q^{AB/F}, benchmark form (as in VIFB): L = 1, Γ_g = 0.9994,
  κ_g = −15, σ_g = 0.5, Γ_α = 0.9879, κ_α = −22, σ_α = 0.8; orientation atan(s_y/s_x) (0 where
  both Sobel responses are 0).
- ``qabf_petrovic``: the Petrovic/Bristol form: strength (min + ε)/(max + ε), orientation
  ||α_A − α_F| − π/2|/(π/2) with α = atan(s_y/(s_x + ε)), sigmoids with Γ = 1 + exp(−κ(1 − σ)) so a
  perfect match scores 1, κ_g = 11, σ_g = 0.7, κ_α = 24, σ_α = 0.8, Q = sqrt(Q_g·Q_α), weights g.
- ``en`` entropy of F (256 bins, bits); ``sd`` standard deviation of F; ``sf`` spatial frequency
  sqrt(RF² + CF²) with mean squared first differences along rows and columns; ``ag`` average
  gradient, mean of sqrt((Δx² + Δy²)/2) over the (H−1)(W−1) forward differences; ``mi`` Shannon
  mutual information Σ_i MI(I_i, F) in bits (256 bins; pixels rounded to integers); ``ssim`` mean
  over inputs of SSIM(I_i, F) (Wang 2004: 11×11 Gaussian, σ = 1.5, K1 = 0.01, K2 = 0.03, L = 255,
  'valid' windows); ``mef_ssim`` MEF-SSIM (Ma, Zeng & Wang 2015, :func:`mef_ssim_jit`);
  ``overshoot`` the share of pixels outside the inputs' local 3×3 range by more than 5 grey
  levels (:func:`overshoot_jit`; lower is better).
- ``chroma_error`` (colour sets, on RGB, not luminance): :func:`chroma_error`.

Sobel kernels are [1 2 1; 0 0 0; −1 −2 −1]/8 and its transpose, 'same' size with zero padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from semfuse_jax.colour import YCBCR
from semfuse_jax.errors import SemfuseError

WINDOW = 8
PIELLA_ALPHA = 0.2
EPS = 1e-12
NAMES: tuple[str, ...] = (
    "q0",
    "qw",
    "qe",
    "qabf",
    "qabf_petrovic",
    "en",
    "sd",
    "sf",
    "ag",
    "mi",
    "ssim",
    "mef_ssim",
    "overshoot",
)
_TINY = 64 * np.finfo(np.float64).eps


def luminance_255(image: np.ndarray) -> np.ndarray:
    """``[..., H, W, 1|3]`` in ``[0, 1]`` → grey ``[..., H, W]`` on 0–255 (luminance for RGB),
    float64."""
    return grey_255(np.asarray(image, np.float64))


def grey_255(image: jax.Array) -> jax.Array:
    """:func:`luminance_255` in the image's own dtype and array type (jittable)."""
    grey = image[..., 0] if image.shape[-1] == 1 else image @ np.array([0.299, 0.587, 0.114])
    return grey * 255.0


# ----------------------------------------------------------------------------- window helpers


def box_sum(x: jax.Array, size: int = WINDOW) -> jax.Array:
    """Sums over every ``size × size`` window inside ``[..., H, W]``: ``[..., H−s+1, W−s+1]``."""
    dims = (1,) * (x.ndim - 2) + (size, size)
    return lax.reduce_window(x, 0.0, lax.add, dims, (1,) * x.ndim, "VALID")


def window_stats(x: jax.Array, y: jax.Array) -> tuple[jax.Array, ...]:
    """Per 8×8 window: Σx, Σy, Σx², Σy², Σxy (``[..., H−7, W−7]`` each)."""
    return box_sum(x), box_sum(y), box_sum(x * x), box_sum(y * y), box_sum(x * y)


def q0_map(x: jax.Array, y: jax.Array) -> jax.Array:
    """Wang–Bovik Q per 8×8 window, with Wang's special cases, ``[..., H−7, W−7]``.

    Windows count as flat when ``N·(Σx² + Σy²) − (Σx)² − (Σy)²`` is within float64 rounding of 0.
    """
    n = float(WINDOW * WINDOW)
    sx, sy, sxx, syy, sxy = window_stats(x, y)
    mean_sq = sx * sx + sy * sy  # N²(μx² + μy²)
    var_sum = n * (sxx + syy) - mean_sq  # N²(σx² + σy²)
    flat = var_sum <= _TINY * n * (sxx + syy)
    numerator = 4.0 * (n * sxy - sx * sy) * sx * sy
    denominator = var_sum * mean_sq
    q = jnp.where(denominator > 0, numerator / jnp.where(denominator > 0, denominator, 1.0), 1.0)
    flat_q = 2.0 * sx * sy / jnp.where(mean_sq > 0, mean_sq, 1.0)
    return jnp.where(flat & (mean_sq > 0), flat_q, jnp.where(flat, 1.0, q))


def local_variance(x: jax.Array) -> jax.Array:
    """Biased (1/64) variance in every 8×8 window, ``[..., H−7, W−7]``."""
    n = float(WINDOW * WINDOW)
    mean = box_sum(x) / n
    return jnp.maximum(box_sum(x * x) / n - mean * mean, 0.0)


def sobel(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sobel responses (s_x, s_y) of ``[..., H, W]``, 'same' size, zero padding, kernels / 8."""
    p = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    h, w = x.shape[-2:]

    def at(dy: int, dx: int) -> jax.Array:
        return p[..., dy : dy + h, dx : dx + w]

    # [1 2 1; 0 0 0; -1 -2 -1] / 8 responds to vertical change (s_y); its transpose to s_x.
    s_y = (at(0, 0) + 2 * at(0, 1) + at(0, 2) - at(2, 0) - 2 * at(2, 1) - at(2, 2)) / 8.0
    s_x = (at(0, 0) + 2 * at(1, 0) + at(2, 0) - at(0, 2) - 2 * at(1, 2) - at(2, 2)) / 8.0
    return s_x, s_y


def gradient_magnitude(x: jax.Array) -> jax.Array:
    s_x, s_y = sobel(x)
    return jnp.sqrt(s_x * s_x + s_y * s_y)


# ----------------------------------------------------------------------------- metrics


def q0_jit(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """Mean over inputs of the window-averaged Q0(I_i, F): ``[..., N, H, W]``, ``[..., H, W]``."""
    return jnp.mean(jnp.mean(q0_map(sources, fused[..., None, :, :]), axis=(-2, -1)), axis=-1)


def qw_jit(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """Piella's weighted fusion quality index Q_W."""
    q = q0_map(sources, fused[..., None, :, :])  # [..., N, h, w]
    saliency = local_variance(sources)
    lam = saliency / (jnp.sum(saliency, axis=-3, keepdims=True) + EPS)
    overall = jnp.max(saliency, axis=-3)  # [..., h, w]
    total = jnp.sum(overall, axis=(-2, -1), keepdims=True)
    uniform = jnp.ones_like(overall) / (overall.shape[-1] * overall.shape[-2])
    c = jnp.where(total > 0, overall / jnp.where(total > 0, total, 1.0), uniform)
    return jnp.sum(c * jnp.sum(lam * q, axis=-3), axis=(-2, -1))


def qe_jit(sources: jax.Array, fused: jax.Array, alpha: float = PIELLA_ALPHA) -> jax.Array:
    """Piella's edge-dependent fusion quality index Q_E."""
    plain = jnp.maximum(qw_jit(sources, fused), 0.0)
    edges = jnp.maximum(qw_jit(gradient_magnitude(sources), gradient_magnitude(fused)), 0.0)
    return plain ** (1.0 - alpha) * edges**alpha


def _qabf(
    sources: jax.Array,
    fused: jax.Array,
    preservation: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array],
    orientation: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
    """Shared Q^{AB/F} skeleton: preservation(g_i, a_i, g_F, a_F) weighted by g_i."""
    sx, sy = sobel(sources)
    fx, fy = sobel(fused[..., None, :, :])
    g, gf = jnp.sqrt(sx * sx + sy * sy), jnp.sqrt(fx * fx + fy * fy)
    q = preservation(g, orientation(sx, sy), gf, orientation(fx, fy))
    numerator = jnp.sum(q * g, axis=(-3, -2, -1))
    denominator = jnp.sum(g, axis=(-3, -2, -1))
    return numerator / jnp.where(denominator > 0, denominator, 1.0)


def _atan_ratio(s_x: jax.Array, s_y: jax.Array) -> jax.Array:
    """atan(s_y / s_x), ±π/2 where s_x = 0, and 0 where both are 0."""
    safe = jnp.where(s_x == 0, 1.0, s_x)
    return jnp.where(s_x == 0, jnp.sign(s_y) * jnp.pi / 2, jnp.arctan(s_y / safe))


def _benchmark_preservation(g, a, gf, af):
    strength = jnp.where(
        g > gf,
        gf / jnp.where(g > 0, g, 1.0),
        jnp.where(gf > 0, g / jnp.where(gf > 0, gf, 1.0), 1.0),
    )
    angle = 1.0 - jnp.abs(a - af) / (jnp.pi / 2)
    q_g = 0.9994 / (1.0 + jnp.exp(-15.0 * (strength - 0.5)))
    q_a = 0.9879 / (1.0 + jnp.exp(-22.0 * (angle - 0.8)))
    return q_g * q_a


def _petrovic_sigmoid(x: jax.Array, kappa: float, sigma: float) -> jax.Array:
    gamma = 1.0 + np.exp(-kappa * (1.0 - sigma))
    return gamma / (1.0 + jnp.exp(-kappa * (x - sigma)))


def _petrovic_preservation(g, a, gf, af, eps: float = 1e-10):
    strength = (jnp.minimum(g, gf) + eps) / (jnp.maximum(g, gf) + eps)
    angle = jnp.abs(jnp.abs(a - af) - jnp.pi / 2) / (jnp.pi / 2)
    return jnp.sqrt(_petrovic_sigmoid(strength, 11.0, 0.7) * _petrovic_sigmoid(angle, 24.0, 0.8))


def qabf_jit(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """Q^{AB/F}, benchmark (VIFB) parameters."""
    return _qabf(sources, fused, _benchmark_preservation, _atan_ratio)


def qabf_petrovic_jit(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """Q^{AB/F}, Petrovic/Bristol form (1 for a perfect match)."""
    return _qabf(
        sources, fused, _petrovic_preservation, lambda sx, sy: jnp.arctan(sy / (sx + 1e-10))
    )


def _levels(x: jax.Array) -> jax.Array:
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.int32)


def _entropy(counts: jax.Array) -> jax.Array:
    p = counts / jnp.sum(counts, axis=-1, keepdims=True)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _histogram(levels: jax.Array, bins: int) -> jax.Array:
    """Counts ``[..., bins]`` of int levels ``[..., H, W]``."""
    flat = levels.reshape(-1, levels.shape[-2] * levels.shape[-1])
    counts = jax.vmap(lambda v: jnp.bincount(v, length=bins))(flat)
    return counts.reshape(*levels.shape[:-2], bins).astype(jnp.float64)


def en_jit(fused: jax.Array) -> jax.Array:
    """Entropy of the fused image (bits, 256 bins)."""
    return _entropy(_histogram(_levels(fused), 256))


def mutual_information(x: jax.Array, y: jax.Array) -> jax.Array:
    """Shannon MI (bits) of two ``[..., H, W]`` images on 256 integer levels."""
    joint = _histogram(_levels(x) * 256 + _levels(y), 256 * 256)
    joint = joint.reshape(*joint.shape[:-1], 256, 256)
    h_x = _entropy(jnp.sum(joint, axis=-1))
    h_y = _entropy(jnp.sum(joint, axis=-2))
    h_xy = _entropy(joint.reshape(*joint.shape[:-2], -1))
    return h_x + h_y - h_xy


def mi_jit(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """Σ_i MI(I_i, F)."""
    return jnp.sum(mutual_information(sources, fused[..., None, :, :]), axis=-1)


def sd_jit(fused: jax.Array) -> jax.Array:
    return jnp.std(fused, axis=(-2, -1))


def sf_jit(fused: jax.Array) -> jax.Array:
    rf = jnp.mean(jnp.square(jnp.diff(fused, axis=-1)), axis=(-2, -1))
    cf = jnp.mean(jnp.square(jnp.diff(fused, axis=-2)), axis=(-2, -1))
    return jnp.sqrt(rf + cf)


def ag_jit(fused: jax.Array) -> jax.Array:
    dx = jnp.diff(fused, axis=-1)[..., :-1, :]
    dy = jnp.diff(fused, axis=-2)[..., :, :-1]
    return jnp.mean(jnp.sqrt((dx * dx + dy * dy) / 2.0), axis=(-2, -1))


def _gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The 1-D factor of the separable, unit-sum ``size × size`` Gaussian window."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_band(size: int) -> np.ndarray:
    """``[size, size − 10]``: column ``j`` holds the 11 Gaussian taps at rows ``j … j + 10``, so
    ``x @ band`` is the 'valid' Gaussian mean along the last axis of ``x``."""
    taps = _gaussian_taps()
    band = np.zeros((size, size - len(taps) + 1))
    for j in range(band.shape[1]):
        band[j : j + len(taps), j] = taps
    return band


def gaussian_filter(v: jax.Array) -> jax.Array:
    """11×11 Gaussian (σ = 1.5) window means over the last two axes of ``[..., H, W]``, 'valid':
    ``[..., H − 10, W − 10]``. The window is separable, so it runs as two matrix products with
    banded matrices (full float32 precision on every backend; on a CPU about 15× faster in
    float32 than a one-channel convolution, and quick to compile)."""
    rows = jnp.asarray(_gaussian_band(v.shape[-2]), v.dtype)
    cols = jnp.asarray(_gaussian_band(v.shape[-1]), v.dtype)
    highest = lax.Precision.HIGHEST
    across = jnp.matmul(v, cols, precision=highest)  # [..., H, W − 10]
    return jnp.swapaxes(jnp.matmul(jnp.swapaxes(across, -1, -2), rows, precision=highest), -1, -2)


def ssim_map(x: jax.Array, y: jax.Array) -> jax.Array:
    """SSIM per 11×11 Gaussian window ('valid'), Wang et al. 2004 constants, L = 255."""
    filt = gaussian_filter
    x, y = jnp.broadcast_arrays(x, y)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim_jit(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """Mean over inputs of SSIM(I_i, F)."""
    return jnp.mean(jnp.mean(ssim_map(sources, fused[..., None, :, :]), axis=(-2, -1)), axis=-1)


def _fused_only(kernel: Callable[[jax.Array], jax.Array]) -> Callable[..., jax.Array]:
    def scored(sources: jax.Array, fused: jax.Array) -> jax.Array:
        del sources
        return kernel(fused)

    return scored


@jax.jit
def all_metrics_jit(sources: jax.Array, fused: jax.Array) -> dict[str, jax.Array]:
    """Every metric of :data:`NAMES` at once (one compilation)."""
    return {name: kernel(sources, fused) for name, kernel in KERNELS.items()}


def _check(sources: np.ndarray, fused: np.ndarray) -> None:
    if sources.ndim < 3 or sources.shape[-3] < 2:
        raise SemfuseError(f"sources must be [..., N>=2, H, W], got {sources.shape}")
    if sources.shape[-2:] != fused.shape[-2:] or sources.shape[:-3] != fused.shape[:-2]:
        raise SemfuseError(f"sources {sources.shape} and fused {fused.shape} do not match")
    if min(fused.shape[-2:]) < 11:
        raise SemfuseError("images must be at least 11x11 to score")


def _float64(fn: Callable, *arrays: np.ndarray) -> np.ndarray:
    with jax.enable_x64(True):
        return jax.tree.map(np.asarray, fn(*(jnp.asarray(a, jnp.float64) for a in arrays)))


def compute_all(sources: np.ndarray, fused: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics in float64: ``sources [..., N, H, W]``, ``fused [..., H, W]`` on 0–255."""
    sources, fused = np.asarray(sources), np.asarray(fused)
    _check(sources, fused)
    return _float64(all_metrics_jit, sources, fused)


def _public(kernel: Callable, needs_sources: bool = True) -> Callable:
    jitted = jax.jit(kernel)

    def metric(sources: np.ndarray, fused: np.ndarray) -> np.ndarray:
        sources, fused = np.asarray(sources), np.asarray(fused)
        _check(sources, fused)
        return _float64(jitted, *((sources, fused) if needs_sources else (fused,)))

    metric.__doc__ = f"{kernel.__doc__ or kernel.__name__} In float64 (see the module docstring)."
    return metric


q0 = _public(q0_jit)
qw = _public(qw_jit)
qe = _public(qe_jit)
qabf = _public(qabf_jit)
qabf_petrovic = _public(qabf_petrovic_jit)
mi = _public(mi_jit)
ssim = _public(ssim_jit)
en = _public(en_jit, needs_sources=False)
sd = _public(sd_jit, needs_sources=False)
sf = _public(sf_jit, needs_sources=False)
ag = _public(ag_jit, needs_sources=False)


# ----------------------------------------------------------------------------- beyond luminance

MEF_SCALE_WEIGHTS = (0.0448, 0.2856, 0.3001)  # Ma, Zeng & Wang 2015 (from MS-SSIM), normalised
MEF_POWER = 4.0  # the exponent p of the structure weights ||x_k − μ_k||^p
OVERSHOOT_TOLERANCE = 5.0  # grey levels (of 255) beyond the inputs' local range


def _mef_ssim_scale(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """Single-scale MEF-SSIM: mean over windows of S(x̂, y) (see :func:`mef_ssim_jit`)."""
    c2 = (0.03 * 255) ** 2
    mu = gaussian_filter(sources)  # [..., N, h, w]
    mu_y = gaussian_filter(fused)
    pair = sources[..., :, None, :, :] * sources[..., None, :, :, :]
    cov = gaussian_filter(pair) - mu[..., :, None, :, :] * mu[..., None, :, :, :]  # [.., N, N]
    cov_y = gaussian_filter(sources * fused[..., None, :, :]) - mu * mu_y[..., None, :, :]
    var_y = jnp.maximum(gaussian_filter(fused * fused) - mu_y * mu_y, 0.0)
    contrast = jnp.sqrt(jnp.maximum(jnp.diagonal(cov, axis1=-4, axis2=-3), 0.0))  # [.., h, w, N]
    contrast = jnp.moveaxis(contrast, -1, -3)  # [..., N, h, w]
    desired = jnp.max(contrast, axis=-3)  # ĉ: the highest contrast of the inputs
    # s̄ = Σ_k w_k s_k with w_k = c_k^p and s_k = (x_k − μ_k)/c_k, so s̄ = Σ_k a_k (x_k − μ_k)
    # with a_k = c_k^(p−1); its squared norm and its covariance with y follow from the
    # windows' second moments, without building patches.
    a = contrast ** (MEF_POWER - 1.0)
    norm2 = jnp.einsum("...khw,...klhw,...lhw->...hw", a, cov, a)
    cross = jnp.sum(a * cov_y, axis=-3)
    ok = norm2 > _TINY
    cov_desired = jnp.where(ok, desired * cross / jnp.sqrt(jnp.where(ok, norm2, 1.0)), 0.0)
    var_desired = jnp.where(ok, desired * desired, 0.0)
    q = (2.0 * cov_desired + c2) / (var_desired + var_y + c2)
    return jnp.mean(q, axis=(-2, -1))


def _halve(x: jax.Array) -> jax.Array:
    """2×2 mean then every second pixel (MS-SSIM's downsampling)."""
    h, w = (x.shape[-2] // 2) * 2, (x.shape[-1] // 2) * 2
    x = x[..., :h, :w]
    return 0.25 * (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2])


def mef_ssim_jit(sources: jax.Array, fused: jax.Array) -> jax.Array:
    """MEF-SSIM (Ma, Zeng & Wang, IEEE TIP 2015): per 11×11 Gaussian window, the desired patch
    has the highest contrast of the inputs and the contrast-weighted (``||x_k − μ_k||^4``) mean
    of their unit structures; its SSIM structure term with the fused patch (C = (0.03·255)²) is
    averaged, per scale, and 3 scales (2×2 mean downsampling) are combined as
    ``Π q_l^{β_l}`` with β ∝ (0.0448, 0.2856, 0.3001); fewer scales when the image is small."""
    weights, scores = [], []
    for beta in MEF_SCALE_WEIGHTS:
        if min(fused.shape[-2:]) < 11:
            break
        weights.append(beta)
        scores.append(jnp.maximum(_mef_ssim_scale(sources, fused), 0.0))
        sources, fused = _halve(sources), _halve(fused)
    total = sum(weights)
    return jnp.prod(jnp.stack([s ** (w / total) for s, w in zip(scores, weights, strict=True)]), 0)


def overshoot_jit(
    sources: jax.Array, fused: jax.Array, tolerance: float = OVERSHOOT_TOLERANCE
) -> jax.Array:
    """Share of pixels whose fused value leaves the [min, max] range of all inputs over their
    3×3 neighbourhood by more than ``tolerance`` grey levels: halos and ringing (lower is
    better; 0 for any pixel-wise convex combination of the inputs)."""
    dims = (1,) * (sources.ndim - 2) + (3, 3)
    strides = (1,) * sources.ndim
    low = lax.reduce_window(
        jnp.min(sources, axis=-3), jnp.inf, lax.min, dims[1:], strides[1:], "SAME"
    )
    high = lax.reduce_window(
        jnp.max(sources, axis=-3), -jnp.inf, lax.max, dims[1:], strides[1:], "SAME"
    )
    outside = (fused < low - tolerance) | (fused > high + tolerance)
    return jnp.mean(outside.astype(fused.dtype), axis=(-2, -1))


KERNELS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "q0": q0_jit,
    "qw": qw_jit,
    "qe": qe_jit,
    "qabf": qabf_jit,
    "qabf_petrovic": qabf_petrovic_jit,
    "en": _fused_only(en_jit),
    "sd": _fused_only(sd_jit),
    "sf": _fused_only(sf_jit),
    "ag": _fused_only(ag_jit),
    "mi": mi_jit,
    "ssim": ssim_jit,
    "mef_ssim": mef_ssim_jit,
    "overshoot": overshoot_jit,
}
"""Every metric of :data:`NAMES` as a jittable ``(sources [..., N, H, W], fused [..., H, W]) →
[...]`` kernel on 0–255 (the fused-only metrics ignore ``sources``)."""


def ycbcr_255(image: np.ndarray) -> np.ndarray:
    """BT.601 full-range (JPEG) Y, Cb, Cr on 0–255 of RGB ``[..., 3]`` in ``[0, 1]``."""
    rgb = np.asarray(image, np.float64) * 255.0
    return rgb @ YCBCR.T + np.array([0.0, 128.0, 128.0])


CHROMA_SUPPORT = 5.0  # grey levels of chroma (|Cb − 128|, |Cr − 128| combined) that count as colour


def chroma_error(images: np.ndarray, fused: np.ndarray) -> float:
    """Chroma fidelity of a fusion of colour inputs: the mean over both chroma channels of
    ``|Cb_F − Cb_ref|`` and ``|Cr_F − Cr_ref|`` (grey levels of 255, lower is better) over the
    colour inputs' support, the pixels where some input's chroma magnitude
    ``sqrt((Cb − 128)² + (Cr − 128)²)`` exceeds :data:`CHROMA_SUPPORT`; the reference is the
    input with the largest chroma magnitude there.

    ``images`` ``[N, H, W, C]`` and ``fused`` ``[H, W, C]`` in ``[0, 1]``; NaN for grey sets or
    when no pixel has colour.
    """
    images, fused = np.asarray(images), np.asarray(fused)
    if images.shape[-1] != 3 or fused.shape[-1] != 3:
        return float("nan")
    chroma = ycbcr_255(images)[..., 1:] - 128.0  # [N, H, W, 2]
    magnitude = np.linalg.norm(chroma, axis=-1)
    strongest = np.argmax(magnitude, axis=0)
    reference = np.take_along_axis(chroma, strongest[None, ..., None], axis=0)[0]
    support = np.max(magnitude, axis=0) > CHROMA_SUPPORT
    if not support.any():
        return float("nan")
    error = np.abs(ycbcr_255(fused)[..., 1:] - 128.0 - reference).mean(axis=-1)
    return float(error[support].mean())


mef_ssim = _public(mef_ssim_jit)
overshoot = _public(overshoot_jit)


# ----------------------------------------------------------------------------- the registry


@dataclasses.dataclass(frozen=True)
class Metric:
    """One score of a fused set, as tables and reports show it.

    Attributes:
      name: the column name (a key of :data:`REGISTRY`).
      lower_is_better: tables mark the lowest value best (else the highest).
      colour_only: scored on RGB and defined only for sets with colour (None elsewhere); the
        others are scored on the luminance (:func:`luminance_255`) by :data:`KERNELS`.
    """

    name: str
    lower_is_better: bool = False
    colour_only: bool = False


REGISTRY: dict[str, Metric] = {
    **{name: Metric(name, lower_is_better=name == "overshoot") for name in NAMES},
    "chroma_error": Metric("chroma_error", lower_is_better=True, colour_only=True),
}
"""Every score of a table, in column order; a new metric is an entry here plus its kernel."""


def score_set(inputs: np.ndarray, fused: np.ndarray) -> dict[str, float | None]:
    """Every metric of :data:`REGISTRY` for one set, in float64: ``[N, H, W, C]`` inputs and a
    ``[H, W, C]`` result in ``[0, 1]``; a colour-only metric is None for a set without colour."""
    values = compute_all(luminance_255(inputs), luminance_255(fused))
    chroma = chroma_error(inputs, fused)
    return {name: float(values[name]) for name in NAMES} | {
        "chroma_error": None if np.isnan(chroma) else chroma
    }
