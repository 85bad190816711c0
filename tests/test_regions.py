"""FM6 (:mod:`semfuse_jax.regions`): its candidate allocations, the same-scene gate and the
classifier's choice, each against a computation written out here."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semfuse_jax import baselines, classifier, fusion, pyramid, regions
from semfuse_jax.models import efficientnet
from semfuse_jax.synthetic import gaussian_blur, multifocus_set

SMALL = regions.RegionParams(biases=(0.3,), directions=2, offsets=(0.0,), ramp=0.4, zooms=(0.75,))


def _smooth(seed: int, shape: tuple[int, ...] = (48, 48, 3)) -> np.ndarray:
    """A random smooth image in ``[0, 1]`` (structure at several scales)."""
    rng = np.random.default_rng(seed)
    return np.clip(gaussian_blur(rng.uniform(size=shape), 2.0) * 3 - 1, 0, 1).astype(np.float32)


def test_the_allocations_are_fm5s_choice_biased_choices_half_planes_and_ramps():
    rng = np.random.default_rng(0)
    maps = jnp.asarray(rng.uniform(size=(2, 6, 8)), jnp.float32)
    alloc = np.asarray(regions.allocations(maps, SMALL))
    # FM5, input 0 raised, input 1 raised; 2 half-planes; 2 ramps
    assert alloc.shape == (1 + 2 + 2 + 2, 2, 6, 8)
    np.testing.assert_array_equal(alloc.sum(axis=1), 1.0)
    fm5 = np.asarray(maps[0] >= maps[1])
    np.testing.assert_array_equal(alloc[0, 0], fm5)
    np.testing.assert_array_equal(alloc[1, 0], np.asarray(maps[0] + 0.3 >= maps[1]))
    np.testing.assert_array_equal(alloc[2, 0], np.asarray(maps[0] >= maps[1] + 0.3))
    x = np.linspace(-1, 1, 8)
    np.testing.assert_array_equal(alloc[3, 0], np.broadcast_to(x > 0, (6, 8)))  # direction 0
    np.testing.assert_array_equal(alloc[4, 0], np.broadcast_to(x < 0, (6, 8)))  # direction π
    ramp = np.asarray(maps[0] - maps[1]) + 0.4 * 2 * x
    np.testing.assert_array_equal(alloc[5, 0], ramp >= 0)


def test_three_inputs_get_sectors_that_cover_the_image():
    maps = jnp.zeros((3, 9, 9))
    alloc = np.asarray(regions.allocations(maps, dataclasses.replace(SMALL, ramp=0.0)))
    sectors = alloc[-1]  # a half-plane allocation of three inputs: three sectors
    assert sectors.sum() == 81 and all(sectors[i].sum() > 9 for i in range(3))


def test_the_gate_tells_registered_views_of_one_scene_from_unrelated_images():
    scene = _smooth(1)
    inverted = 1.0 - scene  # another modality: the same edges, opposite contrast
    blurred = multifocus_set(scene)
    other = _smooth(2)
    one = float(regions.scene_alignment(jnp.stack([scene, inverted])))
    focus = float(regions.scene_alignment(jnp.asarray(blurred)))
    unrelated = float(regions.scene_alignment(jnp.stack([scene, other])))
    three = float(regions.scene_alignment(jnp.stack([scene, inverted, other])))
    assert one > 0.4 and focus > 0.3, (one, focus)  # perfect alignment: about 0.5
    assert abs(unrelated) < 0.1 and three == pytest.approx(unrelated, abs=0.1), (unrelated, three)


@pytest.fixture(scope="module")
def lite0() -> classifier.Network:
    return efficientnet.load("efficientnet_lite0")


def test_the_choice_is_the_candidate_with_the_best_class_margin(lite0):
    images = np.stack([np.stack([_smooth(3), _smooth(4)])])  # [1, 2, H, W, 3], two scenes
    maps = jnp.asarray(np.random.default_rng(5).uniform(size=(1, 2, 48, 48)), jnp.float32)
    params = SMALL  # (what test_fm6_… below compiles too)
    assert float(regions.scene_alignment(jnp.asarray(images[0]))) < params.same_scene
    fused, weights = regions.choose(lite0, jnp.asarray(images), maps, params)

    alloc = np.asarray(regions.allocations(maps[0], params))
    blend = jax.jit(jax.vmap(lambda a: jnp.clip(pyramid.blend(jnp.asarray(images[0]), a, 3), 0, 1)))
    laplacian = np.asarray(baselines.laplacian(images))  # [1, H, W, 3]
    candidates = np.concatenate([laplacian, blend(alloc)])  # the Laplacian first (keep_laplacian)
    alloc = np.concatenate([np.full((1, 2, 48, 48), 0.5, np.float32), alloc])
    classes = np.asarray(classifier.classify(lite0, images[0])).argmax(-1)
    full = classifier.resize_for(lite0, jnp.asarray(candidates))  # [K, 224, 224, 3]
    crop = jax.image.resize(full[:, 28:-28, 28:-28], full.shape, "linear", antialias=True)
    views = jnp.concatenate([full, full[:, :, ::-1], crop, crop[:, :, ::-1]])  # 0.75, mirrored
    log_p = jax.jit(lambda v: jax.nn.log_softmax(lite0.features(v, ("logits",))["logits"]))(views)
    mean = np.mean(np.asarray(log_p, np.float64).reshape(4, len(candidates), -1), axis=0)
    margin = mean[:, classes].min(-1) - np.sort(mean, axis=-1)[:, -5]
    best = 0 if margin[0] >= 0 else int(np.argmax(margin))  # the Laplacian when it keeps both
    assert abs(margin[0]) > 1e-3 and np.sort(margin)[-1] - np.sort(margin)[-2] > 1e-3  # clear
    np.testing.assert_allclose(np.asarray(fused[0]), candidates[best], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(weights[0]), alloc[best])


def test_fm6_fuses_one_scene_with_the_laplacian_pyramid_and_two_by_choice(lite0):
    scene = multifocus_set(_smooth(6))
    photos = np.stack([_smooth(7), _smooth(8)])
    batch = np.stack([scene, photos])
    config = fusion.FusionConfig(method="fm6", method_params=SMALL, classifier="efficientnet_lite0")
    result = fusion.fuse(None, batch, config, network=lite0)
    np.testing.assert_allclose(result.fused[0], np.asarray(baselines.laplacian(scene[None]))[0])
    np.testing.assert_array_equal(result.mixing[0], 0.5)
    assert set(np.unique(result.mixing[1])) in ({0.0, 1.0}, {0.5})  # regions, or the Laplacian
    alone = fusion.fuse(None, photos[None], config, network=lite0)
    np.testing.assert_allclose(result.fused[1], alone.fused[0], atol=1e-6)


def test_region_settings_are_checked():
    for bad in ({"biases": (0.0,)}, {"zooms": (1.0,)}, {"chunk": 0}, {"levels": 9}, {"classes": 0}):
        with pytest.raises(ValueError):
            regions.RegionParams(**bad)
    assert jax.tree.leaves(regions.RegionParams(biases=[0.2]).biases) == [0.2]
