"""Image optimisation: projected Adam on the pixels of a batch of images to match target features.

Per set, the loss is ``L(x) = Σ_l ||G_l − N_l(x)||²`` (plain sum of squares over the layer set
``l``). Pixels live in ``[0, 1]`` and are projected back into it after every step.

Two ways to get the gradient, one result (an *objective* is a pytree with ``gradient(x)``):

- :class:`NetworkObjective`: autodiff through the network (any loss layers).
- :class:`QuadraticObjective`: when the only loss layer is ``conv1_1`` (before its ReLU, the
  paper's layer), the network is affine in the pixels, ``N(x) = A·x + d``, so ``L`` is an exact
  quadratic and ``∇L = 2·AᵀA·x − b`` with ``b = 2·Aᵀ(G − d)``. ``AᵀA`` is a 5×5 stencil
  (C → C channels, C = 1 for a grey plane, 3 for colour) except on the outermost ring of pixels,
  where the zero padding of the convolution removes the outputs beyond the border: those terms
  are 1-D 5-tap stencils along each edge plus one term per corner, subtracted exactly. ``b``
  comes from one autodiff pass at ``x = 0`` (``−∇L(0)``). It follows the same Adam trajectory as
  the network path (to float rounding) at a fraction of the cost per step.

The optimiser is Optax: ``scale_by_adam`` then the learning rate, ``lr · lr_decay^epoch`` in grey
levels (of 255) per step as a staircase ``exponential_decay`` schedule, then the box projection
(:func:`optimizer`, :func:`project`). :func:`solve` runs a whole schedule for one set in one
``lax.scan`` and can be jitted or vmapped as it is. :func:`optimise` is the host driver for
batches: it runs one jitted, cached epoch (a ``lax.scan`` of ``iters`` steps, ``vmap``-ped over
the sets, or mapped one after another where batching does not pay) at a time, spreads the batch
over the local devices, reports progress and stops early on the loss (``tol``) or on a quality
function (FM4), keeping each set's best epoch. :func:`refine_edges` runs the same driver on the
gradient-domain :class:`EdgeObjective` (FM4's edge refinement).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from semfuse_jax import metrics, sharding
from semfuse_jax.errors import SemfuseError
from semfuse_jax.weights import Weights


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Adam schedule. Defaults: the paper's 100 epochs × 100 iterations.

    Attributes:
      epochs: number of epochs e (the learning rate changes once per epoch).
      iters: Adam steps per epoch k.
      lr: initial learning rate, in grey levels of 255 per step.
      lr_decay: learning-rate multiplier applied after each epoch.
      tol: stop early once an epoch lowers no set's loss by more than this fraction (0: never).
      b1, b2, eps: Adam's moment decays and denominator offset.
      unroll: steps unrolled per ``lax.scan`` iteration (a speed setting; results are the same).
    """

    epochs: int = 100
    iters: int = 100
    lr: float = 1.0
    lr_decay: float = 0.95
    tol: float = 0.0
    b1: float = dataclasses.field(default=0.9, metadata={"flag": False})
    b2: float = dataclasses.field(default=0.999, metadata={"flag": False})
    eps: float = dataclasses.field(default=1e-8, metadata={"flag": False})
    unroll: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 1_000_000 or not 1 <= self.iters <= 10_000_000:
            raise SemfuseError("need 1 <= epochs <= 1e6 and 1 <= iters <= 1e7")
        if not 0 < self.lr <= 255 or not 0 < self.lr_decay <= 1 or not 0 <= self.tol < 1:
            raise SemfuseError("need 0 < lr <= 255, 0 < lr_decay <= 1 and 0 <= tol < 1")
        if not 1 <= self.unroll <= self.iters:
            raise SemfuseError("need 1 <= unroll <= iters")


SOLVERS: tuple[str, ...] = ("adam", "fast")
# ``solver="fast"``: Adam with a short, steeply decayed schedule that stops on convergence; it
# reaches the paper schedule's final loss to within 1 % in about 5 % of its steps
# (``benchmarks/solver.py``).
FAST = Schedule(epochs=5, iters=100, lr=2.0, lr_decay=0.7, tol=1e-4)


class OptimiseResult(NamedTuple):
    """Outcome of :func:`optimise`.

    Attributes:
      images: ``[B, H, W, C]`` optimised images in ``[0, 1]``.
      loss_history: ``[E + 1, B]`` loss of each set at the start and after each epoch run.
      steps: Adam steps taken per set.
      compile_seconds: XLA compilation time during the call (0 when everything was cached).
      optimise_seconds: the rest of the time spent running epochs.
      quality_history: ``[E + 1, B, K]`` the K quality scores of each set at the start and
        after each epoch run (None without a ``quality`` function).
      best_epoch: ``[B]`` epoch whose images each set returns (0: the initial images; None
        without a ``quality`` function, when the last epoch's images are returned).
      gradient: the gradient path that ran (``quadratic``, ``network``, or ``edges`` for
        :func:`refine_edges`).
    """

    images: np.ndarray
    loss_history: np.ndarray
    steps: int
    compile_seconds: float
    optimise_seconds: float
    quality_history: np.ndarray | None = None
    best_epoch: np.ndarray | None = None
    gradient: str = "network"


Targets = Mapping[str, jax.Array]
GRADIENTS: tuple[str, ...] = ("auto", "quadratic", "network")
BATCHING: tuple[str, ...] = ("auto", "vmap", "map")
LINEAR_LAYERS: tuple[str, ...] = ("conv1_1",)


def feature_loss(
    weights: Weights, image: jax.Array, targets: Targets, dtype: Any = None
) -> jax.Array:
    """``Σ_l ||targets[l] − N_l(image)||²`` for one image ``[H, W, C]``; targets ``[h, w, c]``.

    ``dtype`` is the network's compute dtype (None: float32); the loss is summed in float32.
    """
    features = weights.features(image[None], tuple(targets), dtype=dtype)
    return sum(
        jnp.sum(jnp.square(targets[k] - features[k][0].astype(jnp.float32))) for k in targets
    )


@jax.jit
def batch_loss(weights: Weights, images: jax.Array, targets: Targets) -> jax.Array:
    """:func:`feature_loss` of each set: ``[B, H, W, C]`` → ``[B]``."""
    return jax.vmap(feature_loss, in_axes=(None, 0, 0))(weights, images, targets)


@flax.struct.dataclass
class NetworkObjective:
    """The loss through the network, differentiated by autodiff (any loss layers).

    Attributes:
      weights: VGG19 weights holding the loss layers (shared by the sets of a batch).
      targets: ``{layer: [h, w, c]}`` for one set, ``[B, h, w, c]`` for a batch.
      dtype: the network's compute dtype inside the steps (None: float32).
    """

    weights: Weights
    targets: dict[str, jax.Array]
    dtype: Any = flax.struct.field(pytree_node=False, default=None)

    def gradient(self, image: jax.Array) -> jax.Array:
        """``∇L`` at one image ``[H, W, C]``."""
        return jax.grad(feature_loss, argnums=1)(self.weights, image, self.targets, self.dtype)

    def batch_axes(self) -> NetworkObjective:
        """``vmap`` axes: targets per set, weights shared."""
        return NetworkObjective(weights=None, targets=0, dtype=self.dtype)


@flax.struct.dataclass
class QuadraticObjective:
    """The exact quadratic form of the ``conv1_1`` loss (see the module docstring).

    Attributes:
      stencil: ``[5, 5, C, C]`` the interior stencil of ``AᵀA`` (input channel, output channel).
      edges: ``[4, 5, C, C]`` the 1-D stencils removed along the top, bottom, left, right edge.
      corners: ``[4, C, C]`` the terms added back at the top-left, top-right, bottom-left and
        bottom-right pixel (counted by two edges).
      rhs: ``b = 2·Aᵀ(G − d)``: ``[H, W, C]`` for one set, ``[B, H, W, C]`` for a batch.
      offset: ``||G − d||²``, the loss at ``x = 0``: ``[]`` for one set, ``[B]`` for a batch.
    """

    stencil: jax.Array
    edges: jax.Array
    corners: jax.Array
    rhs: jax.Array
    offset: jax.Array

    def loss(self, image: jax.Array) -> jax.Array:
        """``L(x) = xᵀAᵀA x − xᵀb + ||G − d||²`` at one image ``[H, W, C]`` (float32; for
        checks: the driver reports losses through the network)."""
        hx = self.gradient(image) + self.rhs  # 2·AᵀA·x
        return 0.5 * jnp.vdot(image, hx) - jnp.vdot(image, self.rhs) + self.offset

    def gradient(self, image: jax.Array) -> jax.Array:
        """``∇L = 2·AᵀA·x − b`` at one image ``[H, W, C]``."""
        out = _stencil_2d(image, self.stencil)
        top, bottom, left, right = self.edges
        out = out.at[0].add(-_stencil_1d(image[0], top))
        out = out.at[-1].add(-_stencil_1d(image[-1], bottom))
        out = out.at[:, 0].add(-_stencil_1d(image[:, 0], left))
        out = out.at[:, -1].add(-_stencil_1d(image[:, -1], right))
        for (row, col), term in zip(
            ((0, 0), (0, -1), (-1, 0), (-1, -1)), self.corners, strict=True
        ):
            out = out.at[row, col].add(image[row, col] @ term)
        return 2.0 * out - self.rhs

    def batch_axes(self) -> QuadraticObjective:
        """``vmap`` axes: the right-hand side per set, the stencils shared."""
        return QuadraticObjective(stencil=None, edges=None, corners=None, rhs=0, offset=0)


@flax.struct.dataclass
class EdgeObjective:
    """Gradient-domain refinement: ``L(x) = Σ_p ω_p·||S(x)_p − E_p||² + fidelity·||x − x₀||²``,
    in grey levels² (of 255), with ``S`` the Sobel responses (s_x, s_y) of each channel
    (:func:`semfuse_jax.metrics.sobel`). Quadratic in ``x``; its gradient comes from autodiff
    through the Sobel shifts, a few additions per pixel.

    Attributes:
      anchor: ``x₀`` ``[H, W, C]`` for one set (``[B, H, W, C]`` for a batch), the image refined.
      edges: the target field ``E`` ``[2, H, W, C]`` (s_x, s_y).
      strength: the per-pixel weight ``ω`` ``[H, W]`` of the edge term.
      fidelity: the weight of staying at ``x₀`` (shared by the sets of a batch).
    """

    anchor: jax.Array
    edges: jax.Array
    strength: jax.Array
    fidelity: float = flax.struct.field(pytree_node=False, default=0.05)

    def loss(self, image: jax.Array) -> jax.Array:
        """``L`` at one image ``[H, W, C]``."""
        s_x, s_y = metrics.sobel(jnp.moveaxis(image, -1, 0))  # [C, H, W] each
        field = jnp.moveaxis(jnp.stack([s_x, s_y]), 1, -1)  # [2, H, W, C]
        edge = jnp.sum(self.strength[..., None] * jnp.square(field - self.edges))
        stay = self.fidelity * jnp.sum(jnp.square(image - self.anchor))
        return 255.0**2 * (edge + stay)

    def gradient(self, image: jax.Array) -> jax.Array:
        """``∇L`` at one image ``[H, W, C]``."""
        return jax.grad(self.loss)(image)

    def batch_axes(self) -> EdgeObjective:
        """``vmap`` axes: everything per set but the fidelity."""
        return EdgeObjective(anchor=0, edges=0, strength=0, fidelity=self.fidelity)


@jax.jit
def batch_edge_loss(objective: EdgeObjective, images: jax.Array) -> jax.Array:
    """:meth:`EdgeObjective.loss` of each set: ``[B, H, W, C]`` → ``[B]``."""
    return jax.vmap(type(objective).loss, in_axes=(objective.batch_axes(), 0))(objective, images)


def _stencil_2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``out[q, o] = Σ_{δ, c} kernel[δ + 2, c, o] · x[q + δ, c]`` with zero padding, as
    shift-and-add (far faster than a convolution call for one or three channels on a CPU)."""
    h, w, c = x.shape
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = jnp.pad(x, ((ry, ry), (rx, rx), (0, 0)))
    out = [jnp.zeros((h, w), x.dtype)] * c
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            shifted = padded[i : i + h, j : j + w]
            for o in range(c):
                for k in range(c):
                    out[o] = out[o] + shifted[..., k] * kernel[i, j, k, o]
    return jnp.stack(out, axis=-1)


def _stencil_1d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`_stencil_2d` along one axis: ``x`` ``[L, C]``, ``kernel`` ``[5, C, C]``."""
    return _stencil_2d(x[None], kernel[None])[0]


def input_kernel(weights: Weights, channels: int) -> np.ndarray:
    """``conv1_1``'s kernel acting on pixels in ``[0, 1]``: ``[3, 3, C, 64]`` (float64).

    The preprocessing's per-channel scale (``scale / std``) and channel order are folded in; for a
    grey plane (C = 1) the three replicated channels are summed. Its mean subtraction and the
    bias are the affine part ``d``, which the right-hand side ``b`` absorbs.
    """
    prep = weights.preprocessing
    kernel = np.asarray(weights.params["conv1_1"]["kernel"], np.float64)
    scale = prep.scale / np.asarray(prep.std, np.float64)
    rgb = [2, 1, 0] if prep.channel_order == "BGR" else [0, 1, 2]  # network channel → RGB
    folded = np.zeros_like(kernel)
    for j, c in enumerate(rgb):
        folded[:, :, c, :] = kernel[:, :, j, :] * scale[j]
    return folded.sum(axis=2, keepdims=True) if channels == 1 else folded


def gram_stencils(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``AᵀA`` of a 3×3 convolution ``kernel`` ``[3, 3, C, K]`` (zero padding 1) as stencils.

    Returns ``(stencil [5, 5, C, C], edges [4, 5, C, C], corners [4, C, C])`` as
    :class:`QuadraticObjective` uses them. With ``a = (i − 1, j − 1)`` the offset of kernel tap
    ``(i, j)``: ``stencil[δ + 2] = Σ_{a' − a = δ} k[a'] k[a]ᵀ`` (``[C, K] @ [K, C]``); the
    outputs one row above the image see only its top row, through kernel row ``i = 2``, so the
    top edge removes the 1-D autocorrelation of ``k[2, :]`` (bottom: ``k[0, :]``, left:
    ``k[:, 2]``, right: ``k[:, 0]``);
    each corner output beyond the image (e.g. above-left, through ``k[2, 2]``) is in two edges
    and is added back once.
    """
    k = np.asarray(kernel, np.float64)
    c = k.shape[2]
    stencil = np.zeros((5, 5, c, c))
    for i, j, i2, j2 in np.ndindex(3, 3, 3, 3):
        stencil[i2 - i + 2, j2 - j + 2] += k[i2, j2] @ k[i, j].T

    def autocorrelation(taps: np.ndarray) -> np.ndarray:  # [3, C, K] → [5, C, C]
        out = np.zeros((5, c, c))
        for a, b in np.ndindex(3, 3):
            out[b - a + 2] += taps[b] @ taps[a].T
        return out

    edges = np.stack([autocorrelation(t) for t in (k[2], k[0], k[:, 2], k[:, 0])])
    corners = np.stack(
        [k[2, 2] @ k[2, 2].T, k[2, 0] @ k[2, 0].T, k[0, 2] @ k[0, 2].T, k[0, 0] @ k[0, 0].T]
    )
    return stencil, edges, corners


@jax.jit
def _quadratic_rhs(
    weights: Weights, targets: Targets, zeros: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(b = −∇L(0) [B, H, W, C], L(0) [B])`` of each set, one set after another so that a
    set's values do not depend on the size of its batch (Adam amplifies the last bit)."""
    value_and_grad = jax.value_and_grad(feature_loss, argnums=1)
    loss, grad = jax.lax.map(lambda args: value_and_grad(weights, *args), (zeros, targets))
    return -grad, loss


def quadratic_objective(
    weights: Weights, targets: Targets, shape: tuple[int, ...]
) -> QuadraticObjective:
    """The quadratic objective of a batch: ``targets`` ``{'conv1_1': [B, H, W, 64]}``, images of
    ``shape`` ``[B, H, W, C]``."""
    if tuple(targets) != LINEAR_LAYERS:
        raise SemfuseError(f"the quadratic form needs the loss layers {LINEAR_LAYERS}")
    stencil, edges, corners = gram_stencils(input_kernel(weights, shape[-1]))
    rhs, offset = _quadratic_rhs(weights, dict(targets), jnp.zeros(shape, jnp.float32))
    as32 = partial(jnp.asarray, dtype=jnp.float32)
    return QuadraticObjective(as32(stencil), as32(edges), as32(corners), rhs, offset)


def choose_gradient(gradient: str, layers: tuple[str, ...], dtype: Any = None) -> str:
    """``quadratic`` or ``network`` for a ``gradient`` setting (``auto``: quadratic exactly when
    every loss layer is linear and the compute dtype is float32)."""
    if gradient not in GRADIENTS:
        raise SemfuseError(f"unknown gradient {gradient!r}; choose from {', '.join(GRADIENTS)}")
    linear = tuple(layers) == LINEAR_LAYERS
    if gradient == "quadratic" and not linear:
        raise SemfuseError(f"--gradient=quadratic needs --layers={','.join(LINEAR_LAYERS)}")
    if gradient == "auto":
        return "quadratic" if linear and dtype is None else "network"
    return gradient


def optimizer(schedule: Schedule) -> optax.GradientTransformation:
    """Adam with the schedule's per-epoch staircase learning rate (grey levels of 255 → [0, 1])."""
    rate = optax.exponential_decay(
        schedule.lr / 255.0, schedule.iters, schedule.lr_decay, staircase=True
    )
    return optax.chain(
        optax.scale_by_adam(b1=schedule.b1, b2=schedule.b2, eps=schedule.eps),
        optax.scale_by_learning_rate(rate),
    )


Bounds = tuple[jax.Array | float, jax.Array | float]
UNIT_BOX: Bounds = (0.0, 1.0)


def project(image: jax.Array, bounds: Bounds = UNIT_BOX) -> jax.Array:
    """The box projection onto ``bounds`` = (low, high): scalars (valid pixels, ``[0, 1]``) or
    per-pixel arrays shaped like ``image`` inside ``[0, 1]``."""
    return optax.projections.projection_box(image, *bounds)


def run_steps(
    objective: Any,
    image: jax.Array,
    state: Any,
    steps: int,
    schedule: Schedule,
    bounds: Bounds = UNIT_BOX,
) -> tuple[jax.Array, Any]:
    """``steps`` projected Adam steps of one set: ``image`` ``[H, W, C]`` and the optimiser
    ``state`` in, both updated out (a ``lax.scan``; jittable and vmappable). Every step is
    projected onto ``bounds`` (see :func:`project`)."""
    adam = optimizer(schedule)

    def step(carry: tuple[jax.Array, Any], _: None) -> tuple[tuple[jax.Array, Any], None]:
        x, s = carry
        updates, s = adam.update(objective.gradient(x), s, x)
        return (project(optax.apply_updates(x, updates), bounds), s), None

    (image, state), _ = jax.lax.scan(
        step, (image, state), None, length=steps, unroll=schedule.unroll
    )
    return image, state


def solve(
    objective: Any, init: jax.Array, schedule: Schedule, bounds: Bounds = UNIT_BOX
) -> jax.Array:
    """The whole schedule (``epochs × iters`` steps, no early stopping) for one set.

    A pure function: ``jax.jit(solve, static_argnames="schedule")`` and ``jax.vmap`` over sets
    (with ``in_axes=(objective.batch_axes(), 0, None)``) work as they are.

    Args:
      objective: a per-set :class:`NetworkObjective` or :class:`QuadraticObjective`.
      init: ``[H, W, C]`` initial image inside ``bounds``.
      bounds: the box every step is projected onto (:func:`project`).
    """
    state = optimizer(schedule).init(init)
    steps = schedule.epochs * schedule.iters
    return run_steps(objective, init, state, steps, schedule, bounds)[0]


@partial(
    jax.jit, static_argnames=("schedule", "sets_per_chunk"), donate_argnames=("images", "states")
)
def _epoch(
    objective: Any,
    images: jax.Array,
    states: Any,
    bounds: Bounds | None,
    schedule: Schedule,
    sets_per_chunk: int | None,
) -> tuple[jax.Array, Any]:
    """One epoch of every set of a batch: vmapped, or mapped in chunks of ``sets_per_chunk``.
    ``bounds``: per-set ``(low, high)`` arrays ``[B, H, W, C]``, or None for ``[0, 1]``."""
    axes = objective.batch_axes()
    box_axis = None if bounds is None else 0
    bounds = UNIT_BOX if bounds is None else bounds

    def one(obj: Any, image: jax.Array, state: Any, box: Bounds) -> tuple[jax.Array, Any]:
        return run_steps(obj, image, state, schedule.iters, schedule, box)

    if sets_per_chunk is None:
        return jax.vmap(one, in_axes=(axes, 0, 0, box_axis))(objective, images, states, bounds)

    def set_number(i: jax.Array) -> tuple[jax.Array, Any]:
        def pick(axis: int | None, part: Any) -> Any:
            return part if axis is None else jax.tree.map(lambda leaf: leaf[i], part)

        own = jax.tree.map(pick, axes, objective, is_leaf=lambda x: x is None)
        box = bounds if box_axis is None else jax.tree.map(lambda leaf: leaf[i], bounds)
        return one(own, images[i], jax.tree.map(lambda leaf: leaf[i], states), box)

    return jax.lax.map(set_number, jnp.arange(images.shape[0]), batch_size=sets_per_chunk)


class CompileCounter:
    """Counts XLA backend compilations and their seconds, process-wide (for reports and tests).

    ``snapshot()`` gives ``(count, seconds)``; differences of two snapshots bracket a call.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self) -> None:
        self.count, self.seconds = 0, 0.0
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event: str, duration: float, **_: Any) -> None:
        if event == self.EVENT:
            self.count += 1
            self.seconds += duration

    def snapshot(self) -> tuple[int, float]:
        return self.count, self.seconds


COMPILES = CompileCounter()


def sets_per_chunk(batching: str, devices: int) -> int | None:
    """None to ``vmap`` the sets of a batch, 1 to run them one after another (``map``).

    ``auto``: one after another on a single CPU device, where batching the convolutions of
    several sets does not pay (``benchmarks/fm0_speed.py``), ``vmap`` elsewhere.
    """
    if batching not in BATCHING:
        raise SemfuseError(f"unknown batching {batching!r}; choose from {', '.join(BATCHING)}")
    if batching == "auto":
        batching = "map" if devices == 1 and jax.default_backend() == "cpu" else "vmap"
    return 1 if batching == "map" else None


def optimise(
    weights: Weights,
    init: jax.Array,
    targets: Targets,
    schedule: Schedule,
    progress: Callable[[int, int, np.ndarray, float], None] | None = None,
    dtype: Any = None,
    quality: Callable[[np.ndarray], np.ndarray] | None = None,
    gradient: str = "auto",
    batching: str = "auto",
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> OptimiseResult:
    """Run the Adam schedule on a batch, split over the local devices (see ``sharding``).

    Args:
      weights: VGG19 weights holding every layer the targets name.
      init: ``[B, H, W, C]`` initial images in ``[0, 1]`` (C = 1: a grey plane, replicated to
        three channels inside the network).
      targets: ``{layer: [B, h, w, c]}`` target feature maps.
      schedule: see :class:`Schedule`.
      progress: called on the host after each epoch as ``progress(epoch, epochs, losses [B],
        elapsed_seconds)``.
      dtype: compute dtype of the network inside the steps (None: float32; ``jnp.bfloat16`` for
        speed on accelerators; it implies the network gradient). Reported losses are always
        computed in float32 through the network.
      quality: optional host function scoring images ``[B, H, W, C] → [B, K]`` on K criteria
        (higher is better). It scores the initial images and each epoch's result; an epoch's
        images replace a set's kept ones when they are no worse on any criterion and better on
        their sum (:func:`improves`, strict). Each set stops at its first epoch without such a
        gain and returns its kept images (so a set's result does not depend on the batch it
        runs in); the run stops when every set has stopped (early stopping on quality instead
        of on the loss).
      gradient: ``auto``, ``quadratic`` or ``network`` (see :func:`choose_gradient`).
      batching: ``auto``, ``vmap`` or ``map`` (see :func:`sets_per_chunk`).
      bounds: per-pixel ``(low, high)``, each ``[B, H, W, C]`` within ``[0, 1]`` and holding
        ``init``, that every step is projected onto; None: ``[0, 1]``.
    """
    mesh = sharding.batch_mesh()
    targets = {k: np.asarray(v, np.float32) for k, v in targets.items()}
    (images, targets, boxes), batch = _place((init, targets, bounds), mesh)
    weights = sharding.replicate(weights, mesh)
    how = choose_gradient(gradient, tuple(targets), dtype)
    since = COMPILES.snapshot()
    if how == "quadratic":
        objective = quadratic_objective(weights, targets, images.shape)
        shared = {k: getattr(objective, k) for k in ("stencil", "edges", "corners")}
        objective = objective.replace(**sharding.replicate(shared, mesh))
    else:
        objective = NetworkObjective(weights, dict(targets), dtype)
    losses = partial(batch_loss, weights, targets=targets)
    chunk = sets_per_chunk(batching, mesh.size)
    return _drive(
        objective, images, boxes, losses, batch, schedule, progress, quality, chunk, since, how
    )


def refine_edges(
    init: np.ndarray,
    edges: np.ndarray,
    strength: np.ndarray,
    schedule: Schedule,
    fidelity: float,
    quality: Callable[[np.ndarray], np.ndarray] | None = None,
    batching: str = "auto",
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    trade: float = math.inf,
) -> OptimiseResult:
    """Run the Adam schedule on the :class:`EdgeObjective` of a batch anchored at its ``init``
    ``[B, H, W, C]`` (target fields ``edges`` ``[B, 2, H, W, C]``, weights ``strength``
    ``[B, H, W]``), with the driver, devices, quality stop and bounds of :func:`optimise`; an
    epoch improves on the kept images by :func:`improves` with ``trade``. Its losses are the
    edge objective's."""
    mesh = sharding.batch_mesh()
    init = np.asarray(init, np.float32)
    arrays = (init, init, np.asarray(edges, np.float32), np.asarray(strength, np.float32), bounds)
    (images, anchor, edges, strength, boxes), batch = _place(arrays, mesh)  # two buffers
    since = COMPILES.snapshot()
    objective = EdgeObjective(anchor, edges, strength, fidelity)
    losses = partial(batch_edge_loss, objective)
    chunk = sets_per_chunk(batching, mesh.size)
    return _drive(
        objective, images, boxes, losses, batch, schedule, None, quality, chunk, since, "edges",
        trade,
    )  # fmt: skip


def improves(new: np.ndarray, kept: np.ndarray, trade: float = math.inf) -> np.ndarray:
    """Whether quality scores ``new`` ``[B, K]`` improve on ``kept`` ``[B, K]`` (higher is
    better), per set ``[B]``: their sum rises, and what the scores that fall lose together is at
    most ``1/trade`` of what the scores that rise gain (``trade`` inf, the default: no score may
    fall at all)."""
    delta = np.asarray(new, np.float64) - np.asarray(kept, np.float64)
    gain = np.sum(np.maximum(delta, 0.0), axis=-1)
    loss = np.sum(np.maximum(-delta, 0.0), axis=-1)
    return (gain > loss) & (loss <= gain / trade)


def _place(arrays: tuple, mesh: Any) -> tuple[tuple, int]:
    """Pad the batch axis of ``(init, …)`` to the mesh and split it over the devices (None
    entries stay None; bounds are float32 pairs): ``(placed arrays, original batch size)``."""
    init, *rest = arrays
    bounds = rest[-1]
    boxes = None if bounds is None else tuple(np.asarray(b, np.float32) for b in bounds)
    tree = (np.asarray(init, np.float32), *rest[:-1], boxes)
    padded, batch = sharding.pad_batch(tree, mesh.size)
    return sharding.shard_batch(padded, mesh), batch


def _drive(
    objective: Any,
    images: jax.Array,
    boxes: Bounds | None,
    losses: Callable[[jax.Array], jax.Array],
    batch: int,
    schedule: Schedule,
    progress: Callable[[int, int, np.ndarray, float], None] | None,
    quality: Callable[[np.ndarray], np.ndarray] | None,
    chunk: int | None,
    since: tuple[int, float],
    gradient: str,
    trade: float = math.inf,
) -> OptimiseResult:
    """The host loop of :func:`optimise` and :func:`refine_edges` on placed arrays: one jitted
    epoch at a time (``chunk``: :func:`sets_per_chunk`), losses (``losses``: images → ``[B]``)
    and the quality stop after each; ``batch`` of the sets are real (the rest pad the devices).
    Compilation since the :class:`CompileCounter` snapshot ``since`` is reported apart from the
    run's other time; ``gradient`` names the objective's gradient path; ``trade`` is
    :func:`improves`'."""
    states = jax.vmap(optimizer(schedule).init)(images)
    history = [np.asarray(losses(images))[:batch]]
    best = scores = None
    if quality is not None:
        best = np.array(images[:batch], np.float32)
        scores = [np.asarray(quality(best), np.float64)]
        kept = scores[0]
        best_epoch = np.zeros(batch, np.int64)
        active = np.ones(batch, bool)

    start = time.perf_counter()
    epochs_run = 0
    for e in range(schedule.epochs):
        images, states = _epoch(objective, images, states, boxes, schedule, chunk)
        history.append(np.asarray(losses(images))[:batch])
        epochs_run = e + 1
        if progress is not None:
            progress(epochs_run, schedule.epochs, history[-1], time.perf_counter() - start)
        if quality is not None:
            current = np.asarray(jax.device_get(images))[:batch]
            scores.append(np.asarray(quality(current), np.float64))
            new = scores[-1]
            better = active & improves(new, kept, trade)
            best[better] = current[better]
            kept = np.where(better[:, None], new, kept)
            best_epoch[better] = epochs_run
            active = better  # a set stops at its first epoch without gain, batched or alone
            if not np.any(active):
                break
        if schedule.tol > 0:
            gain = (history[-2] - history[-1]) / np.maximum(history[-2], 1e-30)
            if np.all(gain < schedule.tol):
                break
    jax.block_until_ready(images)
    compile_seconds = COMPILES.snapshot()[1] - since[1]
    return OptimiseResult(
        images=np.asarray(jax.device_get(images))[:batch] if best is None else best,
        loss_history=np.stack(history),
        steps=epochs_run * schedule.iters,
        compile_seconds=compile_seconds,
        optimise_seconds=time.perf_counter() - start - compile_seconds,
        quality_history=None if scores is None else np.stack(scores),
        best_epoch=None if scores is None else best_epoch,
        gradient=gradient,
    )
