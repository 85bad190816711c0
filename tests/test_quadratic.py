"""The exact quadratic form of the conv1_1 loss against autodiff through the network; the public
solver; compilation once per shape and configuration."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semfuse_jax import fusion, optimise
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import vgg19
from semfuse_jax.optimise import Schedule


def _conv1_1(real_weights: vgg19.Weights, prep: str) -> vgg19.Weights:
    layer = {"conv1_1": real_weights.params["conv1_1"]}
    chosen = {
        "keras": vgg19.CAFFE_PREPROCESSING,
        "torchvision": vgg19.TORCHVISION_PREPROCESSING,
    }
    return dataclasses.replace(real_weights, params=layer, preprocessing=chosen[prep])


def _problem(w: vgg19.Weights, shape: tuple[int, ...], seed: int):
    """A target from a random image's features plus noise, and a random point."""
    rng = np.random.default_rng(seed)
    source = jnp.asarray(rng.uniform(size=shape), jnp.float32)
    feats = w.features(source[None], ("conv1_1",))["conv1_1"][0]
    target = {"conv1_1": feats + 20.0 * jnp.asarray(rng.normal(size=feats.shape), jnp.float32)}
    point = jnp.asarray(rng.uniform(size=shape), jnp.float32)
    return target, point


def _regions(h: int, w: int) -> dict[str, tuple[slice, slice]]:
    return {
        "interior": (slice(3, h - 3), slice(3, w - 3)),
        "edges": (slice(0, 2), slice(3, w - 3)),
        "corners": (slice(0, 2), slice(0, 2)),
        "far corner": (slice(h - 2, h), slice(w - 2, w)),
    }


@pytest.mark.parametrize("prep", ["keras", "torchvision"])
@pytest.mark.parametrize("shape", [(23, 31, 1), (30, 17, 3), (9, 9, 1), (12, 40, 3)])
def test_quadratic_loss_and_gradient_equal_autodiff(real_weights, prep, shape):
    w = _conv1_1(real_weights, prep)
    target, point = _problem(w, shape, seed=sum(shape))
    batch = {k: v[None] for k, v in target.items()}
    objective = optimise.quadratic_objective(w, batch, (1, *shape))
    one = jax.tree.map(
        lambda axis, leaf: leaf if axis is None else leaf[0],
        objective.batch_axes(),
        objective,
        is_leaf=lambda x: x is None,
    )
    expected = jax.grad(optimise.feature_loss, argnums=1)(w, point, target)
    got = one.gradient(point)
    scale = float(jnp.max(jnp.abs(expected)))
    for region, (rows, cols) in _regions(*shape[:2]).items():
        err = float(jnp.max(jnp.abs(got[rows, cols] - expected[rows, cols]))) / scale
        assert err < 1e-5, (region, err)
    loss = optimise.feature_loss(w, point, target)
    assert abs(float(one.loss(point)) - float(loss)) / float(loss) < 1e-5


def test_both_paths_follow_one_trajectory_for_1000_steps(real_weights):
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        images = rng.uniform(size=(1, 2, 27, 34, channels)).astype(np.float32)
        results = {
            g: fusion.fuse(
                real_weights,
                images,
                fusion.FusionConfig(schedule=Schedule(epochs=10, iters=100), gradient=g),
            )
            for g in ("quadratic", "network")
        }
        quad, net = results["quadratic"], results["network"]
        np.testing.assert_allclose(quad.loss_history, net.loss_history, rtol=1e-5)
        mse = np.mean((quad.fused - net.fused) ** 2)
        assert 10 * np.log10(1.0 / max(mse, 1e-30)) >= 50.0
        assert net.loss_history[-1, 0] < 0.9 * net.loss_history[0, 0]  # it did optimise


def test_public_solve_jits_and_equals_the_driver(real_weights):
    w = _conv1_1(real_weights, "keras")
    target, _ = _problem(w, (20, 24, 1), seed=3)
    init = jnp.full((20, 24, 1), 0.5, jnp.float32)
    schedule = Schedule(epochs=3, iters=20)
    batch = {k: v[None] for k, v in target.items()}
    objective = optimise.quadratic_objective(w, batch, (1, 20, 24, 1))
    solved = jax.jit(
        jax.vmap(optimise.solve, in_axes=(objective.batch_axes(), 0, None)), static_argnums=2
    )(objective, init[None], schedule)
    driven = optimise.optimise(w, init[None], batch, schedule)
    assert driven.gradient == "quadratic"
    np.testing.assert_allclose(np.asarray(solved), driven.images, atol=1e-6)
    network = optimise.NetworkObjective(w, target)
    alone = jax.jit(optimise.solve, static_argnames="schedule")(network, init, schedule)
    np.testing.assert_allclose(np.asarray(alone), driven.images[0], atol=1e-4)


def test_an_interruption_in_a_progress_callback_is_raised_when_the_call_returns(real_weights):
    """A signal handler that fires inside a progress callback (Python on the calling thread,
    where jax logs and drops exceptions) is held back and raised once the compiled call ends."""
    from semfuse_jax.optimise import driver

    w = _conv1_1(real_weights, "keras")
    target, point = _problem(w, (12, 14, 1), seed=4)
    epochs = []

    def progress(epoch: int, *_: object) -> None:
        epochs.append(epoch)
        driver.interrupt(KeyboardInterrupt)  # what the tools' SIGINT handler calls

    batch = {k: v[None] for k, v in target.items()}
    with pytest.raises(KeyboardInterrupt):
        optimise.optimise(w, point[None], batch, Schedule(epochs=3, iters=2), progress=progress)
    assert epochs[:1] == [1]  # raised from the first epoch's callback, after the call
    with pytest.raises(KeyboardInterrupt):  # outside a compiled call: at once
        driver.interrupt(KeyboardInterrupt)
    again = optimise.optimise(w, point[None], batch, Schedule(epochs=3, iters=2))
    assert again.steps == 6  # nothing is left pending for the next call


def test_second_fuse_with_the_same_shapes_compiles_nothing(real_weights):
    images = np.random.default_rng(1).uniform(size=(2, 2, 19, 23, 1)).astype(np.float32)
    config = fusion.FusionConfig(schedule=Schedule(epochs=2, iters=5))
    fusion.fuse(real_weights, images, config)
    before = optimise.COMPILES.snapshot()
    again = fusion.fuse(real_weights, images[::-1].copy(), config)
    assert optimise.COMPILES.snapshot()[0] == before[0]
    assert again.compile_seconds == 0.0
    other = fusion.fuse(real_weights, images[:, :, :18], config)  # a new shape compiles
    assert optimise.COMPILES.snapshot()[0] > before[0] and other.compile_seconds > 0


def test_gradient_choice():
    assert optimise.choose_gradient("auto", ("conv1_1",)) == "quadratic"
    assert optimise.choose_gradient("auto", ("conv1_1", "conv1_2")) == "network"
    assert optimise.choose_gradient("auto", ("conv1_1",), jnp.bfloat16) == "network"
    assert optimise.choose_gradient("network", ("conv1_1",)) == "network"
    with pytest.raises(SemfuseError, match="quadratic needs"):
        optimise.choose_gradient("quadratic", ("conv2_1",))
    with pytest.raises(SemfuseError, match="gradient"):
        fusion.FusionConfig(gradient="newton")
