"""The batch driver: a whole schedule of a batch of sets in one jitted call, on the device.

:func:`optimise` (the feature loss) and :func:`refine_edges` (FM4's gradient-domain
:class:`~semfuse_jax.optimise.objectives.EdgeObjective`) place a batch over the local devices
(see ``sharding``) and run :func:`_run`: a ``lax.while_loop`` over epochs, each a ``lax.scan`` of
``iters`` Adam steps ``vmap``-ped over the sets (or mapped one after another where batching does
not pay, :func:`sets_per_chunk`). The losses of every epoch, an optional quality stop (a pytree
scorer such as :class:`semfuse_jax.fm4.Quality`: each set keeps its best epoch and stops at its
first epoch without gain, masked, not copied) and the loss tolerance all live in the loop's
carried state, so a batch stays on the device until it is done and comes back in one explicit
``jax.device_get``. Progress reaches the host through ``jax.debug.callback``, outside the vmap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from semfuse_jax import sharding
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models.vgg19 import Weights
from semfuse_jax.optimise.objectives import (
    EdgeObjective,
    NetworkObjective,
    Objective,
    Targets,
    batch_edge_loss,
    batch_loss,
    choose_gradient,
    quadratic_objective,
)
from semfuse_jax.optimise.solver import UNIT_BOX, Bounds, Schedule, improves, optimizer, run_steps

BATCHING: tuple[str, ...] = ("auto", "vmap", "map")
Progress = Callable[[int, int, np.ndarray, float], None]


class Scorer(Protocol):
    """A quality stop's scorer: a pytree whose arrays have the batch as their leading axis (so
    it is padded and placed with the images), mapping candidates ``[B, H, W, C]`` to ``[B, K]``
    scores, higher is better (jittable)."""

    def __call__(self, images: jax.Array) -> jax.Array: ...


class OptimiseResult(NamedTuple):
    """Outcome of :func:`optimise`.

    Attributes:
      images: ``[B, H, W, C]`` optimised images in ``[0, 1]``.
      loss_history: ``[E + 1, B]`` loss of each set at the start and after each epoch run.
      steps: Adam steps taken per set.
      compile_seconds: XLA compilation time during the call (0 when everything was cached).
      optimise_seconds: the rest of the time spent running epochs.
      quality_history: ``[E + 1, B, K]`` the K quality scores of each set at the start and
        after each epoch run (None without a ``quality`` scorer).
      best_epoch: ``[B]`` epoch whose images each set returns (0: the initial images; None
        without a ``quality`` scorer, when the last epoch's images are returned).
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
    *,
    progress: Progress | None = None,
    dtype: Any = None,
    quality: Scorer | None = None,
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
      schedule: see :class:`~semfuse_jax.optimise.solver.Schedule`.
      progress: called on the host after each epoch as ``progress(epoch, epochs, losses [B],
        elapsed_seconds)`` (through ``jax.debug.callback``; the run does not wait for it).
      dtype: compute dtype of the network inside the steps (None: float32; ``jnp.bfloat16`` for
        speed on accelerators; it implies the network gradient). Reported losses are always
        computed in float32 through the network.
      quality: optional :class:`Scorer` of the batch's candidates ``[B, H, W, C] → [B, K]`` on K
        criteria (higher is better), scored on the device. It scores the initial images and each
        epoch's result; an epoch's images replace a set's kept ones when they are no worse on any
        criterion and better on their sum (:func:`~semfuse_jax.optimise.solver.improves`,
        strict). Each set stops at its first epoch without such a gain and returns its kept
        images (so a set's result does not depend on the batch it runs in); the run stops when
        every set has stopped (early stopping on quality instead of on the loss).
      gradient: ``auto``, ``quadratic`` or ``network`` (see ``choose_gradient``).
      batching: ``auto``, ``vmap`` or ``map`` (see :func:`sets_per_chunk`).
      bounds: per-pixel ``(low, high)``, each ``[B, H, W, C]`` within ``[0, 1]`` and holding
        ``init``, that every step is projected onto; None: ``[0, 1]``.
    """
    mesh = sharding.batch_mesh()
    targets = {k: np.asarray(v, np.float32) for k, v in targets.items()}
    (images, targets, boxes, quality), batch = _place((init, targets, bounds, quality), mesh)
    weights = sharding.replicate(weights, mesh)
    how = choose_gradient(gradient, tuple(targets), dtype)
    since = COMPILES.snapshot()
    if how == "quadratic":
        objective = quadratic_objective(weights, targets, images.shape)
        shared = {k: getattr(objective, k) for k in ("stencil", "edges", "corners")}
        objective = objective.replace(**sharding.replicate(shared, mesh))
    else:
        objective = NetworkObjective(weights, dict(targets), dtype)
    return _drive(
        objective, (weights, targets), _feature_losses, images, boxes=boxes, quality=quality,
        schedule=schedule, batch=batch, chunk=sets_per_chunk(batching, mesh.size),
        progress=progress, since=since, gradient=how,
    )  # fmt: skip


def refine_edges(
    init: np.ndarray,
    edges: np.ndarray,
    strength: np.ndarray,
    schedule: Schedule,
    *,
    fidelity: float,
    quality: Scorer | None = None,
    batching: str = "auto",
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
    trade: float = math.inf,
) -> OptimiseResult:
    """Run the Adam schedule on the :class:`EdgeObjective` of a batch anchored at its ``init``
    ``[B, H, W, C]`` (target fields ``edges`` ``[B, 2, H, W, C]``, weights ``strength``
    ``[B, H, W]``), with the driver, devices, quality stop and bounds of :func:`optimise`; an
    epoch improves on the kept images by ``improves`` with ``trade``. Its losses are the
    edge objective's."""
    mesh = sharding.batch_mesh()
    init = np.asarray(init, np.float32)
    arrays = (init, init, np.asarray(edges, np.float32), np.asarray(strength, np.float32))
    (images, anchor, edges, strength, boxes, quality), batch = _place(
        (*arrays, bounds, quality), mesh
    )  # images and anchor: two buffers
    since = COMPILES.snapshot()
    objective = EdgeObjective(anchor, edges, strength, fidelity)
    return _drive(
        objective, objective, _edge_losses, images, boxes=boxes, quality=quality,
        schedule=schedule, batch=batch, chunk=sets_per_chunk(batching, mesh.size),
        progress=None, since=since, gradient="edges", trade=trade,
    )  # fmt: skip


def _feature_losses(data: tuple[Weights, Targets], images: jax.Array) -> jax.Array:
    weights, targets = data
    return batch_loss(weights, images, targets)


def _edge_losses(objective: EdgeObjective, images: jax.Array) -> jax.Array:
    return batch_edge_loss(objective, images)


def _place(arrays: tuple, mesh: Mesh) -> tuple[tuple, int]:
    """Pad the batch axis of ``(init, …, bounds, quality)`` to the mesh and split it over the
    devices (None entries stay None; arrays and bounds become float32): ``(placed, batch)``."""
    *plain, bounds, quality = arrays
    boxes = None if bounds is None else tuple(np.asarray(b, np.float32) for b in bounds)
    tree = (*(np.asarray(a, np.float32) for a in plain[:1]), *plain[1:], boxes, quality)
    padded, batch = sharding.pad_batch(tree, mesh.size)
    return sharding.shard_batch(padded, mesh), batch


_PROGRESS: list[tuple[Progress, float, int]] = []  # the running call's (progress, start, batch)
_DEFERRED: list[type[BaseException]] = []  # interruptions that arrived during a compiled call


def interrupt(kind: type[BaseException]) -> None:
    """Raise ``kind`` (a signal handler's exception) now or, while a compiled call runs, as soon
    as it returns: the call's progress callbacks run Python on this thread, and an exception
    raised inside one is logged and dropped by jax (the run would go on, or fail with a
    traceback)."""
    if not _PROGRESS:
        raise kind()
    _DEFERRED.append(kind)


def _report(epoch: np.ndarray, epochs: int, losses: np.ndarray) -> None:
    """``jax.debug.callback`` target: forwards an epoch's losses to the running call's
    ``progress`` (the real sets only)."""
    progress, start, batch = _PROGRESS[-1]
    if int(epoch) > 0:  # the start's losses are not an epoch's
        progress(int(epoch), epochs, np.asarray(losses)[:batch], time.perf_counter() - start)


def _drive(
    objective: Objective,
    loss_data: Any,
    loss_fn: Callable[[Any, jax.Array], jax.Array],
    images: jax.Array,
    *,
    boxes: Bounds | None,
    quality: Scorer | None,
    schedule: Schedule,
    batch: int,
    chunk: int | None,
    progress: Progress | None,
    since: tuple[int, float],
    gradient: str,
    trade: float = math.inf,
) -> OptimiseResult:
    """Run :func:`_run` on placed arrays and fetch its result once; compilation since the
    :class:`CompileCounter` snapshot ``since`` is reported apart from the run's other time."""
    start = time.perf_counter()
    _PROGRESS.append((progress, start, batch))
    try:
        out = _run(
            objective, loss_data, images, boxes=boxes, quality=quality,
            loss_fn=loss_fn, schedule=schedule, chunk=chunk, batch=batch,
            report=progress is not None, trade=trade,
        )  # fmt: skip
        out = jax.device_get(out)  # the batch's only copy to the host
    finally:
        _PROGRESS.pop()
        if _DEFERRED and not _PROGRESS:
            kind = _DEFERRED[0]
            _DEFERRED.clear()
            raise kind()
    compile_seconds = COMPILES.snapshot()[1] - since[1]
    epochs_run = int(out["epoch"])
    scored = "kept" in out
    return OptimiseResult(
        images=(out["best"] if scored else out["images"])[:batch],
        loss_history=out["history"][: epochs_run + 1, :batch],
        steps=epochs_run * schedule.iters,
        compile_seconds=compile_seconds,
        optimise_seconds=time.perf_counter() - start - compile_seconds,
        quality_history=out["scores"][: epochs_run + 1, :batch] if scored else None,
        best_epoch=out["best_epoch"][:batch] if scored else None,
        gradient=gradient,
    )


@partial(
    jax.jit,
    static_argnames=("loss_fn", "schedule", "chunk", "batch", "report", "trade"),
    donate_argnames=("images",),
)
def _run(
    objective: Objective,
    loss_data: Any,
    images: jax.Array,
    *,
    boxes: Bounds | None,
    quality: Scorer | None,
    loss_fn: Callable[[Any, jax.Array], jax.Array],
    schedule: Schedule,
    chunk: int | None,
    batch: int,
    report: bool,
    trade: float,
) -> dict[str, jax.Array]:
    """Every epoch of a placed batch ``images`` ``[B, H, W, C]`` (the first ``batch`` sets real,
    the rest padding) in one ``lax.while_loop``. Iteration ``i`` scores the images after ``i``
    epochs (the loss ``loss_fn(loss_data, images)``, and the ``quality`` scorer's scores), makes
    the decisions, and runs epoch ``i + 1`` unless the run is done, so the loss and the scorer
    are traced once. The carried state: ``epoch`` (epochs run), the images and optimiser
    states, the losses ``history`` ``[E + 1, B]``, and with a scorer the kept images ``best``,
    their scores ``kept`` ``[B, K]``, ``best_epoch`` and ``active`` ``[B]`` (sets still
    improving) and all ``scores`` ``[E + 1, B, K]``. The run is done after ``schedule.epochs``,
    when no real set improved on its kept scores, or when no real set's loss fell by
    ``schedule.tol`` (when positive)."""
    real = jnp.arange(images.shape[0]) < batch
    epochs = schedule.epochs
    losses = jax.eval_shape(loss_fn, loss_data, images)
    state: dict[str, Any] = {
        "epoch": jnp.zeros((), jnp.int32),
        "images": images,
        "states": jax.vmap(optimizer(schedule).init)(images),
        "history": jnp.zeros((epochs + 1, *losses.shape), losses.dtype),
        "done": jnp.zeros((), bool),
    }
    if quality is not None:
        scores = jax.eval_shape(quality, images)
        state |= {
            "best": images,
            "kept": jnp.zeros(scores.shape, scores.dtype),
            "scores": jnp.zeros((epochs + 1, *scores.shape), scores.dtype),
            "best_epoch": jnp.zeros(images.shape[:1], jnp.int32),
            "active": real,
        }

    def iteration(state: dict[str, Any]) -> dict[str, Any]:
        e, images = state["epoch"], state["images"]
        losses = loss_fn(loss_data, images)
        if report:
            jax.debug.callback(_report, e, epochs, losses)
        new = dict(state, history=state["history"].at[e].set(losses))
        started = e > 0
        done = e >= epochs
        if quality is not None:
            scores = quality(images)
            gains = state["active"] & improves(scores, state["kept"], trade)
            better = jnp.where(started, gains, real)  # the start is kept to begin with
            new["best"] = jnp.where(better[:, None, None, None], images, state["best"])
            new["kept"] = jnp.where(better[:, None], scores, state["kept"])
            new["scores"] = state["scores"].at[e].set(scores)
            new["best_epoch"] = jnp.where(better, e, state["best_epoch"])
            new["active"] = better  # a set stops at its first epoch without gain
            done |= ~jnp.any(better)
        if schedule.tol > 0:
            before = state["history"][jnp.maximum(e - 1, 0)]
            gain = (before - losses) / jnp.maximum(before, 1e-30)
            done |= started & jnp.all((gain < schedule.tol) | ~real)

        def run_epoch(carry: tuple[jax.Array, Any]) -> tuple[jax.Array, Any]:
            return _epoch(objective, *carry, bounds=boxes, schedule=schedule, sets_per_chunk=chunk)

        new["images"], new["states"] = jax.lax.cond(
            done, lambda carry: carry, run_epoch, (images, state["states"])
        )
        new["epoch"] = jnp.where(done, e, e + 1)
        new["done"] = done
        return new

    state = jax.lax.while_loop(lambda s: ~s["done"], iteration, state)
    del state["states"], state["done"]
    if quality is not None:
        del state["images"], state["active"]
    return state


def _epoch(
    objective: Objective,
    images: jax.Array,
    states: Any,
    *,
    bounds: Bounds | None,
    schedule: Schedule,
    sets_per_chunk: int | None,
) -> tuple[jax.Array, Any]:
    """One epoch of every set of a batch: vmapped, or mapped in chunks of ``sets_per_chunk``.
    ``bounds``: per-set ``(low, high)`` arrays ``[B, H, W, C]``, or None for ``[0, 1]``."""
    axes = objective.batch_axes()
    box_axis = None if bounds is None else 0
    bounds = UNIT_BOX if bounds is None else bounds

    def one(obj: Objective, image: jax.Array, state: Any, box: Bounds) -> tuple[jax.Array, Any]:
        return run_steps(obj, image, state, schedule.iters, schedule=schedule, bounds=box)

    if sets_per_chunk is None:
        return jax.vmap(one, in_axes=(axes, 0, 0, box_axis))(objective, images, states, bounds)

    def set_number(i: jax.Array) -> tuple[jax.Array, Any]:
        def pick(axis: int | None, part: Any) -> Any:
            return part if axis is None else jax.tree.map(lambda leaf: leaf[i], part)

        own = jax.tree.map(pick, axes, objective, is_leaf=lambda x: x is None)
        box = bounds if box_axis is None else jax.tree.map(lambda leaf: leaf[i], bounds)
        return one(own, images[i], jax.tree.map(lambda leaf: leaf[i], states), box)

    return jax.lax.map(set_number, jnp.arange(images.shape[0]), batch_size=sets_per_chunk)
