"""FM4 (beyond the paper): the parts that make it.

- **Start**: an activity-guided Laplacian pyramid (:func:`activity_pyramid`): every detail band
  comes from the input with more local band energy, with soft seams; a structure one input
  dominates is taken whole from it; the coarsest level is a contrast-weighted mix without seams.
- **Target**: the inputs' VGG19 features blended with the same choice
  (:func:`semfuse_jax.rules.blend` of the finest band's winner map).
- **Range**: every Adam step is projected onto the inputs' local range (:func:`local_range`: per
  pixel and channel, the min and max of all inputs over its 3×3 neighbourhood), so FM4 makes no
  new extremes: no halos or ringing beside strong edges (its overshoot measure is 0 by
  construction). In a colour-true fusion the steps also may not take the luminance further out
  of the kept chroma's gamut than the start (:func:`semfuse_jax.colour.keep_chroma`).
- **Stopping**: Adam runs the schedule; per set the last epoch that improved source-referenced
  quality is kept (Q_E and Petrovic Q^{AB/F}, neither worse: :func:`quality` with
  :data:`QUALITY_NAMES`), scored as the file will store it when the caller gives its bit depth
  (:func:`semfuse_jax.fusion.fuse`'s ``bits``). Its result therefore often *is* the start
  image (``best_epoch`` 0): reports say which epoch was kept.
- **Edges**: the kept image is refined in the gradient domain (:func:`edge_target`,
  :class:`semfuse_jax.optimise.EdgeObjective`): its Sobel gradients are pulled towards those of
  the input with the most gradient energy, as strongly as that input dominates there, while it
  stays near the image refined, in the same range. The refinement is kept only where it raises
  the sum of Q_E, Petrovic Q^{AB/F} and MEF-SSIM (:data:`EDGE_QUALITY_NAMES`) and the scores
  that fall lose at most 1/:data:`EDGE_TRADE` of what the others gain
  (:func:`semfuse_jax.optimise.improves`): its choice of gradients is made pixel by pixel, and
  MEF-SSIM's structure term is what sees structures of different inputs mixed inside a window.
  Reports say whether it was kept.

``benchmarks/quality.py`` and ``benchmarks/RESULTS.md`` show why each part is there.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from semfuse_jax import metrics, pyramid, rules
from semfuse_jax.optimise import Schedule
from semfuse_jax.pyramid import expand, gaussian_pyramid, laplacian_pyramid

GATE_THRESHOLD = 0.6  # share of the local energy above which one input dominates (see below)


@partial(
    jax.jit,
    static_argnames=(
        "levels", "radius", "smooth", "base_radius", "base_power", "gate_level", "gate_radius",
        "gate_threshold", "gate_coarse",
    ),
)  # fmt: skip
def activity_pyramid(
    images: jax.Array,
    levels: int = 4,
    radius: int = 1,
    smooth: int = 2,
    base_radius: int | None = 4,
    base_power: float | None = 2.0,
    gate_level: int = 2,
    gate_radius: int = 2,
    gate_threshold: float | None = GATE_THRESHOLD,
    gate_coarse: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """FM4's start image: a Laplacian pyramid whose levels follow local activity.

    - **Detail bands**: each is taken, per position and for all channels at once, from the
      input whose band energy (summed over channels, averaged over ``(2·radius+1)²`` windows)
      is largest, the winner map box-smoothed over ``(2·smooth+1)²`` windows so seams are soft
      (:func:`semfuse_jax.rules.activity_weights`).
    - **Coarsest level** (intensity and colour): weighted by the coarsest band's energy over
      ``(2·base_radius+1)²`` windows raised to ``base_power`` (None: the hard winner;
      ``base_radius=None``: the plain mean), then multi-band blended over a pyramid as deep as
      that level allows, so the mix has no seams at any scale.
    - **Dominant structures stay whole**: where one input holds more than ``gate_threshold`` of
      the energy of band ``gate_level`` (over ``(2·gate_radius+1)²`` windows; band 2 is at 1/4
      resolution, so structures of about 20 px and larger), every band from the finest up to
      that one is taken from that input, ramping in from the per-band choice as its share
      rises from the threshold to 1 (``gate_threshold=None``: no gate). A hot target of an
      infrared image or a PET/SPECT uptake region then arrives with its edges intact instead
      of being cut into bands from both inputs; multi-focus pairs, whose coarse bands agree,
      keep the per-band choice. Coarser levels keep their own choice: band ``gate_level``
      cannot see the inside of a structure larger than its windows, and carrying its winner
      down to the coarsest level (``gate_coarse=True``, an ablation) can swap a bright
      region's level for the other input's.

    Args:
      images: one set ``[N, H, W, C]`` in ``[0, 1]``.

    Returns:
      The fused ``[H, W, C]`` (clipped to ``[0, 1]``) and the finest band's weights
      ``[N, H, W]`` (≥ 0, summing to 1 over the inputs).
    """
    bands = laplacian_pyramid(images, levels)  # [N, h, w, C] each, then the coarsest level
    base = bands.pop()
    if not bands:
        n = images.shape[0]
        return jnp.mean(images, axis=0), jnp.full(images.shape[:-1], 1.0 / n, images.dtype)
    energy = [jnp.sum(jnp.square(band), axis=-1) for band in bands]  # [N, h, w] each
    weights = [rules.activity_weights(e, radius, smooth) for e in energy]
    weights.append(_base_weights(energy[-1][..., ::2, ::2], base_radius, base_power))
    if gate_threshold is not None:
        level = min(gate_level, len(bands) - 1)
        gated = _gate(weights, energy, level, gate_radius, gate_threshold)
        weights = gated if gate_coarse else gated[: level + 1] + weights[level + 1 :]
    depth = max(1, int(np.log2(min(base.shape[-3:-1]))))
    fused = pyramid.blend(base, weights[-1], depth)
    for band, w in reversed(list(zip(bands, weights[:-1], strict=True))):
        fused = expand(fused, band.shape[-3:-1]) + rules.blend(band, w)
    return jnp.clip(fused, 0.0, 1.0), weights[0]


def _base_weights(energy: jax.Array, radius: int | None, power: float | None) -> jax.Array:
    """Weights ``[N, h, w]`` of the coarsest level from the coarsest band's energy at its
    resolution: the mean (``radius`` None), the hard winner (``power`` None) or the windowed
    energy to ``power``, normalised."""
    n = energy.shape[0]
    if radius is None:
        return jnp.full(energy.shape, 1.0 / n, energy.dtype)
    if power is None:
        return rules.activity_weights(energy, radius, 0)
    local = rules.box_mean(energy, radius) ** power
    total = jnp.sum(local, axis=0, keepdims=True)
    return jnp.where(total > 0, local / jnp.where(total > 0, total, 1.0), 1.0 / n)


def _gate(
    weights: list[jax.Array], energy: list[jax.Array], level: int, radius: int, threshold: float
) -> list[jax.Array]:
    """Mix every level's weights ``[N, h_l, w_l]`` (bands fine to coarse, then the coarsest
    level) towards band ``level``'s winner, as far as that input dominates the band's energy
    there (:func:`activity_pyramid`); the winner and its strength are expanded to full
    resolution and reduced to each level's size."""
    local = rules.box_mean(energy[level], radius)  # [N, h, w]
    total = jnp.sum(local, axis=0, keepdims=True)
    share = local / jnp.where(total > 0, total, 1.0)
    strength = jnp.clip((jnp.max(share, axis=0) - threshold) / (1.0 - threshold), 0.0, 1.0)
    winner = jax.nn.one_hot(jnp.argmax(local, axis=0), local.shape[0], axis=0, dtype=local.dtype)
    maps = jnp.concatenate([winner, strength[None]], axis=0)[..., None]  # [N + 1, h, w, 1]
    for finer in reversed(energy[:level]):  # up to full resolution
        maps = expand(maps, finer.shape[-2:])
    maps = gaussian_pyramid(jnp.clip(maps, 0.0, 1.0), len(weights) - 1)  # every level's size
    mixed = []
    for w, m in zip(weights, maps, strict=True):
        coherent, gate = m[:-1, ..., 0], m[-1:, ..., 0]
        coherent = coherent / jnp.maximum(jnp.sum(coherent, axis=0, keepdims=True), 1e-12)
        mixed.append(gate * coherent + (1.0 - gate) * w)
    return mixed


def start(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FM4's start image and feature choice for one set: ``[N, H, W, C]`` → (``[H, W, C]``,
    weights ``[N, H, W]``: the finest level's winner, a hard choice)."""
    init, weights = activity_pyramid(images)
    winner = jnp.argmax(weights, axis=0)
    return init, jax.nn.one_hot(winner, images.shape[0], axis=0, dtype=images.dtype)


EDGE_RADIUS = 1  # gradient energy compared over 3×3 windows (rules.strongest_gradient)
EDGE_FIDELITY = 0.05  # weight of staying at the refined image against the edge term
EDGE_SCHEDULE = Schedule(epochs=1, iters=100, lr=0.5, lr_decay=1.0)  # one epoch, one decision
EDGE_TRADE = 20.0  # the refinement may lose on some scores 1/20 of what it gains on the others


def edge_target(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FM4's edge target of one set ``[N, H, W, C]``: the Sobel field ``[2, H, W, C]`` of the
    input with the most gradient energy over 3×3 windows, and the weight ``[H, W]`` of the edge
    term, how clearly that input dominates there (:func:`semfuse_jax.rules.strongest_gradient`).
    """
    return rules.strongest_gradient(images, EDGE_RADIUS)


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


QUALITY_NAMES = ("qe", "qabf_petrovic")  # what FM4's optimisation keeps an epoch by
EDGE_QUALITY_NAMES = ("qe", "qabf_petrovic", "mef_ssim")  # … and its edge refinement


def quality(
    images: np.ndarray,
    names: tuple[str, ...] = QUALITY_NAMES,
    store: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """FM4's stopping signal for a batch of sets ``[B, N, H, W, C]``: a function scoring
    candidates ``[B, H, W, C] → [B, K]`` by the K metrics ``names`` (of
    :data:`semfuse_jax.metrics.NAMES`) against the inputs (luminance, float64); they use only
    the inputs, no reference image. ``store`` maps candidates to the images as they will be
    stored (``[B, H, W, 1|3]``: rounded to the file's bit depth, with the chroma of a
    colour-true fusion), so the scores are those of the files; None scores them as they are.
    None for images smaller than the metrics' 11×11 minimum (FM4 then runs its whole
    schedule)."""
    if min(images.shape[2:4]) < 11:
        return None
    sources = metrics.luminance_255(images)
    scorers = [getattr(metrics, name) for name in names]

    def score(fused: np.ndarray) -> np.ndarray:
        candidate = metrics.luminance_255(fused if store is None else store(fused))
        return np.stack([scorer(sources, candidate) for scorer in scorers], axis=-1)

    return score
