"""FM5's semantic blend, the CAM maps at the classifier's size, and the tools right after install:
no weights flag, an empty cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from semfuse_jax import cam, classifier, fusion, methods, pyramid
from semfuse_jax.models import efficientnet


def test_semantic_blend_takes_each_pixel_from_the_input_with_the_higher_map():
    images = np.zeros((1, 2, 32, 48, 3), np.float32)
    images[:, 1] = 1.0
    maps = np.zeros((1, 2, 32, 48), np.float32)
    maps[:, 0, :, :24] = 0.9  # input 0 wins on the left half
    maps[:, 1, :, 24:] = 0.4  # input 1 on the right half, although its map is lower
    fused, choice = (
        np.asarray(x) for x in fusion.per_set(methods.semantic_blend, jnp.asarray(images), maps)
    )
    np.testing.assert_array_equal(choice[0, 0], (np.arange(48) < 24)[None].repeat(32, 0))
    np.testing.assert_allclose(choice.sum(axis=1), 1.0)
    assert fused[0, :, :6].max() < 0.01 and fused[0, :, 42:].min() > 0.99  # away from the seam
    assert 0.2 < fused[0, 16, 24, 0] < 0.8  # the seam is blended, not cut
    expected = pyramid.blend(
        jnp.moveaxis(jnp.asarray(images), 1, 0), jnp.moveaxis(jnp.asarray(choice), 1, 0), 3
    )
    np.testing.assert_allclose(fused[0], np.clip(np.asarray(expected)[0], 0, 1), atol=1e-6)


def test_pyramid_blend_with_one_weight_reproduces_the_image():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(2, 37, 50, 3)), jnp.float32)
    weights = jnp.stack([jnp.ones((37, 50)), jnp.zeros((37, 50))])
    np.testing.assert_allclose(pyramid.blend(images, weights, 4), images[0], atol=1e-5)


def test_fm5_maps_are_the_mean_of_normalised_layer_maps():
    net = efficientnet.load("efficientnet_lite0")
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.uniform(size=(2, 96, 80, 3)), jnp.float32)
    logits = net.features(images, ("logits",))["logits"]
    weights = cam.class_weights(logits, 1)
    maps = cam.layer_maps(net, images, weights, classifier.LITE_CAM_LAYERS)
    expected = np.mean(np.asarray(cam.normalise(maps)), axis=1)
    got = cam.semantic_map(net, images, 1, None, classifier.LITE_CAM_LAYERS)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-6)
    result = fusion.fuse(None, np.asarray(images)[None], fusion.FusionConfig(method="fm5"))
    assert result.probabilities.shape == (1, 2, 96, 80)
    assert result.probabilities.min() >= 0 and result.probabilities.max() <= 1 + 1e-6
    np.testing.assert_array_equal(
        result.mixing[0, 0], result.probabilities[0, 0] >= result.probabilities[0, 1]
    )


def _tool(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SEMFUSE_WEIGHTS"}
    return subprocess.run(
        [sys.executable, "-m", "semfuse_jax.cli.fuse", *args],
        capture_output=True,
        text=True,
        env={**env, "SEMFUSE_CACHE": str(cache)},
        timeout=600,
    )


@pytest.fixture(scope="module")
def cat_and_coffee(tmp_path_factory) -> list[Path]:
    skimage = pytest.importorskip("skimage")
    folder = Path(skimage.__file__).parent / "data"
    out = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea.png", "coffee.png"):
        paths.append(out / name)
        Image.open(folder / name).convert("RGB").resize((160, 120)).save(paths[-1])
    return paths


def test_tools_work_right_after_install_with_no_weights_and_an_empty_cache(
    cat_and_coffee, tmp_path
):
    cat, coffee = cat_and_coffee
    cache = tmp_path / "empty-cache"
    out = tmp_path / "fm0.png"
    fm0 = _tool(f"--inputs={cat},{coffee}", f"--output={out}", "--verbosity=-1", cache=cache)
    assert fm0.returncode == 0, fm0.stderr
    assert Image.open(out).size == (160, 120)
    report, sheet = tmp_path / "r.json", tmp_path / "s.png"
    fm3 = _tool(
        "--method=fm3",
        f"--inputs={cat},{coffee}",
        f"--output={tmp_path / 'x.png'}",
        f"--report={report}",
        f"--figure={sheet}",
        cache=cache,
    )
    assert fm3.returncode == 0, fm3.stderr
    record = json.loads(report.read_text())
    assert record["config"]["classifier"] == "efficientnet_lite0"
    classes = record["classes"]
    cats = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
    assert classes["inputs"][0][0]["label"] in cats
    assert classes["inputs"][1][0]["label"] == "espresso"
    assert len(classes["fused"]) == 5 and all("label" in c for c in classes["fused"])
    assert Image.open(sheet).size[1] == 3 * (256 * 120 // 160 + 14)
