"""The fusion methods: one registry entry per method, saying what it needs and what it is made of.

Every method is one of four kinds:

- a **combination** of the inputs (the classical baselines): ``combine`` maps a batch
  ``[B, N, H, W, C]`` to ``[B, H, W, C]``; no network;
- a **semantic mix** (FM3, FM5): the classifier's Grad-CAM ``maps`` of each input decide, and
  ``mix`` turns one set ``[N, H, W, C]`` and its maps ``[N, H, W]`` into the fused ``[H, W, C]``
  and the per-input weights ``[N, H, W]``;
- a **semantic choice** (FM6): ``select`` makes candidate fusions of a batch from its maps and
  lets the classifier pick one per set (:mod:`semfuse_jax.regions`);
- an **optimisation** (FM0, FM1, FM2, FM4): Adam from ``start``'s image towards the VGG19 feature
  ``target`` of the inputs (:mod:`semfuse_jax.optimise`), optionally keeping the epoch with the
  best source-referenced quality (``quality_stop``) and refining the result in the gradient
  domain (``edges``).

Parts but ``select`` take one set (``[N, ...]``, inputs first); :func:`semfuse_jax.fusion.fuse`
vmaps them over the batch. A method's settings are one frozen dataclass (``params``: its
defaults; FM4's :class:`semfuse_jax.fm4.Params`, FM5's :class:`BlendParams`, FM6's
:class:`semfuse_jax.regions.RegionParams`), carried by
``FusionConfig.method_params`` into every report; ``start``, ``mix``, ``edges`` and ``bounds``
receive them as ``params`` (None for a method without settings), and nothing else reads them.
A new method is one :class:`Method` in :data:`REGISTRY`, with its parts here when they are a few
lines and in a module of its own otherwise (like :mod:`semfuse_jax.fm4`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from semfuse_jax import baselines, cam, fm4, pyramid, regions, rules
from semfuse_jax.errors import SemfuseError


@dataclasses.dataclass(frozen=True)
class BlendParams:
    """FM5's settings.

    Attributes:
      levels: pyramid detail levels of the blend (``benchmarks/semantic.py``).
    """

    levels: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.levels <= 8:
            raise ValueError("levels must be between 0 and 8")


Params = Any  # a method's frozen settings dataclass, or None
Combine = Callable[[jax.Array], jax.Array]
Mix = Callable[[jax.Array, jax.Array, Params], tuple[jax.Array, jax.Array]]
Target = Callable[[jax.Array, jax.Array | None, bool], jax.Array]
Start = Callable[[jax.Array, Params], tuple[jax.Array, jax.Array | None]]
Box = Callable[[jax.Array, Params], tuple[jax.Array, jax.Array]]
Select = Callable[..., tuple[jax.Array, jax.Array]]  # (network, images, maps, params=)


def average_start(images: jax.Array, params: None = None) -> tuple[jax.Array, None]:
    """The paper's start: the mean of one set ``[N, H, W, C]``; no choice of its own."""
    return jnp.mean(images, axis=0), None


def choose_max_target(features: jax.Array, weights: jax.Array | None, weighted: bool) -> jax.Array:
    """FM0 (Ψ0): ``[N, h, w, c]`` → ``[h, w, c]``."""
    return rules.choose_max(features)


def majority_target(features: jax.Array, weights: jax.Array | None, weighted: bool) -> jax.Array:
    """FM1 (Ψ1): choose-max smoothed by a 3×3 majority vote."""
    return rules.majority_filter(features)


def cam_target(features: jax.Array, weights: jax.Array | None, weighted: bool) -> jax.Array:
    """FM2: choose-max on CAM-weighted features (``weights``: CAM maps ``[N, h, w]``)."""
    return rules.cam_weighted_choose_max(features, weights, weighted)


def activity_target(features: jax.Array, weights: jax.Array | None, weighted: bool) -> jax.Array:
    """FM4: the features blended by its start's activity choice (``weights`` ``[N, h, w]``)."""
    return rules.blend(features, weights)


def cam_mix(images: jax.Array, maps: jax.Array, params: None = None) -> tuple[jax.Array, jax.Array]:
    """FM3: ``I* = Σ_i P_Mi · I_i`` with the paper's mixing weights of the CAM maps."""
    weights = cam.mixing_weights(maps)
    return rules.blend(images, weights), weights


def semantic_blend(
    images: jax.Array, maps: jax.Array, params: BlendParams = BlendParams()
) -> tuple[jax.Array, jax.Array]:
    """FM5: each pixel goes to the input whose semantic map is highest (ties: the first), the
    choice blended over ``params.levels`` pyramid levels so seams are soft."""
    choice = jax.nn.one_hot(jnp.argmax(maps, axis=0), images.shape[0], axis=0)
    return jnp.clip(pyramid.blend(images, choice, params.levels), 0.0, 1.0), choice


@dataclasses.dataclass(frozen=True)
class Method:
    """One fusion method and its parts (see the module docstring for the three kinds).

    Attributes:
      name: the ``--method`` value.
      summary: one line for ``--help`` and the README.
      origin: ``paper`` (Hill & Bull 2021), ``semfuse_jax`` (ours) or ``baseline``.
      combine: a combination's function on ``[B, N, H, W, C]``.
      maps: the Grad-CAM maps a method needs: ``product`` (the paper's P) or ``mean``
        (:func:`semfuse_jax.cam.semantic_map`); None: no classifier.
      mix: a semantic mix's function on one set, its maps and ``params``.
      select: a semantic choice's function ``(network, images [B, N, H, W, C], maps
        [B, N, H, W], params=) → (fused [B, H, W, C], weights [B, N, H, W])`` on a batch.
      target: an optimisation's feature rule ``(features [N, h, w, c], weights [N, h, w] | None,
        weighted) → [h, w, c]``; its weights are the start's choice, else the CAM maps.
      start: an optimisation's start image ``[N, H, W, C], params → ([H, W, C], choice | None)``.
      quality_stop: keep the epoch with the best Q_E / Petrovic Q^{AB/F} (:func:`fm4.quality`).
      edges: an optimisation's edge target ``[N, H, W, C], params → (field [2, H, W, C], weight
        [H, W])``; the optimised image is then refined towards it in the gradient domain
        (:class:`semfuse_jax.optimise.EdgeObjective`); None: no such refinement.
      bounds: an optimisation's per-pixel box ``[N, H, W, C], params → (low, high)`` (each
        ``[H, W, C]``)
        that the start and every Adam step are projected onto; None: ``[0, 1]``.
      params: the method's default settings (a frozen dataclass), or None when it has none.
      colour: the default of ``FusionConfig.colour`` (:mod:`semfuse_jax.colour`): ``rgb`` (the
        paper's methods and the classical baselines fuse R, G, B), ``auto`` (luminance + chroma
        for sets mixing grey and colour inputs) or ``luminance``.
    """

    name: str
    summary: str
    origin: str
    combine: Combine | None = None
    maps: str | None = None
    mix: Mix | None = None
    select: Select | None = None
    target: Target | None = None
    start: Start = average_start
    quality_stop: bool = False
    edges: Box | None = None
    bounds: Box | None = None
    params: Params = None
    colour: str = "rgb"

    @property
    def optimised(self) -> bool:
        """Whether the method optimises an image towards VGG19 feature targets."""
        return self.target is not None


REGISTRY: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fm0", "Adam towards the choose-max (Ψ0) of the inputs' VGG19 features", "paper",
               target=choose_max_target),
        Method("fm1", "FM0 with the choice smoothed by a 3×3 majority vote (Ψ1)", "paper",
               target=majority_target),
        Method("fm2", "FM0 with the choice made on Grad-CAM-weighted features", "paper",
               maps="product", target=cam_target),
        Method("fm3", "Grad-CAM mixing weights applied to the input pixels (no optimisation)",
               "paper", maps="product", mix=cam_mix),
        Method("fm4", "activity pyramid start, activity-blended target, edge refinement, local "
               "range, quality stop", "semfuse_jax", target=activity_target, start=fm4.start,
               quality_stop=True, edges=fm4.edge_target, bounds=fm4.bounds, params=fm4.DEFAULT,
               colour="auto"),
        Method("fm5", "each pixel from the input with the highest Grad-CAM map, pyramid-blended",
               "semfuse_jax", maps="mean", mix=semantic_blend, params=BlendParams(), colour="auto"),
        Method("fm6", "FM5's maps made into candidate regions, the classifier's choice of them; "
               "the Laplacian pyramid where the inputs show one scene", "semfuse_jax",
               maps="mean", select=regions.choose, params=regions.RegionParams(), colour="auto"),
        Method("average", "pixel mean of the inputs", "baseline", combine=baselines.average),
        Method("max", "pixel maximum of the inputs", "baseline", combine=baselines.maximum),
        Method("dwt", "3-level db2 wavelet choose-max", "baseline", combine=baselines.dwt),
        Method("laplacian", "4-level Laplacian pyramid choose-max", "baseline",
               combine=baselines.laplacian),
        Method("ycbcr", "Laplacian pyramid on luminance, chroma of the most colourful input",
               "baseline", combine=baselines.laplacian, colour="luminance"),
        Method("mertens", "exposure fusion (Mertens et al. 2007): contrast, saturation and "
               "well-exposedness weights in a pyramid", "baseline", combine=baselines.mertens),
    )
}  # fmt: skip
NAMES: tuple[str, ...] = tuple(REGISTRY)
BASELINES: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.origin == "baseline")


def get(name: str) -> Method:
    """The registered method ``name``.

    Raises:
      SemfuseError: an unknown name (the message lists the known ones).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise SemfuseError(f"unknown method {name!r}; choose from {', '.join(NAMES)}") from None


def describe() -> str:
    """One line per method: ``name  (origin)  summary``."""
    return "\n".join(f"{m.name:10s} ({m.origin}) {m.summary}" for m in REGISTRY.values())
