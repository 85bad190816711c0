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
  :attr:`Params.quality_names`), scored as the file will store it when the caller gives its bit
  depth (:func:`semfuse_jax.fusion.fuse`'s ``bits``). Its result therefore often *is* the start
  image (``best_epoch`` 0): reports say which epoch was kept.
- **Edges**: the kept image is refined in the gradient domain (:func:`edge_target`,
  :class:`semfuse_jax.optimise.EdgeObjective`): its Sobel gradients are pulled towards those of
  the input with the most gradient energy, as strongly as that input dominates there, while it
  stays near the image refined, in the same range. The refinement is kept only where it raises
  the sum of Q_E, Petrovic Q^{AB/F} and MEF-SSIM (:attr:`Params.edge_quality_names`) and the
  scores that fall lose at most 1/:attr:`Params.edge_trade` of what the others gain
  (:func:`semfuse_jax.optimise.improves`): its choice of gradients is made pixel by pixel, and
  MEF-SSIM's structure term is what sees structures of different inputs mixed inside a window.
  Reports say whether it was kept.

Every setting of these parts is a field of :class:`Params`, which ``FusionConfig.method_params``
carries into every report; ``benchmarks/quality.py`` and ``benchmarks/RESULTS.md`` show why each
part is there and how its defaults were chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from semfuse_jax import colour, metrics, pyramid, rules
from semfuse_jax.optimise import Schedule
from semfuse_jax.pyramid import expand, gaussian_pyramid, laplacian_pyramid


@dataclasses.dataclass(frozen=True)
class Params:
    """FM4's settings, each used by one part (defaults: the measured ones).

    Attributes:
      levels, radius, smooth, base_radius, base_power, gate_level, gate_radius,
        gate_threshold, gate_coarse: the start image's pyramid (:func:`activity_pyramid`);
        ``gate_threshold`` is the share of the local energy above which one input dominates.
      range_radius, range_margin: the box every step is projected onto (:func:`local_range`;
        the margin in grey levels of 255, 0 in FM4, wider only as an ablation).
      quality_names: the metrics an epoch is kept by (:func:`quality`).
      edge_radius: gradient energy compared over ``(2·edge_radius+1)²`` windows
        (:func:`edge_target`).
      edge_fidelity: the weight of staying at the refined image against the edge term.
      edge_iters, edge_lr: the refinement's single epoch of Adam (:attr:`edge_schedule`).
      edge_trade: the refinement may lose on some scores ``1/edge_trade`` of what it gains on
        the others (:func:`semfuse_jax.optimise.improves`).
      edge_quality_names: the metrics the refinement is accepted by.
    """

    levels: int = 4
    radius: int = 1
    smooth: int = 2
    base_radius: int | None = 4
    base_power: float | None = 2.0
    gate_level: int = 2
    gate_radius: int = 2
    gate_threshold: float | None = 0.6
    gate_coarse: bool = False
    range_radius: int = 1
    range_margin: float = 0.0
    quality_names: tuple[str, ...] = ("qe", "qabf_petrovic")
    edge_radius: int = 1
    edge_fidelity: float = 0.05
    edge_iters: int = 100
    edge_lr: float = 0.5
    edge_trade: float = 20.0
    edge_quality_names: tuple[str, ...] = ("qe", "qabf_petrovic", "mef_ssim")

    def __post_init__(self) -> None:
        if self.levels < 0 or min(self.radius, self.smooth, self.range_radius) < 0:
            raise ValueError("levels and radii must be at least 0")
        if self.gate_threshold is not None and not 0 <= self.gate_threshold < 1:
            raise ValueError("gate_threshold must be in [0, 1) or None")
        if self.edge_iters < 1 or self.edge_lr <= 0 or self.edge_trade <= 0:
            raise ValueError("edge_iters, edge_lr and edge_trade must be positive")
        unknown = set(self.quality_names + self.edge_quality_names) - set(metrics.NAMES)
        if unknown or not self.quality_names or not self.edge_quality_names:
            raise ValueError(f"quality names must be some of {', '.join(metrics.NAMES)}")

    @property
    def pyramid(self) -> dict:
        """The keyword arguments of :func:`activity_pyramid`."""
        names = ("levels", "radius", "smooth", "base_radius", "base_power", "gate_level",
                 "gate_radius", "gate_threshold", "gate_coarse")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    @property
    def edge_schedule(self) -> Schedule:
        """One epoch, one decision."""
        return Schedule(epochs=1, iters=self.edge_iters, lr=self.edge_lr, lr_decay=1.0)


DEFAULT = Params()


@partial(
    jax.jit,
    static_argnames=(
        "levels", "radius", "smooth", "base_radius", "base_power", "gate_level", "gate_radius",
        "gate_threshold", "gate_coarse",
    ),
)  # fmt: skip
def activity_pyramid(
    images: jax.Array,
    levels: int = DEFAULT.levels,
    radius: int = DEFAULT.radius,
    smooth: int = DEFAULT.smooth,
    base_radius: int | None = DEFAULT.base_radius,
    base_power: float | None = DEFAULT.base_power,
    gate_level: int = DEFAULT.gate_level,
    gate_radius: int = DEFAULT.gate_radius,
    gate_threshold: float | None = DEFAULT.gate_threshold,
    gate_coarse: bool = DEFAULT.gate_coarse,
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


def start(images: jax.Array, params: Params = DEFAULT) -> tuple[jax.Array, jax.Array]:
    """FM4's start image and feature choice for one set: ``[N, H, W, C]`` → (``[H, W, C]``,
    weights ``[N, H, W]``: the finest level's winner, a hard choice)."""
    init, weights = activity_pyramid(images, **params.pyramid)
    winner = jnp.argmax(weights, axis=0)
    return init, jax.nn.one_hot(winner, images.shape[0], axis=0, dtype=images.dtype)


def edge_target(images: jax.Array, params: Params = DEFAULT) -> tuple[jax.Array, jax.Array]:
    """FM4's edge target of one set ``[N, H, W, C]``: the Sobel field ``[2, H, W, C]`` of the
    input with the most gradient energy over ``(2·edge_radius+1)²`` windows, and the weight
    ``[H, W]`` of the edge term, how clearly that input dominates there
    (:func:`semfuse_jax.rules.strongest_gradient`)."""
    return rules.strongest_gradient(images, params.edge_radius)


def bounds(images: jax.Array, params: Params = DEFAULT) -> tuple[jax.Array, jax.Array]:
    """FM4's box for one set ``[N, H, W, C]``: :func:`local_range` with its settings."""
    return local_range(images, params.range_radius, params.range_margin)


def local_range(
    images: jax.Array, radius: int = DEFAULT.range_radius, margin: float = DEFAULT.range_margin
) -> tuple[jax.Array, jax.Array]:
    """Per pixel and channel, the min and max of all inputs of one set ``[N, H, W, C]`` over the
    ``(2·radius+1)²`` neighbourhood (cut at the border), widened by ``margin`` grey levels and
    kept in ``[0, 1]``: ``(low, high)``, each ``[H, W, C]``."""
    size = (2 * radius + 1, 2 * radius + 1, 1)
    low = lax.reduce_window(jnp.min(images, 0), jnp.inf, lax.min, size, (1, 1, 1), "SAME")
    high = lax.reduce_window(jnp.max(images, 0), -jnp.inf, lax.max, size, (1, 1, 1), "SAME")
    return jnp.maximum(low - margin / 255.0, 0.0), jnp.minimum(high + margin / 255.0, 1.0)


@flax.struct.dataclass
class Quality:
    """FM4's stopping signal for a batch of sets, a jittable pytree scorer (an
    :class:`semfuse_jax.optimise.Scorer`): called on candidates ``[B, H, W, C]`` it gives their
    ``[B, K]`` scores by the K metrics ``names`` (:data:`semfuse_jax.metrics.KERNELS`, float32)
    against the inputs; they use only the inputs, no reference image. Candidates are scored as
    they will be stored: combined with ``chroma`` in a colour-true fusion, then rounded to each
    file's levels ``top``. Build it with :func:`quality`.

    Attributes:
      sources: ``[B, N, H, W]`` the inputs' luminance on 0–255.
      chroma: ``[B, H, W, 2]`` the chroma of a colour-true fusion, or None.
      top: ``[B]`` each file's top level (255, or 65535 for 16-bit grey), or None to score the
        candidates unrounded.
      names: the metrics, in score order.
    """

    sources: jax.Array
    chroma: jax.Array | None
    top: jax.Array | None
    names: tuple[str, ...] = flax.struct.field(pytree_node=False)

    def __call__(self, candidates: jax.Array) -> jax.Array:
        image = candidates if self.chroma is None else colour.combine(candidates, self.chroma)
        if self.top is not None:
            top = self.top[:, None, None, None]
            image = jnp.round(jnp.clip(image, 0.0, 1.0) * top) / top
        fused = metrics.grey_255(image)
        return jnp.stack([metrics.KERNELS[n](self.sources, fused) for n in self.names], axis=-1)


def quality(
    images: np.ndarray,
    names: tuple[str, ...] = DEFAULT.quality_names,
    bits: Sequence[int] | None = None,
    chroma: np.ndarray | None = None,
) -> Quality | None:
    """The :class:`Quality` of a batch of sets ``[B, N, H, W, C]`` by the metrics ``names``,
    for results stored at bit depths ``bits`` ``[B]`` (:func:`semfuse_jax.files.save_image`;
    None: scored unrounded) with the ``chroma`` ``[B, H, W, 2]`` of a colour-true fusion (or
    None). None for images smaller than the metrics' 11×11 minimum (FM4 then runs its whole
    schedule)."""
    if min(images.shape[2:4]) < 11:
        return None
    grey = chroma is None and images.shape[-1] == 1
    top = None if bits is None else [65535 if b == 16 and grey else 255 for b in bits]
    return Quality(
        sources=metrics.luminance_255(images).astype(np.float32),
        chroma=None if chroma is None else np.asarray(chroma, np.float32),
        top=None if top is None else np.asarray(top, np.float32),
        names=tuple(names),
    )
