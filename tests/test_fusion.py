"""FM0–FM3 end to end: convexity of FM3, batch = single, real-weights multi-focus gains."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from semfuse_jax import files, fm4, fusion, methods, models, optimise
from semfuse_jax.errors import MissingLayersError, SemfuseError
from semfuse_jax.optimise import Schedule
from semfuse_jax.synthetic import multifocus_set

SHORT = Schedule(epochs=3, iters=10)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of images in [0, 1], in dB."""
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def sharp_images(data_dir) -> list[np.ndarray]:
    """Real 64x64 crops: two colour (Lytro), Lytro luminance (grey) and a grey visible band."""
    lytro = files.load_image(data_dir / "multifocus_colour_lytro/lytro-02/lytro-02-A.jpg")
    kayak = files.load_image(data_dir / "ir_visible/TNO_Kayak/Kayak_Vis.png")
    luminance = (lytro @ files.LUMA)[..., None]
    return [
        lytro[200:264, 220:284],
        lytro[300:364, 100:164],
        luminance[200:264, 220:284],
        kayak[200:264, 200:264],
    ]


@pytest.mark.parametrize("method", ["fm0", "fm1"])
def test_real_weights_multifocus_beats_average_and_loss_decreases(
    real_weights, sharp_images, method
):
    config = fusion.FusionConfig(method=method, schedule=Schedule(epochs=5, iters=40))
    gains = []
    for sharp in (sharp_images[0], sharp_images[2]):  # one colour, one grey
        images = multifocus_set(sharp)[None]
        result = fusion.fuse(real_weights, images, config)
        assert result.fused.shape == (1, *sharp.shape)
        assert np.all(np.diff(result.loss_history[:, 0]) < 0), result.loss_history[:, 0]
        assert result.fused.min() >= 0.0 and result.fused.max() <= 1.0
        gains.append(psnr(result.fused[0], sharp) - psnr(result.average[0], sharp))
    print(
        f"{method}: PSNR gain over the average (colour, grey): {gains[0]:.2f} dB, {gains[1]:.2f} dB"
    )
    assert min(gains) > 1.0


def test_batch_of_four_equals_each_alone(real_weights, sharp_images):
    sets = np.stack([multifocus_set(s[..., :1] if s.shape[-1] == 3 else s) for s in sharp_images])
    for method in ("fm0", "fm1"):
        config = fusion.FusionConfig(method=method, schedule=SHORT)
        batched = fusion.fuse(real_weights, sets, config)
        for b in range(4):
            alone = fusion.fuse(real_weights, sets[b : b + 1], config)
            np.testing.assert_allclose(batched.fused[b], alone.fused[0], atol=1e-5)
            np.testing.assert_allclose(
                batched.loss_history[:, b], alone.loss_history[:, 0], rtol=1e-5
            )


def test_grey_sets_stay_grey_and_colour_stays_colour(real_weights, sharp_images):
    short = fusion.FusionConfig(schedule=Schedule(epochs=1, iters=5))
    grey = fusion.fuse(real_weights, multifocus_set(sharp_images[2])[None], short)
    assert grey.fused.shape[-1] == 1
    mixed = fusion.stack_set([sharp_images[0], sharp_images[2]])[None]  # colour + grey
    fused = fusion.fuse(real_weights, mixed, short).fused[0]  # FM0 fuses R, G, B
    assert fused.shape[-1] == 3 and np.abs(fused[..., 0] - fused[..., 2]).max() > 0.05


def test_fm3_is_the_exact_convex_mix(full_weights, sharp_images):
    images = np.stack([sharp_images[0], sharp_images[1]])[None]
    result = fusion.fuse(full_weights, images, fusion.FusionConfig(method="fm3"))
    p = result.probabilities[0]
    m0 = 0.5 * (1 + p[0] - p[1])
    np.testing.assert_allclose(result.mixing[0, 0], m0, rtol=1e-6, atol=1e-7)
    expected = m0[..., None] * images[0, 0] + (1 - m0[..., None]) * images[0, 1]
    np.testing.assert_allclose(result.fused[0], expected, rtol=1e-6, atol=1e-6)
    low, high = images[0].min(axis=0), images[0].max(axis=0)
    assert np.all(result.fused[0] >= low - 1e-6) and np.all(result.fused[0] <= high + 1e-6)
    assert result.steps == 0 and 0.0 <= p.min() < 0.05 and 0.95 < p.max() <= 1.0


def test_library_and_tools_pick_the_same_classifier_for_auto(
    full_weights, full_weights_file, sharp_images, monkeypatch
):
    """With a full VGG19 in $SEMFUSE_WEIGHTS, ``fuse(None, ...)`` resolves ``auto`` to VGG19,
    as ``semfuse-fuse`` and table mode do (all through ``models.load_models``)."""
    monkeypatch.setenv("SEMFUSE_WEIGHTS", str(full_weights_file))
    images = np.stack([sharp_images[0], sharp_images[1]])[None]
    config = fusion.FusionConfig(method="fm3")
    loaded, resolved = models.load_models(config, None)
    assert resolved.classifier == "vgg19" and "fc8" in loaded.vgg.params
    library = fusion.fuse(None, images, config)
    vgg = fusion.fuse(full_weights, images, config)
    lite0 = fusion.fuse(None, images, dataclasses.replace(config, classifier="efficientnet_lite0"))
    np.testing.assert_array_equal(library.fused, vgg.fused)
    assert np.abs(library.probabilities - lite0.probabilities).max() > 0.1


def test_fm3_three_inputs_and_top_k(full_weights, sharp_images):
    images = fusion.stack_set(sharp_images[:3])[None]  # colour, colour, grey -> colour
    result = fusion.fuse(full_weights, images, fusion.FusionConfig(method="fm3", top_k=5))
    m = result.mixing[0]
    assert m.shape == (3, 64, 64) and m.min() >= 0.0
    np.testing.assert_allclose(m.sum(axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        result.fused[0], np.sum(m[..., None] * images[0], axis=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_fm2_runs_with_full_weights_and_targets_follow_the_cam(
    full_weights, sharp_images, weighted
):
    images = multifocus_set(sharp_images[0])[None]
    config = fusion.FusionConfig(method="fm2", schedule=SHORT, fm2_weighted_target=weighted)
    result = fusion.fuse(full_weights, images, config)
    assert result.fused.shape == (1, 64, 64, 3) and result.probabilities.shape == (1, 2, 64, 64)
    assert result.loss_history[-1, 0] < result.loss_history[0, 0]
    targets = fusion.fusion_targets(
        full_weights,
        jnp.asarray(images),
        methods.cam_target,
        ("conv1_1",),
        jnp.asarray(result.probabilities),
        weighted,
    )
    plain = fusion.fusion_targets(
        full_weights, jnp.asarray(images), methods.choose_max_target, ("conv1_1",)
    )
    assert not np.allclose(np.asarray(targets["conv1_1"]), np.asarray(plain["conv1_1"]))


def test_cam_methods_refuse_a_vgg19_classifier_from_partial_weights(real_weights, sharp_images):
    images = multifocus_set(sharp_images[0])[None]
    for method in ("fm2", "fm3", "fm5"):
        config = fusion.FusionConfig(method=method, classifier="vgg19")
        with pytest.raises(MissingLayersError, match=r"conv4_1.*fc8"):
            fusion.fuse(real_weights, images, config)


def test_bad_sets_and_settings_are_refused():
    with pytest.raises(SemfuseError, match="differ in size"):
        fusion.stack_set([np.zeros((4, 4, 1)), np.zeros((4, 5, 1))])
    with pytest.raises(SemfuseError, match="at least two"):
        fusion.stack_set([np.zeros((4, 4, 1))])
    with pytest.raises(SemfuseError, match="unknown method"):
        fusion.FusionConfig(method="fm9")
    with pytest.raises(SemfuseError, match="epochs"):
        Schedule(epochs=0)
    pair = np.zeros((1, 2, 4, 4, 1), np.float32)
    for bits in ([8, 8], [12]):
        with pytest.raises(SemfuseError, match="8 or 16 for each of the 1 sets"):
            fusion.fuse(None, pair, fusion.FusionConfig(method="average"), bits=bits)


def test_fast_solver_reaches_the_adam_loss(real_weights, data_dir):
    folder = data_dir / "multifocus_grey" / "clock"
    pair = fusion.stack_set([files.load_image(folder / f"clock{s}.jpg") for s in "AB"])
    images = pair[None, :, 200:280, 120:200]  # 80x80 of the real clock pair
    adam = fusion.fuse(
        real_weights, images, fusion.FusionConfig(schedule=Schedule(epochs=20, iters=100))
    )
    fast = fusion.fuse(real_weights, images, fusion.FusionConfig(solver="fast"))
    assert fast.loss_history[-1, 0] <= 1.01 * adam.loss_history[-1, 0]
    assert fusion.FusionConfig(solver="fast").schedule == optimise.FAST  # what a report records
    with pytest.raises(SemfuseError, match="own schedule"):
        fusion.FusionConfig(solver="fast", schedule=Schedule(epochs=3))


def test_bfloat16_network_tracks_float32(real_weights, sharp_images):
    images = multifocus_set(sharp_images[2])[None]
    runs = {
        dtype: fusion.fuse(
            real_weights, images, fusion.FusionConfig(schedule=SHORT, compute_dtype=dtype)
        )
        for dtype in ("float32", "bfloat16")
    }
    f32, bf16 = runs["float32"].loss_history[-1, 0], runs["bfloat16"].loss_history[-1, 0]
    assert bf16 != f32 and abs(bf16 - f32) / f32 < 0.02
    assert runs["bfloat16"].fused.dtype == np.float32


def test_noise_is_drawn_per_set_so_a_batch_equals_its_sets_alone(real_weights, sharp_images):
    sets = np.stack([multifocus_set(s[..., :1]) for s in sharp_images[:3]])
    config = fusion.FusionConfig(schedule=SHORT, init_noise=3.0, seed=7)
    batched = fusion.fuse(real_weights, sets, config)
    for b in (2, 0):
        alone = fusion.fuse(real_weights, sets[b : b + 1], config)
        np.testing.assert_array_equal(batched.fused[b], alone.fused[0])
    other_seed = fusion.fuse(
        real_weights,
        sets[:1],
        dataclasses.replace(config, schedule=SHORT, seed=8),
    )
    assert not np.array_equal(other_seed.fused[0], batched.fused[0])


def test_config_round_trips_through_json():
    config = fusion.FusionConfig(
        method="fm2", layers=("conv1_1",), schedule=Schedule(epochs=3, lr=0.5), top_k=2, seed=4
    )
    again = fusion.FusionConfig.from_dict(json.loads(config.to_json()))
    assert again == config
    with pytest.raises(SemfuseError, match="not a fusion configuration"):
        fusion.FusionConfig.from_dict({"method": "fm0", "color": "blue"})
    stored = config.to_dict()
    assert stored["version"] == fusion.CONFIG_VERSION
    unversioned = {k: v for k, v in stored.items() if k != "version"}
    assert fusion.FusionConfig.from_dict(unversioned) == config  # complete: what it says
    del unversioned["refine_edges"]  # a report from before the edge refinement existed
    with pytest.raises(SemfuseError, match="does not record refine_edges"):
        fusion.FusionConfig.from_dict(unversioned)
    ran = fusion.FusionConfig.from_dict({**unversioned, "refine_edges": False})
    assert ran == dataclasses.replace(config, refine_edges=False)
    partial = {"version": fusion.CONFIG_VERSION, "method": "fm1"}  # versioned: defaults stand
    assert fusion.FusionConfig.from_dict(partial) == fusion.FusionConfig(method="fm1")
    with pytest.raises(SemfuseError, match="version 99 is not"):
        fusion.FusionConfig.from_dict({**stored, "version": 99})
    fm4_run = fusion.FusionConfig(method="fm4")
    again = fusion.FusionConfig.from_dict(json.loads(fm4_run.to_json()))
    assert again == fm4_run and again.params == fm4.DEFAULT  # the defaults, written out in full
    assert fm4_run.to_dict()["method_params"]["edge_trade"] == fm4.DEFAULT.edge_trade
