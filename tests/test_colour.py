"""Colour-true fusion, the YCbCr and Mertens baselines, and the metrics beyond luminance."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semfuse_jax import baselines, colour, files, fm4, fusion, metrics, tables
from semfuse_jax.optimise import Schedule


def test_ycbcr_round_trip_and_known_colours():
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(colour.to_rgb(colour.to_ycbcr(rgb))), rgb, atol=1e-5)
    red = np.asarray(colour.to_ycbcr(jnp.asarray([1.0, 0.0, 0.0])))
    np.testing.assert_allclose(red, [0.299, 0.5 - 0.168736, 1.0], atol=1e-6)
    grey = np.asarray(colour.to_ycbcr(jnp.asarray([0.4, 0.4, 0.4])))
    np.testing.assert_allclose(grey, [0.4, 0.5, 0.5], atol=1e-6)


def test_combine_keeps_the_luminance_and_scales_chroma_only_out_of_gamut():
    chroma = jnp.asarray([[0.45, 0.6], [0.45, 0.6]])  # a reddish colour
    y = jnp.asarray([[0.5], [0.97]])  # fits at mid grey, not near white
    rgb = np.asarray(colour.combine(y, chroma))
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    back = np.asarray(colour.to_ycbcr(jnp.asarray(rgb)))
    np.testing.assert_allclose(back[:, 0], [0.5, 0.97], atol=1e-6)  # luminance exactly kept
    np.testing.assert_allclose(back[0, 1:], [0.45, 0.6], atol=1e-6)  # in gamut: chroma kept
    scaled = back[1, 1:] - 0.5
    assert 0 < np.linalg.norm(scaled) < np.linalg.norm([-0.05, 0.1])  # near white: less chroma
    np.testing.assert_allclose(
        scaled / np.linalg.norm(scaled), np.array([-0.05, 0.1]) / 0.1118, atol=1e-3
    )


def test_luminance_range_is_where_the_chroma_fits_unscaled():
    rgb = np.random.default_rng(4).random((200, 3)).astype(np.float32)
    ycbcr = colour.to_ycbcr(jnp.asarray(rgb))
    low, high = (np.asarray(b)[:, 0] for b in colour.luminance_range(ycbcr[:, 1:]))
    y = np.asarray(ycbcr[:, 0])
    assert np.all(low <= y + 1e-6) and np.all(y <= high + 1e-6)  # each pixel's own Y fits
    for edge in (low, high):  # at either end the chroma is kept whole ...
        back = colour.to_ycbcr(colour.combine(jnp.asarray(edge[:, None]), ycbcr[:, 1:]))
        np.testing.assert_allclose(np.asarray(back[:, 1:]), np.asarray(ycbcr[:, 1:]), atol=1e-5)
    beyond = np.minimum(high + 0.02, 1.0)  # ... and just beyond it the chroma must shrink
    back = colour.to_ycbcr(colour.combine(jnp.asarray(beyond[:, None]), ycbcr[:, 1:]))
    lost = np.abs(np.asarray(back[:, 1:] - ycbcr[:, 1:])).sum(axis=-1)
    assert np.all(lost[high < 0.97] > 1e-4)


def test_keep_chroma_narrows_the_box_around_the_start():
    chroma = jnp.asarray([[0.45, 0.6]] * 3)  # fits for Y in about [0.16, 0.86]
    fits_low, fits_high = (float(b[0, 0]) for b in colour.luminance_range(chroma))
    low, high = jnp.zeros((3, 1)), jnp.ones((3, 1))
    start = jnp.asarray([[0.5], [0.95], [0.05]])  # inside the gamut, above it, below it
    new_low, new_high = (
        np.asarray(b)[:, 0] for b in colour.keep_chroma((low, high), chroma, start)
    )
    np.testing.assert_allclose(new_low, [fits_low, fits_low, 0.05], atol=1e-6)
    np.testing.assert_allclose(new_high, [fits_high, 0.95, fits_high], atol=1e-6)


def test_luminance_mode_is_chosen_per_set():
    rng = np.random.default_rng(1)
    grey = np.repeat(rng.random((8, 8, 1)), 3, axis=-1)
    hue = rng.random((8, 8, 3))
    batch = np.stack([np.stack([grey, hue]), np.stack([hue, hue]), np.stack([grey, grey])])
    np.testing.assert_array_equal(colour.use_luminance("auto", batch), [True, False, False])
    np.testing.assert_array_equal(colour.use_luminance("luminance", batch), [True, True, True])
    assert not colour.use_luminance("rgb", batch).any()
    assert not colour.use_luminance("luminance", batch[..., :1]).any()  # grey sets: no chroma


def test_chroma_error_by_hand():
    rng = np.random.default_rng(2)
    colour_input = rng.random((16, 16, 3))
    grey_input = np.repeat(rng.random((16, 16, 1)), 3, axis=-1)
    images = np.stack([grey_input, colour_input])
    chroma = metrics.ycbcr_255(colour_input)[..., 1:] - 128
    support = np.linalg.norm(chroma, axis=-1) > metrics.CHROMA_SUPPORT
    flat = np.repeat(colour_input @ [0.299, 0.587, 0.114], 3).reshape(16, 16, 3)  # chroma 0
    expected = np.abs(chroma).mean(axis=-1)[support].mean()
    assert metrics.chroma_error(images, flat) == pytest.approx(expected, rel=1e-9)
    assert metrics.chroma_error(images, colour_input) == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(metrics.chroma_error(np.stack([grey_input, grey_input]), grey_input))


@pytest.fixture(scope="module")
def mri_pet(data_dir) -> np.ndarray:
    """A 64x64 crop of a real MRI (grey) + PET (colour) pair: ``[2, 64, 64, 3]``."""
    folder = data_dir / "medical_colour/mri_pet_13"
    images = fusion.stack_set([files.load_image(folder / n) for n in ("mri.png", "pet.png")])
    return images[:, 96:160, 96:160]


def test_fm4_keeps_the_functional_colour_and_fuses_the_luminance(real_weights, mri_pet):
    short = Schedule(epochs=2, iters=20)
    config = fusion.FusionConfig(method="fm4", schedule=short)
    assert config.colour_mode == "auto"
    fused = fusion.fuse(real_weights, mri_pet[None], config).fused[0]
    rgb = fusion.fuse(real_weights, mri_pet[None], dataclasses.replace(config, colour="rgb")).fused[
        0
    ]
    kept, lost = metrics.chroma_error(mri_pet, fused), metrics.chroma_error(mri_pet, rgb)
    assert kept < lost / 3, (kept, lost)
    # the luminance is FM4 on the inputs' luminance, kept from leaving the chroma's gamut
    # further than its start: exactly, and with no more chroma lost than without that bound
    ycbcr = colour.to_ycbcr(jnp.asarray(mri_pet))
    y, chroma = np.asarray(ycbcr[..., :1])[None], colour.chroma_of_strongest(ycbcr[None, ..., 1:])
    planes = fusion.fuse_planes(real_weights, y, config, chroma=chroma).fused[0]
    np.testing.assert_allclose(metrics.luminance_255(fused), planes[..., 0] * 255, atol=0.02)
    free = fusion.fuse_planes(real_weights, y, config).fused
    unbound = np.asarray(colour.combine(jnp.asarray(free), chroma))[0]
    assert kept <= metrics.chroma_error(mri_pet, unbound) + 1e-9


def test_a_batch_mixing_colour_true_and_rgb_sets_equals_each_set_alone(mri_pet):
    colour_set = np.stack([mri_pet[1], mri_pet[1, :, ::-1]])  # two colour inputs: RGB
    batch = np.stack([mri_pet, colour_set, mri_pet[:, ::-1]])
    config = fusion.FusionConfig(method="laplacian", colour="auto")
    together = fusion.fuse(None, batch, config).fused
    for b in range(3):
        alone = fusion.fuse(None, batch[b : b + 1], config).fused[0]
        np.testing.assert_array_equal(together[b], alone)
    ycbcr = fusion.fuse(None, batch[:1], fusion.FusionConfig(method="ycbcr")).fused[0]
    np.testing.assert_array_equal(ycbcr, together[0])  # ycbcr = laplacian on luminance


def test_fm4_scores_its_candidates_as_the_files_will_hold_them(real_weights, mri_pet):
    colour_set = np.stack([mri_pet[1], mri_pet[1, :, ::-1]])  # fused in RGB, beside a
    batch = np.stack([mri_pet, colour_set])  # colour-true set
    config = fusion.FusionConfig(method="fm4", schedule=Schedule(epochs=2, iters=20))
    result = fusion.fuse(real_weights, batch, config, bits=[8, 8])
    for b in range(2):
        sources = metrics.luminance_255(batch[b : b + 1])
        as_float = metrics.luminance_255(result.fused[b : b + 1])
        as_file = metrics.luminance_255(files.quantise(result.fused[b : b + 1], 8))
        reported = result.edge_quality[int(result.edge_kept[b]), b]
        scores = [getattr(metrics, name) for name in fm4.DEFAULT.edge_quality_names]
        file = np.array([float(score(sources, as_file)[0]) for score in scores])
        unrounded = np.array([float(score(sources, as_float)[0]) for score in scores])
        np.testing.assert_allclose(reported, file, atol=2e-5)  # scored in float32 on the device
        assert np.abs(reported - unrounded).max() > 1e-5  # the rounding is seen


def test_mertens_weights_follow_the_definition_and_identical_inputs_come_back():
    rng = np.random.default_rng(3)
    images = rng.random((3, 12, 10, 3)).astype(np.float32)
    grey = images @ np.array([0.299, 0.587, 0.114], np.float32)
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
    contrast = np.abs(
        padded[:, :-2, 1:-1]
        + padded[:, 2:, 1:-1]
        + padded[:, 1:-1, :-2]
        + padded[:, 1:-1, 2:]
        - 4 * grey
    )
    saturation = images.std(axis=-1)
    exposed = np.prod(np.exp(-((images - 0.5) ** 2) / 0.08), axis=-1)
    w = contrast * saturation * exposed + 1e-12
    expected = w / w.sum(axis=0)
    np.testing.assert_allclose(
        np.asarray(baselines.exposure_weights(jnp.asarray(images))), expected, rtol=1e-4, atol=1e-7
    )
    same = np.stack([images[0]] * 3)[None]
    np.testing.assert_allclose(
        np.asarray(baselines.mertens(jnp.asarray(same)))[0], images[0], atol=1e-5
    )


def _mef_ssim_by_patches(sources: np.ndarray, fused: np.ndarray) -> float:
    """Single-scale MEF-SSIM written patch by patch from the paper's definitions."""
    taps = metrics._gaussian_taps()
    g = np.outer(taps, taps)  # the 11×11 window
    c2 = (0.03 * 255) ** 2
    scores = []
    for i in range(fused.shape[0] - 10):
        for j in range(fused.shape[1] - 10):
            xs = sources[:, i : i + 11, j : j + 11]
            y = fused[i : i + 11, j : j + 11]
            centred = [x - np.sum(g * x) for x in xs]
            c = [np.sqrt(np.sum(g * x * x)) for x in centred]
            s = [x / ck if ck > 0 else 0 * x for x, ck in zip(centred, c, strict=True)]
            w = [ck**4 for ck in c]
            s_bar = sum(wk * sk for wk, sk in zip(w, s, strict=True)) / sum(w)
            s_hat = s_bar / np.sqrt(np.sum(g * s_bar * s_bar))
            x_hat = max(c) * s_hat
            yc = y - np.sum(g * y)
            cov, var_y = np.sum(g * x_hat * yc), np.sum(g * yc * yc)
            scores.append((2 * cov + c2) / (max(c) ** 2 + var_y + c2))
    return float(np.mean(scores))


def test_mef_ssim_matches_a_patchwise_implementation_and_prefers_the_well_exposed():
    rng = np.random.default_rng(4)
    scene = rng.random((20, 22)) * 255
    sources = np.stack(
        [np.clip(scene * 0.4, 0, 255), np.clip(scene * 1.6 - 60, 0, 255), scene * 0.9]
    )
    fused = np.clip(0.5 * sources[0] + 0.5 * sources[1] + rng.normal(0, 5, scene.shape), 0, 255)
    with jax.enable_x64(True):
        ours = float(metrics._mef_ssim_scale(jnp.asarray(sources), jnp.asarray(fused)))
    assert ours == pytest.approx(_mef_ssim_by_patches(sources, fused), rel=1e-9)
    assert metrics.mef_ssim(np.stack([scene, scene]), scene) == pytest.approx(1.0)


def test_overshoot_counts_pixels_beyond_the_local_input_range():
    sources = np.full((2, 20, 20), 100.0)
    sources[1, :, 10:] = 140.0
    average = sources.mean(axis=0)
    assert metrics.overshoot(sources, average) == 0.0
    ringing = average.copy()
    ringing[5, 3] += 6  # beyond the tolerance of 5 grey levels
    ringing[6, 3] += 4  # within it
    ringing[5, 10] += 24  # 144 next to the step, whose 3x3 max is 140: within the range + 5
    assert metrics.overshoot(sources, ringing) == pytest.approx(1 / 400)


def test_tables_bold_the_lowest_for_lower_is_better_columns_and_skip_missing():
    base = {name: 0.5 for name in tables.COLUMNS}
    rows = [
        base | {"method": "a", "overshoot": 0.1, "qe": 0.9, "chroma_error": None},
        base | {"method": "b", "overshoot": 0.3, "qe": 0.7, "chroma_error": None},
    ]
    cells = dict(
        zip(
            ["method", *tables.COLUMNS],
            zip(*tables.bold_best(rows, ["method"]), strict=True),
            strict=True,
        )
    )
    assert cells["overshoot"] == ("**0.1000**", "0.3000")
    assert cells["qe"] == ("**0.9000**", "0.7000")
    assert cells["chroma_error"] == ("–", "–")
