"""The solver: projected Adam (Optax) on the pixels of one set, in one ``lax.scan``.

The optimiser is ``scale_by_adam`` then the learning rate, ``lr · lr_decay^epoch`` in grey levels
(of 255) per step as a staircase ``exponential_decay`` schedule, then the box projection
(:func:`optimizer`, :func:`project`). :func:`solve` runs a whole schedule for one set and can be
jitted or vmapped as it is; :func:`improves` is the rule by which a quality stop keeps an epoch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import optax

from semfuse_jax.errors import SemfuseError
from semfuse_jax.optimise.objectives import Objective


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
    objective: Objective,
    image: jax.Array,
    state: Any,
    steps: int,
    *,
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
    objective: Objective, init: jax.Array, schedule: Schedule, bounds: Bounds = UNIT_BOX
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
    return run_steps(objective, init, state, steps, schedule=schedule, bounds=bounds)[0]


def improves(new: Any, kept: Any, trade: float = math.inf) -> Any:
    """Whether quality scores ``new`` ``[B, K]`` improve on ``kept`` ``[B, K]`` (higher is
    better), per set ``[B]``: their sum rises, and what the scores that fall lose together is at
    most ``1/trade`` of what the scores that rise gain (``trade`` inf, the default: no score may
    fall at all). NumPy arrays (in their dtype) or JAX arrays (jittable) alike."""
    delta = new - kept
    gain = delta.clip(min=0.0).sum(axis=-1)
    loss = (-delta).clip(min=0.0).sum(axis=-1)
    return (gain > loss) & (loss <= gain / trade)
