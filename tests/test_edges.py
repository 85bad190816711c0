"""FM4's edge refinement: the gradient-domain target, its objective, the driver, the whole step."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from scorers import closeness

from semfuse_jax import files, fm4, fusion, rules
from semfuse_jax.optimise import EdgeObjective, Schedule, batch_loss, improves, refine_edges

SHORT = Schedule(epochs=2, iters=10, lr=1.0, lr_decay=0.7)


def numpy_sobel(x: np.ndarray) -> np.ndarray:
    """(s_x, s_y) of ``[H, W]``, zero padding, kernels / 8, written out tap by tap."""
    p = np.pad(x, 1)
    h, w = x.shape
    s_x, s_y = np.zeros((h, w)), np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            win = p[i : i + 3, j : j + 3]  # rows i-1..i+1, columns j-1..j+1
            s_x[i, j] = (win[:, 0] @ [1, 2, 1] - win[:, 2] @ [1, 2, 1]) / 8
            s_y[i, j] = (win[0] @ [1, 2, 1] - win[2] @ [1, 2, 1]) / 8
    return np.stack([s_x, s_y])


def test_strongest_gradient_takes_each_pixels_busier_input_and_says_how_clearly():
    left = np.zeros((12, 16))
    left[:, 4:] = 1.0  # a vertical step at column 4 (input 0)
    right = np.zeros((12, 16))
    right[6:, :] = 0.5  # a horizontal step at row 6 (input 1), weaker
    right[6:, :8] = 0.0  # … on the right half only
    images = jnp.asarray(np.stack([left, right])[..., None], jnp.float32)
    field, dominance = (np.asarray(a) for a in rules.strongest_gradient(images, radius=0))
    s_left, s_right = numpy_sobel(left), numpy_sobel(right)
    assert field.shape == (2, 12, 16, 1) and dominance.shape == (12, 16)
    energy = [np.sum(s**2, axis=0) for s in (s_left, s_right)]
    winner = np.where(energy[1] > energy[0], 1, 0)
    expected = np.where(winner == 1, s_right, s_left)
    np.testing.assert_allclose(field[..., 0], expected, atol=1e-6)
    assert np.all(dominance[:, 3:5] == 1)  # only input 0 has a gradient at its step
    assert np.all(dominance[5:7, 9:15] == 1)  # only input 1 at its step
    assert np.all(dominance[1:4, 9:15] == 0)  # no gradient at all: no weight
    share = np.max(energy, 0) / np.maximum(np.sum(energy, 0), 1e-30)
    both = (energy[0] > 0) & (energy[1] > 0)
    assert both.any()
    np.testing.assert_allclose(dominance[both], 2 * share[both] - 1, atol=1e-5)
    # identical inputs tie everywhere: the field is theirs, with no weight
    same = jnp.stack([images[0], images[0]])
    field, dominance = rules.strongest_gradient(same, radius=1)
    np.testing.assert_allclose(np.asarray(field)[..., 0], s_left, atol=1e-6)
    assert np.all(np.asarray(dominance) == 0)


def test_edge_objective_matches_its_hand_built_quadratic():
    rng = np.random.default_rng(0)
    h, w = 5, 6
    x, anchor, target = (rng.random((h, w)) for _ in range(3))
    strength = rng.random((h, w))
    fidelity = 0.3
    edges = numpy_sobel(target)
    # S as a matrix: column k is the field of the k-th unit image
    basis = np.eye(h * w).reshape(h * w, h, w)
    sobel = np.stack([numpy_sobel(b).reshape(-1) for b in basis], axis=1)  # [2HW, HW]
    weight = np.tile(strength.reshape(-1), 2)
    residual = sobel @ x.reshape(-1) - edges.reshape(-1)
    loss = 255**2 * (weight @ residual**2 + fidelity * np.sum((x - anchor) ** 2))
    grad = 2 * 255**2 * (sobel.T @ (weight * residual) + fidelity * (x - anchor).reshape(-1))
    objective = EdgeObjective(
        jnp.asarray(anchor[..., None], jnp.float32),
        jnp.asarray(edges[..., None], jnp.float32),
        jnp.asarray(strength, jnp.float32),
        fidelity,
    )
    point = jnp.asarray(x[..., None], jnp.float32)
    np.testing.assert_allclose(float(objective.loss(point)), loss, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(objective.gradient(point))[..., 0], grad.reshape(h, w), rtol=1e-4, atol=1e-2
    )


def test_refine_edges_recovers_a_target_field_inside_the_bounds_and_keeps_by_quality():
    yy, xx = np.mgrid[:32, :32]
    sharp = (np.hypot(yy - 16, xx - 16) < 9).astype(np.float32) * 0.6 + 0.2  # a disc
    blurred = np.asarray(rules.box_mean(jnp.asarray(sharp), 2))  # its edges spread out
    field = np.asarray(rules.strongest_gradient(jnp.asarray(sharp[None, ..., None]))[0])
    init = np.stack([blurred, blurred])[..., None]
    edges = np.stack([field, field])
    strength = np.ones((2, 32, 32), np.float32)
    bounds = (np.full_like(init, 0.2), np.full_like(init, 0.8))
    schedule = Schedule(epochs=2, iters=100, lr=0.5, lr_decay=1.0)
    result = refine_edges(init, edges, strength, schedule, fidelity=0.01, bounds=bounds)
    assert result.images.shape == init.shape and result.steps == 200
    assert np.all(np.diff(result.loss_history, axis=0) < 0)  # every epoch lowers the loss
    assert np.all(result.images >= 0.2) and np.all(result.images <= 0.8)
    error = [np.abs(x[..., 0] - sharp).mean() for x in (init[0], result.images[0])]
    assert error[1] < 0.5 * error[0], error  # the disc's edges come back
    np.testing.assert_allclose(result.images[0], result.images[1], atol=1e-6)  # per set
    # a quality that prefers the start keeps it
    kept = refine_edges(
        init, edges, strength, schedule, fidelity=0.01, quality=closeness(init), bounds=bounds
    )
    np.testing.assert_array_equal(kept.images, init)
    np.testing.assert_array_equal(kept.best_epoch, [0, 0])
    assert kept.quality_history.shape == (2, 2, 1)  # the start and one epoch, then it stopped

    # a score that falls a little while another rises a lot: refused strictly, kept by a trade
    sharp_sets = np.broadcast_to(sharp[None, ..., None], init.shape)
    sharper_but_further = closeness(sharp_sets, init, weights=(1.0, 0.01))
    one = Schedule(epochs=1, iters=100, lr=0.5, lr_decay=1.0)
    refined = refine_edges(init, edges, strength, one, fidelity=0.01, bounds=bounds).images
    scores = np.asarray(sharper_but_further(refined) - sharper_but_further(init))  # [2, 2]
    ratio = scores[0, 0] / -scores[0, 1]
    assert 1 < ratio < 1e3, scores  # a gain and a smaller loss
    for trade, taken in ((np.inf, [0, 0]), (ratio / 2, [1, 1]), (ratio * 2, [0, 0])):
        traded = refine_edges(
            init, edges, strength, one, fidelity=0.01, quality=sharper_but_further,
            bounds=bounds, trade=trade,
        )  # fmt: skip
        np.testing.assert_array_equal(traded.best_epoch, taken)


def test_improves_weighs_what_falls_against_what_rises():
    kept = np.array([[0.5, 0.5, 0.5]] * 6)
    new = kept + np.array(
        [
            [0.01, 0.0, 0.0],  # one rises, none falls
            [0.0, 0.0, 0.0],  # nothing changes
            [0.04, 0.0, -0.001],  # a large gain for a small loss (40×)
            [0.01, 0.0, -0.001],  # 10×
            [0.001, 0.0, -0.001],  # the sum stays
            [-0.01, 0.0, 0.0],  # one falls
        ]
    )
    np.testing.assert_array_equal(improves(new, kept), [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(improves(new, kept, 20.0), [1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(improves(new, kept, 5.0), [1, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(improves(new, kept, 1.0), [1, 0, 1, 1, 0, 0])


@pytest.fixture(scope="module")
def kayak(data_dir) -> np.ndarray:
    """A real infrared/visible crop ``[1, 2, 64, 64, 1]`` around the hot kayak."""
    folder = data_dir / "ir_visible/TNO_Kayak"
    images = [
        files.load_image(folder / n)[223:287, 220:284] for n in ("Kayak_IR.png", "Kayak_Vis.png")
    ]
    return fusion.stack_set(images)[None]


def test_fm4_keeps_its_edge_refinement_only_when_it_gains_far_more_than_it_loses(
    real_weights, kayak
):
    plain = fusion.fuse(
        real_weights, kayak, fusion.FusionConfig(method="fm4", schedule=SHORT, refine_edges=False)
    )
    result = fusion.fuse(real_weights, kayak, fusion.FusionConfig(method="fm4", schedule=SHORT))
    np.testing.assert_array_equal(result.best_epoch, plain.best_epoch)  # the same optimisation
    judge = fm4.quality(kayak, fm4.DEFAULT.edge_quality_names)
    before, after = result.edge_quality[:, 0]
    np.testing.assert_allclose(before, judge(plain.fused)[0], rtol=1e-6)
    np.testing.assert_allclose(
        judge(result.fused)[0], after if result.edge_kept[0] else before, rtol=1e-6
    )
    assert result.edge_kept[0]  # on this crop the hot target's edges come back
    assert improves(after[None], before[None], fm4.DEFAULT.edge_trade)[0]
    assert after[1] > before[1] + 0.01  # Petrovic Q^{AB/F} rises
    assert result.steps == plain.steps + fm4.DEFAULT.edge_iters
    low, high = (np.asarray(b) for b in fm4.local_range(jnp.asarray(kayak[0])))
    assert np.all(result.fused[0] >= low) and np.all(result.fused[0] <= high)
    # the reported loss is the feature loss of the image returned, not of the epoch refined
    spec = fusion.methods.get("fm4")
    images = jnp.asarray(kayak)
    choice = fusion.per_set(spec.start, images)[1]
    targets = fusion.fusion_targets(real_weights, images, spec.target, ("conv1_1",), choice)
    written = np.asarray(batch_loss(real_weights, jnp.asarray(result.fused), targets))
    np.testing.assert_allclose(result.final_loss, written, rtol=1e-5)
    assert abs(result.final_loss[0] - plain.final_loss[0]) > 1e-3 * plain.final_loss[0]
