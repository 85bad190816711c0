"""Image optimisation: Adam on the pixels of a batch of images to match target feature maps.

Per set, the loss is ``Σ_l ||G_l − N_l(I)||²`` (plain sum of squares over the layer set ``l``).
Pixels live in ``[0, 1]`` and are projected back into it after every step. One epoch is one
jitted ``lax.scan`` of ``iters`` Adam steps, ``vmap``-ped over the sets of the batch (each set has
its own Adam state, so a batch gives the same result as fusing its sets one by one; on a single
CPU device, where batching the convolutions does not pay, the sets are mapped one after another
inside the same jitted epoch); a host loop runs the epochs, sets the learning rate of each,
reports progress and can stop early, on the loss (``tol``) or on a quality function of the
images, keeping each set's best epoch (FM4).

Learning rate: ``lr`` is in grey levels (of 255) per step and decays geometrically once per
epoch, ``lr_e = lr · lr_decay^e``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from semfuse_jax import sharding
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
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    unroll: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.iters < 1:
            raise SemfuseError("epochs and iters must be at least 1")
        if not self.lr > 0 or not 0 < self.lr_decay <= 1 or self.tol < 0:
            raise SemfuseError("need lr > 0, 0 < lr_decay <= 1 and tol >= 0")


SOLVERS: tuple[str, ...] = ("adam", "fast")
FAST = Schedule(epochs=5, iters=100, lr=2.0, lr_decay=0.7, tol=1e-4)


def solver_schedule(solver: str, schedule: Schedule) -> Schedule:
    """The schedule a solver runs: ``adam`` keeps ``schedule`` (the paper's by default);
    ``fast`` is Adam with a short, steeply decayed schedule that stops on convergence
    (:data:`FAST`: 5 epochs × 100 steps, lr 2, decay 0.7, tol 1e-4), which reaches the paper
    schedule's final loss to within 1 % in about 5 % of its steps (``benchmarks/solver.py``)."""
    if solver == "adam":
        return schedule
    if solver == "fast":
        return FAST
    raise SemfuseError(f"unknown solver {solver!r}; choose from {', '.join(SOLVERS)}")


class OptimiseResult(NamedTuple):
    """Outcome of :func:`optimise`.

    Attributes:
      images: ``[B, H, W, C]`` optimised images in ``[0, 1]``.
      loss_history: ``[E + 1, B]`` loss of each set at the start and after each epoch run.
      steps: Adam steps taken per set.
      compile_seconds: time to compile the epoch function.
      optimise_seconds: time spent running epochs (after compilation).
      quality_history: ``[E + 1, B, K]`` the K quality scores of each set at the start and
        after each epoch run (None without a ``quality`` function).
      best_epoch: ``[B]`` epoch whose images each set returns (0: the initial images; None
        without a ``quality`` function, when the last epoch's images are returned).
    """

    images: np.ndarray
    loss_history: np.ndarray
    steps: int
    compile_seconds: float
    optimise_seconds: float
    quality_history: np.ndarray | None = None
    best_epoch: np.ndarray | None = None


Targets = Mapping[str, jax.Array]


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


def batch_loss(weights: Weights, images: jax.Array, targets: Targets) -> jax.Array:
    """:func:`feature_loss` of each set: ``[B, H, W, C]`` → ``[B]``."""
    return jax.vmap(feature_loss, in_axes=(None, 0, 0))(weights, images, targets)


def _epoch(
    weights: Weights,
    state: tuple[jax.Array, Any],
    targets: Targets,
    lr: jax.Array,
    iters: int,
    adam: optax.GradientTransformation,
    unroll: int = 1,
    dtype: Any = None,
    sets_per_chunk: int | None = None,
) -> tuple[tuple[jax.Array, Any], jax.Array]:
    """``iters`` projected Adam steps per set; returns the new state and ``[B, iters]`` losses.

    The sets are ``vmap``-ped, or with ``sets_per_chunk`` mapped in vmapped chunks of that size.
    """

    def one_set(image: jax.Array, adam_state: Any, target: Targets):
        def step(carry, _):
            x, s = carry
            loss, grad = jax.value_and_grad(feature_loss, argnums=1)(weights, x, target, dtype)
            direction, s = adam.update(grad, s)
            return (jnp.clip(x - lr * direction, 0.0, 1.0), s), loss

        (image, adam_state), losses = jax.lax.scan(
            step, (image, adam_state), None, length=iters, unroll=unroll
        )
        return image, adam_state, losses

    if sets_per_chunk is None:
        images, adam_states, losses = jax.vmap(one_set)(*state, targets)
    else:
        images, adam_states, losses = jax.lax.map(
            lambda args: one_set(*args), (*state, targets), batch_size=sets_per_chunk
        )
    return (images, adam_states), losses


def optimise(
    weights: Weights,
    init: jax.Array,
    targets: Targets,
    schedule: Schedule,
    progress: Callable[[int, int, np.ndarray, float], None] | None = None,
    dtype: Any = None,
    quality: Callable[[np.ndarray], np.ndarray] | None = None,
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
        speed on accelerators). Reported losses are always computed in float32.
      quality: optional host function scoring images ``[B, H, W, C] → [B, K]`` on K criteria
        (higher is better). It scores the initial images and each epoch's result; an epoch's
        images replace a set's kept ones when they are no worse on any criterion and better on
        their sum. Each set stops at its first epoch without such a gain and returns its kept
        images (so a set's result does not depend on the batch it runs in); the run stops when
        every set has stopped (early stopping on quality instead of on the loss).
    """
    adam = optax.scale_by_adam(b1=schedule.b1, b2=schedule.b2, eps=schedule.eps)
    mesh = sharding.batch_mesh()
    (init, targets), batch = sharding.pad_batch(
        (np.asarray(init, np.float32), {k: np.asarray(v, np.float32) for k, v in targets.items()}),
        mesh.size,
    )
    images, targets = sharding.shard_batch((init, targets), mesh)  # fresh buffers: donated below
    weights = sharding.replicate(weights, mesh)
    # One CPU gains nothing from batching the convolutions of several sets (measured in
    # benchmarks/fm0_speed.py): there the sets of a batch run one after another.
    sets_per_chunk = 1 if mesh.size == 1 and jax.default_backend() == "cpu" else None
    state = (images, jax.vmap(adam.init)(images))
    loss_fn = jax.jit(batch_loss)
    history = [np.asarray(loss_fn(weights, images, targets))[:batch]]
    best = scores = None
    if quality is not None:
        best = np.array(init[:batch], np.float32)
        scores = [np.asarray(quality(best), np.float64)]
        kept = scores[0]
        best_epoch = np.zeros(batch, np.int64)
        active = np.ones(batch, bool)

    start = time.perf_counter()
    epoch = (
        jax.jit(
            _epoch,
            static_argnames=("iters", "adam", "unroll", "dtype", "sets_per_chunk"),
            donate_argnames=("state",),
        )
        .lower(
            weights,
            state,
            targets,
            jnp.float32(0.0),
            iters=schedule.iters,
            adam=adam,
            unroll=schedule.unroll,
            dtype=dtype,
            sets_per_chunk=sets_per_chunk,
        )
        .compile()
    )
    compile_seconds = time.perf_counter() - start

    start = time.perf_counter()
    epochs_run = 0
    for e in range(schedule.epochs):
        lr = schedule.lr / 255.0 * schedule.lr_decay**e
        state, _ = epoch(weights, state, targets, jnp.float32(lr))
        history.append(np.asarray(loss_fn(weights, state[0], targets))[:batch])
        epochs_run = e + 1
        if progress is not None:
            progress(epochs_run, schedule.epochs, history[-1], time.perf_counter() - start)
        if quality is not None:
            current = np.asarray(jax.device_get(state[0]))[:batch]
            scores.append(np.asarray(quality(current), np.float64))
            new = scores[-1]
            better = active & np.all(new >= kept, axis=-1) & (new.sum(-1) > kept.sum(-1))
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
    return OptimiseResult(
        images=np.asarray(jax.device_get(state[0]))[:batch] if best is None else best,
        loss_history=np.stack(history),
        steps=epochs_run * schedule.iters,
        compile_seconds=compile_seconds,
        optimise_seconds=time.perf_counter() - start,
        quality_history=None if scores is None else np.stack(scores),
        best_epoch=None if scores is None else best_epoch,
    )
