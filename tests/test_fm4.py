"""FM4: activity rules on hand-built cases, the pyramid start, quality stopping, batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.array import ArrayImpl  # to count copies of device arrays to the host
from scorers import closeness

from semfuse_jax import files, fm4, fusion, metrics, rules
from semfuse_jax.optimise import Schedule, optimise
from semfuse_jax.synthetic import multifocus_set

SHORT = Schedule(epochs=4, iters=10, lr=1.0, lr_decay=0.7)


def test_box_mean_cuts_windows_at_the_border():
    x = np.arange(20.0).reshape(4, 5)
    got = np.asarray(rules.box_mean(jnp.asarray(x), 1))
    assert got[0, 0] == np.mean([0, 1, 5, 6])  # corner: 2x2 in-image window
    assert got[1, 1] == np.mean(x[0:3, 0:3])  # interior: full 3x3 window
    assert got[3, 4] == np.mean([13, 14, 18, 19])
    np.testing.assert_array_equal(np.asarray(rules.box_mean(jnp.asarray(x), 0)), x)


def test_activity_weights_pick_the_active_input_and_ramp_at_the_seam():
    activity = np.zeros((2, 1, 12), np.float32)
    activity[0, :, :6] = 1.0  # input 0 busier on the left, input 1 on the right
    activity[1, :, 6:] = 1.0
    hard = np.asarray(rules.activity_weights(jnp.asarray(activity), radius=0, smooth=0))
    np.testing.assert_array_equal(hard[0, 0], [1] * 6 + [0] * 6)
    soft = np.asarray(rules.activity_weights(jnp.asarray(activity), radius=0, smooth=2))
    np.testing.assert_allclose(soft.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_array_equal(soft[0, 0, :4], 1.0)  # far from the seam: a clean choice
    np.testing.assert_array_equal(soft[1, 0, 8:], 1.0)
    np.testing.assert_allclose(soft[0, 0, 4:8], [0.8, 0.6, 0.4, 0.2], atol=1e-6)  # the ramp


def test_activity_weights_average_before_choosing_and_ties_go_to_the_first():
    activity = np.zeros((2, 3, 3), np.float32)
    activity[0, 1, 1] = 5.0  # one hot spot for input 0 ...
    activity[1] = 1.0  # ... against uniform activity of input 1
    w = np.asarray(rules.activity_weights(jnp.asarray(activity), radius=1, smooth=0))
    # 3x3 means: input 0 has 5/4 at the corners, 5/6 at the edges, 5/9 in the middle; input 1: 1
    expected = np.array([[1, 0, 1], [0, 0, 0], [1, 0, 1]])
    np.testing.assert_array_equal(w[0], expected)
    tie = np.asarray(rules.activity_weights(jnp.ones((3, 2, 2)), radius=0, smooth=0))
    np.testing.assert_array_equal(tie[0], 1.0)


def test_blend_is_the_weighted_sum():
    f = np.random.default_rng(0).normal(size=(3, 4, 5, 2)).astype(np.float32)
    w = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(rules.blend(jnp.asarray(f), jnp.asarray(w))),
        np.einsum("nhw,nhwc->hwc", w, f),
        rtol=1e-5,
    )


def test_activity_pyramid_reproduces_identical_inputs_and_picks_the_sharp_half():
    rng = np.random.default_rng(2)
    image = rng.random((1, 48, 40, 3)).astype(np.float32)
    same = np.concatenate([image, image, image], axis=0)
    fused, weights = fm4.activity_pyramid(jnp.asarray(same))
    np.testing.assert_allclose(np.asarray(fused), image[0], atol=1e-5)
    assert weights.shape == (3, 48, 40)
    np.testing.assert_allclose(np.asarray(weights).sum(axis=0), 1.0, atol=1e-5)
    # textured left half only in input 0, right half only in input 1; the other halves are flat
    texture = rng.random((48, 40, 1)).astype(np.float32)
    a = np.full_like(texture, 0.5)
    b = np.full_like(texture, 0.5)
    a[:, :20], b[:, 20:] = texture[:, :20], texture[:, 20:]
    fused, w = (np.asarray(x) for x in fm4.activity_pyramid(jnp.asarray(np.stack([a, b]))))
    assert np.all(w[0, :, :14] > 0.99) and np.all(w[1, :, 26:] > 0.99)
    error = np.abs(fused - texture)
    assert error[:, :14].max() < 0.15 and error[:, 26:].max() < 0.15
    assert error.mean() < np.abs(0.5 * (a + b) - texture).mean() / 3


def test_base_weights_follow_windowed_energy_to_the_power():
    energy = jnp.asarray(np.array([[[1.0, 0.0]], [[3.0, 0.0]]], np.float32))  # [2, 1, 2]
    soft = np.asarray(fm4._base_weights(energy, 0, 2.0))
    np.testing.assert_allclose(soft[:, 0, 0], [0.1, 0.9], rtol=1e-6)  # 1² : 3²
    np.testing.assert_allclose(soft[:, 0, 1], [0.5, 0.5])  # no energy anywhere: an even mix
    hard = np.asarray(fm4._base_weights(energy, 0, None))
    np.testing.assert_array_equal(hard[:, 0, 0], [0.0, 1.0])
    np.testing.assert_allclose(np.asarray(fm4._base_weights(energy, None, 2.0)), 0.5)


def test_gate_leaves_balanced_energy_alone_and_takes_a_dominant_input_whole():
    rng = np.random.default_rng(5)
    per_band = [jnp.asarray(rng.dirichlet([1, 1], (s, s)).transpose(2, 0, 1), jnp.float32)
                for s in (32, 16, 8, 4, 2)]  # fmt: skip
    balanced = [jnp.ones((2, s, s)) for s in (32, 16, 8, 4)]
    kept = fm4._gate(per_band, balanced, 2, 1, fm4.DEFAULT.gate_threshold)
    for got, want in zip(kept, per_band, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    dominant = [jnp.stack([jnp.zeros((s, s)), jnp.ones((s, s))]) for s in (32, 16, 8, 4)]
    taken = fm4._gate(per_band, dominant, 2, 1, fm4.DEFAULT.gate_threshold)
    for got in taken:  # input 1 holds all of band 2's energy: every level comes from it
        np.testing.assert_allclose(np.asarray(got)[1], 1.0, atol=1e-5)


def test_a_structure_dominant_in_one_input_arrives_whole():
    # input 0: fine texture everywhere; input 1: flat, with a bright disc (a hot target, a PET
    # uptake region); per band, input 0's texture wins inside the disc and cuts into its rim
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:96, :96]
    radius = np.hypot(yy - 48, xx - 48)
    disc = np.clip((24 - radius) / 3 + 0.5, 0, 1) * 0.6 + 0.2
    texture = 0.5 + 0.05 * rng.standard_normal((96, 96))
    images = jnp.asarray(np.stack([texture, disc])[..., None], jnp.float32)
    gated = np.asarray(fm4.activity_pyramid(images)[0])[..., 0]
    per_band = np.asarray(fm4.activity_pyramid(images, gate_threshold=None)[0])[..., 0]
    for where in (np.abs(radius - 24) < 4, radius < 20):  # the rim, the inside
        gated_error, per_band_error = (np.abs(f - disc)[where].mean() for f in (gated, per_band))
        assert gated_error < 0.1 * per_band_error
        assert gated_error < 1.0 / 255


@pytest.fixture(scope="module")
def crops(data_dir) -> list[np.ndarray]:
    """Real 64x64 crops: a colour Lytro crop, a grey IR/visible crop and a grey CT/MR pair."""
    lytro = files.load_image(data_dir / "multifocus_colour_lytro/lytro-05/lytro-05-A.jpg")
    kayak = files.load_image(data_dir / "ir_visible/TNO_Kayak/Kayak_Vis.png")
    ct = files.load_image(data_dir / "medical/c01/c01_1.tif")
    mr = files.load_image(data_dir / "medical/c01/c01_2.tif")
    return [
        lytro[150:214, 200:264],
        kayak[220:284, 200:264],
        ct[96:160, 96:160],
        mr[96:160, 96:160],
    ]


def quality(images: np.ndarray, fused: np.ndarray) -> np.ndarray:
    """The reported metrics Q_E and Petrovic Q^{AB/F}: ``[B, 2]``."""
    sources, f = metrics.luminance_255(images), metrics.luminance_255(fused)
    return np.stack([metrics.qe(sources, f), metrics.qabf_petrovic(sources, f)], axis=-1)


def test_fm4_keeps_an_iterate_no_worse_than_its_start_on_either_metric(real_weights, crops):
    medical = np.stack([crops[2], crops[3]])[None]
    multifocus = multifocus_set(crops[1])[None]
    config = fusion.FusionConfig(method="fm4", schedule=SHORT, refine_edges=False)
    for images in (medical, multifocus):
        result = fusion.fuse(real_weights, images, config)
        history = result.quality_history[:, 0]  # [E + 1, 2]
        best = int(result.best_epoch[0])
        # scored on the device in float32, so to 1e-5 of the float64 metrics
        np.testing.assert_allclose(quality(images, result.fused)[0], history[best], rtol=1e-5)
        pyramid = fm4.activity_pyramid(jnp.asarray(images[0]))[0]
        start = np.asarray(jnp.clip(pyramid, *fm4.local_range(jnp.asarray(images[0]))))[None]
        np.testing.assert_allclose(quality(images, start)[0], history[0], rtol=1e-5)
        low, high = (np.asarray(b) for b in fm4.local_range(jnp.asarray(images[0])))
        assert np.all(result.fused[0] >= low) and np.all(result.fused[0] <= high)  # no new extremes
        assert np.all(history[best] >= history[0])
    # on the CT/MR crop the target is far from the start: the loss falls every epoch and the
    # refinement is kept because it beats the pyramid start
    result = fusion.fuse(real_weights, medical, config)
    assert np.all(np.diff(result.loss_history[:, 0]) < 0), result.loss_history[:, 0]
    history = result.quality_history[:, 0]
    assert result.best_epoch[0] > 0
    assert history[result.best_epoch[0]].sum() > history[0].sum() + 0.01


def test_fm4_beats_fm0_and_both_baselines_on_the_head_ct_mr_pair(real_weights, data_dir):
    folder = data_dir / "medical/head_bristol"
    names = ("medA.jpg", "medB.jpg")
    images = fusion.stack_set([files.load_image(folder / n) for n in names])[None]
    schedule = Schedule(epochs=2, iters=100, lr=2.0, lr_decay=0.7)
    scores = {}
    for method in ("fm0", "fm4", "laplacian", "max"):
        config = fusion.FusionConfig(method=method, schedule=schedule)
        scores[method] = quality(images, fusion.fuse(real_weights, images, config).fused)[0]
    print({k: v.round(4).tolist() for k, v in scores.items()})
    for other in ("fm0", "laplacian", "max"):
        assert np.all(scores["fm4"] > scores[other]), other


def test_fm4_batch_equals_each_set_alone_and_is_deterministic(real_weights, crops):
    grey = [multifocus_set(c if c.shape[-1] == 1 else c[..., :1]) for c in crops[:3]]
    sets = np.stack(grey)
    noisy = fusion.FusionConfig(method="fm4", schedule=SHORT, init_noise=1.0, seed=3)
    once = fusion.fuse(real_weights, sets, noisy)
    np.testing.assert_array_equal(once.fused, fusion.fuse(real_weights, sets, noisy).fused)
    reseeded = fusion.FusionConfig("fm4", schedule=SHORT, init_noise=1.0, seed=4)
    other = fusion.fuse(real_weights, sets, reseeded)
    assert not np.array_equal(other.fused, once.fused)
    config = fusion.FusionConfig(method="fm4", schedule=SHORT)
    batched = fusion.fuse(real_weights, sets, config)
    for b in range(len(sets)):
        alone = fusion.fuse(real_weights, sets[b : b + 1], config)
        np.testing.assert_allclose(batched.fused[b], alone.fused[0], atol=1e-5)
        assert batched.best_epoch[b] == alone.best_epoch[0]


def test_quality_stopping_keeps_the_best_images_and_stops_when_nothing_improves(real_weights):
    rng = np.random.default_rng(5)
    target_image = jnp.asarray(rng.random((2, 16, 16, 1)), jnp.float32)
    targets = real_weights.features(target_image, ("conv1_1",))
    init = np.full((2, 16, 16, 1), 0.5, np.float32)
    prefer_start = closeness(np.full_like(init, 0.5))  # the start is best; no set improves
    result = optimise(
        real_weights, init, targets, Schedule(epochs=5, iters=5), quality=prefer_start
    )
    assert result.quality_history.shape == (2, 2, 1)  # the start and one epoch, then it stopped
    assert result.steps == 5
    np.testing.assert_array_equal(result.images, init)
    np.testing.assert_array_equal(result.best_epoch, [0, 0])
    plain = optimise(real_weights, init, targets, Schedule(epochs=5, iters=5))
    assert plain.steps == 25 and plain.best_epoch is None
    assert jax.numpy.abs(plain.images - init).max() > 0.01


@pytest.mark.parametrize("scorer", ["closeness", "fm4"])
def test_a_batch_stays_on_the_device_until_it_is_done(real_weights, crops, monkeypatch, scorer):
    """No device→host copy between epochs: every copy of a device array's value to the host
    (implicit or by ``jax.device_get``, both read ``ArrayImpl._value``) is counted, and the count
    does not depend on the number of epochs run. Implicit copies are also refused (the transfer
    guard, which a CPU's zero-copy arrays do not trip but an accelerator's do)."""
    images = np.stack([np.stack([crops[2], crops[3]]), multifocus_set(crops[1])])[:, :, :32, :32]
    init = images.mean(axis=1)
    goal = images.max(axis=1)  # each epoch comes closer to it
    targets = {k: np.asarray(v) for k, v in real_weights.features(goal, ("conv1_1",)).items()}
    if scorer == "closeness":
        quality = closeness(goal)  # improves every epoch: the whole schedule runs
    else:
        quality = fm4.quality(images, fm4.DEFAULT.quality_names, bits=[8, 8])
    copies = []
    value = ArrayImpl._value
    monkeypatch.setattr(
        ArrayImpl, "_value", property(lambda a: copies.append(a.shape) or value.fget(a))
    )
    counts = []
    for epochs in (1, 4):
        copies.clear()
        schedule = Schedule(epochs=epochs, iters=5)
        with jax.transfer_guard_device_to_host("disallow"):
            result = optimise(real_weights, init, targets, schedule, quality=quality)
        counts.append(len(copies))
        if scorer == "closeness":
            assert result.steps == 5 * epochs and result.quality_history.shape == (epochs + 1, 2, 1)
            np.testing.assert_array_equal(result.best_epoch, [epochs, epochs])
    assert counts[0] == counts[1] <= 6  # the result's arrays, fetched once
