"""Fusion rules on hand-built tensors whose answers are known, under jit and vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semfuse_jax import cam, rules


def _both(fn, *args):
    """Result of ``fn`` under jit, and under vmap over a batch of two copies (checked equal)."""
    jitted = np.asarray(jax.jit(fn)(*args))
    batched = jax.vmap(fn, in_axes=tuple(1 for _ in args))(*(jnp.stack([a, a], 1) for a in args))
    np.testing.assert_array_equal(np.asarray(batched)[0], jitted)
    np.testing.assert_array_equal(np.asarray(batched)[1], jitted)
    return jitted


def test_choose_max_keeps_largest_magnitude_with_sign_and_ties_to_first():
    f0 = jnp.array([1.0, -5.0, 2.0, -3.0, 0.0])
    f1 = jnp.array([-2.0, 4.0, 2.0, 3.0, -0.0])
    fused = _both(rules.choose_max, jnp.stack([f0, f1]))
    np.testing.assert_array_equal(fused, [-2.0, -5.0, 2.0, -3.0, 0.0])
    index = _both(rules.choose_max_index, jnp.stack([f0, f1]))
    np.testing.assert_array_equal(index, [1, 0, 0, 0, 0])  # ties (|2|=|2|, |-3|=|3|) -> input 0


def test_choose_max_three_inputs():
    f = jnp.array([[1.0, 0.0, -7.0], [-3.0, 0.5, 6.0], [2.0, -0.75, 1.0]])
    np.testing.assert_array_equal(_both(rules.choose_max, f), [-3.0, -0.75, -7.0])


def test_majority_filter_flips_an_isolated_choice_and_keeps_regions():
    # Input 0 wins everywhere except one isolated pixel and a 3-wide column band on the right.
    f0 = np.full((7, 7, 2), 2.0, np.float32)
    f1 = np.ones((7, 7, 2), np.float32)
    f1[3, 2, 0] = 5.0  # isolated win for input 1, channel 0 only
    f1[:, 4:, :] = -9.0  # a solid region where input 1 wins
    f = jnp.asarray(np.stack([f0, f1]))
    plain = _both(rules.choose_max, f)
    voted = _both(rules.majority_filter, f)
    assert plain[3, 2, 0] == 5.0
    assert voted[3, 2, 0] == 2.0  # the isolated choice is voted away
    np.testing.assert_array_equal(voted[:, 4:, :], -9.0)  # the region survives
    np.testing.assert_array_equal(voted[:, :3, 1], 2.0)  # channel 1 untouched by channel 0's pixel
    # The boundary column 3 (input 0) sees 3 votes for 1 and 6 for 0 inside: stays 0.
    np.testing.assert_array_equal(voted[1:-1, 3, :], 2.0)


def test_majority_vote_equals_median_of_boolean_mask_in_interior():
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.normal(size=(2, 9, 11, 3)).astype(np.float32))
    index = np.asarray(rules.majority_index(rules.choose_max_index(f), 2))
    mask = np.abs(np.asarray(f[0])) >= np.abs(np.asarray(f[1]))  # True -> input 0
    windows = np.lib.stride_tricks.sliding_window_view(mask, (3, 3), axis=(0, 1))
    median = windows.sum(axis=(-1, -2)) >= 5  # [7, 9, 3]
    np.testing.assert_array_equal(index[1:-1, 1:-1] == 0, median)


def test_majority_filter_three_inputs_and_corner_votes():
    # N = 3, 4x4: input 2 holds the top-left 2x2 block, input 1 one pixel, input 0 the rest.
    choice = np.zeros((4, 4, 1), np.int32)
    choice[:2, :2] = 2
    choice[3, 3] = 1
    voted = np.asarray(jax.jit(rules.majority_index, static_argnums=1)(jnp.asarray(choice), 3))
    assert voted[0, 0, 0] == 2  # corner window (2x2 in-image): all four vote 2
    assert voted[3, 3, 0] == 0  # corner: 1 vote for input 1 vs 3 for input 0
    assert voted[1, 1, 0] == 0  # 4 votes for 2 vs 5 for 0


def test_cam_weighted_selection_uses_weighted_magnitudes():
    f = jnp.array([4.0, 3.0]).reshape(2, 1, 1, 1)  # [N, H, W, C]
    p = jnp.array([0.5, 1.0]).reshape(2, 1, 1)
    assert float(rules.cam_weighted_choose_max(f, p)[0, 0, 0]) == 3.0  # 0.5*4 < 1*3 -> input 1
    assert float(rules.cam_weighted_choose_max(f, p, weighted_target=True)[0, 0, 0]) == 3.0
    p = jnp.array([1.0, 0.5]).reshape(2, 1, 1)
    assert float(rules.cam_weighted_choose_max(f, p)[0, 0, 0]) == 4.0
    p = jnp.array([0.9, 0.1]).reshape(2, 1, 1)
    assert float(rules.cam_weighted_choose_max(f, p, weighted_target=True)[0, 0, 0]) == (
        pytest.approx(3.6)
    )


@pytest.mark.parametrize("n", [2, 3, 5])
def test_mixing_weights_are_convex_and_match_the_paper_for_two(n):
    p = jnp.asarray(np.random.default_rng(n).uniform(size=(n, 6, 7)).astype(np.float32))
    p = p.at[:, 0, 0].set(jnp.eye(n)[0])  # extreme case: one map 1, the others 0
    m = np.asarray(jax.jit(cam.mixing_weights)(p))
    assert m.min() >= 0.0
    np.testing.assert_allclose(m.sum(axis=0), 1.0, rtol=1e-6)
    if n == 2:
        np.testing.assert_allclose(m[0], 0.5 * (1 + p[0] - p[1]), rtol=1e-6)
    equal = np.asarray(cam.mixing_weights(jnp.full((n, 2, 2), 0.3)))
    np.testing.assert_allclose(equal, 1.0 / n, rtol=1e-6)  # equal evidence -> equal mix
