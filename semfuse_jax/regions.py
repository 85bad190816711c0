"""FM6: semantic regions chosen by the classifier.

FM5 gives each pixel to the input whose semantic map is highest; where the maps overlap or are
flat, one input's object is often cut away. FM6 makes a small family of region allocations from
the same maps and lets the CAM classifier choose among them by looking at each blended
candidate:

1. **Allocations** ``[K, N, H, W]`` (one-hot over the inputs): FM5's choice with each input's map
   raised by each of ``biases``; half-plane partitions (for N inputs: sectors) in ``directions``
   directions, their boundary moved by each of ``offsets``; and the maps plus a directional ramp
   of strength ``ramp``.
2. Each is pyramid-blended over ``levels`` levels (like FM5) into a candidate image.
3. The classifier scores every candidate by the worst of the inputs' top-1 classes
   (``classes``: or top classes), by its margin
   ``min_i log P(c_i | candidate) − log P(5th class | candidate)`` (≥ 0 when every input's class
   is in the candidate's top 5), averaged over several views of the candidate: itself, its
   central crops (``zooms``) and the left–right mirrors of both (``mirror``). A choice that holds
   under a small change of view transfers better to networks the method never sees. The best
   candidate is the result.
4. **Same-scene gate.** Where the inputs show one scene (multi-focus, exposure stacks, medical
   modalities, infrared/visible), cutting them into regions loses detail and there is no second
   object to keep, so FM6 returns the Laplacian-pyramid fusion. A set is one scene when every
   pair of its inputs has aligned gradients: :func:`scene_alignment` at or above
   ``same_scene``. Past the gate, the Laplacian fusion is one more candidate and is kept
   whenever it already keeps every input's class (``keep_laplacian``): regions only where
   they are needed.

``benchmarks/semantic.py --parts=retention`` measures what the choice gives, judged by a network
FM6 never sees; ``benchmarks/RESULTS.md`` records it.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import baselines, cam, classifier, pyramid
from semfuse_jax.judge import TOP_K  # the margin is taken over the candidate's 5th class


@dataclasses.dataclass(frozen=True)
class RegionParams:
    """FM6's settings.

    Attributes:
      levels: pyramid detail levels of each candidate's blend (as FM5).
      biases: raises of one input's semantic map (each input in turn; the map is in [0, 1]).
      directions: directions of the half-plane partitions and ramps (evenly spaced).
      offsets: shifts of a partition's boundary towards the other inputs (in half-widths).
      ramp: strength of the directional ramp added to the maps (0: no such candidates).
      classes: each input's top classes whose summed probability (weighted by the input's) is
        its evidence in a candidate (1: its top class alone).
      keep_laplacian: also score the Laplacian pyramid's fusion, and keep it whenever its margin
        is ≥ 0 (every input's class in its top 5): regions only where they are needed.
      mirror: average each candidate's score with its left–right mirror's.
      zooms: also score central crops of these shares of the side, resized back (each mirrored
        too when ``mirror``): more views, a choice that transfers better.
      same_scene: gradient alignment (:func:`scene_alignment`) at and above which a set is one
        scene and fused with the Laplacian pyramid; above 1: never.
      chunk: candidates per classifier forward pass (bounds memory, not the result).
    """

    levels: int = 3
    biases: tuple[float, ...] = (0.15, 0.3)
    directions: int = 8
    offsets: tuple[float, ...] = (-0.5, 0.0, 0.5)
    ramp: float = 0.5
    classes: int = 1
    keep_laplacian: bool = True
    mirror: bool = True
    zooms: tuple[float, ...] = (0.85,)
    same_scene: float = 0.045
    chunk: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.levels <= 8:
            raise ValueError("levels must be between 0 and 8")
        if self.directions < 0 or self.chunk < 1 or not 1 <= self.classes <= 1000:
            raise ValueError("directions must be ≥ 0, chunk ≥ 1 and classes in 1 … 1000")
        if any(b <= 0 for b in self.biases):
            raise ValueError("biases must be positive")
        object.__setattr__(self, "biases", tuple(float(b) for b in self.biases))
        object.__setattr__(self, "offsets", tuple(float(o) for o in self.offsets))
        if not all(0.5 <= z < 1 for z in self.zooms):
            raise ValueError("zooms must be in [0.5, 1)")
        object.__setattr__(self, "zooms", tuple(float(z) for z in self.zooms))


def _ramps(n: int, h: int, w: int, directions: int) -> jax.Array:
    """``[D, N, H, W]``: for direction d and input i, the coordinate along d rotated by
    ``2π i / N`` (x, y in [−1, 1]); the argmax over inputs is a half-plane (N = 2) or sector."""
    yy, xx = jnp.meshgrid(jnp.linspace(-1.0, 1.0, h), jnp.linspace(-1.0, 1.0, w), indexing="ij")
    angle = 2 * np.pi * (np.arange(directions)[:, None] / directions + np.arange(n)[None] / n)
    return jnp.cos(angle)[..., None, None] * xx + jnp.sin(angle)[..., None, None] * yy


def allocations(maps: jax.Array, params: RegionParams) -> jax.Array:
    """The candidate allocations of one set: semantic maps ``[N, H, W]`` → one-hot
    ``[K, N, H, W]`` (the first is FM5's choice)."""
    n, h, w = maps.shape
    scores = [maps]
    for i, bias in itertools.product(range(n), params.biases):
        scores.append(maps.at[i].add(bias))
    if params.directions:
        ramps = _ramps(n, h, w, params.directions)
        first = jnp.zeros((n, 1, 1)).at[0].set(1.0)
        scores += [ramps[d] + offset * first for d in range(params.directions)
                   for offset in params.offsets]  # fmt: skip
        if params.ramp > 0:
            scores += [maps + params.ramp * ramps[d] for d in range(params.directions)]
    return jax.nn.one_hot(jnp.argmax(jnp.stack(scores), axis=1), n, axis=1)


def scene_alignment(images: jax.Array, size: int = 64) -> jax.Array:
    """How much one set's inputs ``[N, H, W, C]`` show one scene: the least, over pairs of
    inputs, of their gradient alignment at ``size``² less its mean over 15 circular shifts of one
    input by quarter sizes (what the same images give unregistered).

    The alignment of two images is the mean squared cosine of the angle between their gradients
    (blind to contrast polarity, so it holds across modalities), weighted at each pixel by both
    gradient magnitudes relative to their medians, each clipped at 3 (so a few strong edges do not
    decide). About 0 (at most 0.04) for the 66 pairs of unrelated photos; 0.055–0.48 for the
    shared registered multi-focus, exposure, medical and infrared/visible sets
    (``benchmarks/RESULTS.md``)."""
    grey = jnp.mean(images, axis=-1, keepdims=True)
    small = jax.image.resize(grey, (grey.shape[0], size, size, 1), "linear", antialias=True)
    gy, gx = jnp.gradient(small[..., 0], axis=(1, 2))  # [N, size, size]
    norm = jnp.sqrt(gx**2 + gy**2)
    strength = jnp.minimum(norm / (jnp.median(norm, axis=(1, 2), keepdims=True) + 1e-6), 3.0)

    def aligned(i: int, j: int, shift: tuple[int, int]) -> jax.Array:
        by, bx, nb, wb = (jnp.roll(a[j], shift, (0, 1)) for a in (gy, gx, norm, strength))
        cos2 = (gx[i] * bx + gy[i] * by) ** 2 / (norm[i] ** 2 * nb**2 + 1e-20)
        weight = strength[i] * wb
        return jnp.sum(weight * cos2) / (jnp.sum(weight) + 1e-20)

    def pair(i: int, j: int) -> jax.Array:
        shifts = [(dy * size // 4, dx * size // 4) for dy in range(4) for dx in range(4)]
        moved = jnp.stack([aligned(i, j, shift) for shift in shifts[1:]])
        return aligned(i, j, (0, 0)) - jnp.mean(moved)

    n = images.shape[0]
    return jnp.min(jnp.stack([pair(i, j) for i, j in itertools.combinations(range(n), 2)]))


def _margins(network: classifier.Network, candidates: jax.Array, evidence: jax.Array,
             params: RegionParams) -> jax.Array:  # fmt: skip
    """Scores ``[K]`` of one set's candidates ``[K, H, W, C]``; ``evidence`` ``[N, 1000]``: each
    input's class weights (:func:`semfuse_jax.cam.class_weights`)."""

    def log_probs(image: jax.Array) -> jax.Array:
        x = classifier.resize_for(network, image[None])
        h, w = x.shape[1:3]
        views = [x]
        for zoom in params.zooms:
            dy, dx = round(h * (1 - zoom) / 2), round(w * (1 - zoom) / 2)
            crop = x[:, dy : h - dy, dx : w - dx]
            views.append(jax.image.resize(crop, x.shape, "linear", antialias=True))
        x = jnp.concatenate(views)
        if params.mirror:
            x = jnp.concatenate([x, x[:, :, ::-1]])
        logits = network.features(x, ("logits",))["logits"]
        return jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=0)

    lp = jax.lax.map(log_probs, candidates, batch_size=params.chunk)  # [K, 1000]
    fifth = jax.lax.top_k(lp, TOP_K)[0][:, -1]
    kept = jax.nn.logsumexp(lp[:, None, :], axis=-1, b=evidence[None])  # log Σ_c w_ic P(c): [K, N]
    return jnp.min(kept, axis=-1) - fifth


def _choose_set(network: classifier.Network, images: jax.Array, maps: jax.Array,
                params: RegionParams) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """One set ``[N, H, W, C]`` and its maps ``[N, H, W]`` → the chosen fusion ``[H, W, C]`` and
    its allocation ``[N, H, W]`` (``1/N`` for the Laplacian pyramid's)."""
    n = images.shape[0]
    alloc = allocations(maps, params)  # [K, N, H, W]
    blend = jax.vmap(pyramid.blend, in_axes=(None, 0, None))
    candidates = jnp.clip(blend(images, alloc, params.levels), 0.0, 1.0)  # [K, H, W, C]
    if params.keep_laplacian:
        candidates = jnp.concatenate([baselines.laplacian_set(images)[None], candidates])
        alloc = jnp.concatenate([jnp.full((1, *maps.shape), 1.0 / n, alloc.dtype), alloc])
    evidence = cam.class_weights(classifier.logits(network, images), top_k=params.classes)
    margins = _margins(network, candidates, evidence, params)
    best = jnp.argmax(margins)
    if params.keep_laplacian:  # it keeps every input's class: no region is needed
        best = jnp.where(margins[0] >= 0, 0, best)
    return candidates[best], alloc[best]


@partial(jax.jit, static_argnames=("params",))
def choose(
    network: classifier.Network, images: jax.Array, maps: jax.Array, params: RegionParams
) -> tuple[jax.Array, jax.Array]:
    """FM6 on a batch: ``images [B, N, H, W, C]``, semantic maps ``[B, N, H, W]`` →
    ``(fused [B, H, W, C], weights [B, N, H, W])``; a same-scene set's weights are ``1/N``
    (its result is the Laplacian pyramid's choose-max, which has no per-pixel weights).

    The sets run one after another (``lax.map``), each deciding with ``lax.cond``, so a
    same-scene set costs its gate and its Laplacian pyramid only; each set's candidates are
    classified in chunks of ``params.chunk``."""
    n = images.shape[1]

    def one(args: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, m = args
        return jax.lax.cond(
            scene_alignment(x) >= params.same_scene,
            lambda: (baselines.laplacian_set(x), jnp.full(m.shape, 1.0 / n, m.dtype)),
            lambda: _choose_set(network, x, m, params),
        )

    return jax.lax.map(one, (images, maps))
