"""Classical baselines: exact reconstructions, known answers, and multi-focus gains."""

from __future__ import annotations

import numpy as np
import pytest

from semfuse_jax import files, fusion
from semfuse_jax.synthetic import multifocus_set


def run(method: str, images: np.ndarray) -> np.ndarray:
    return fusion.fuse(None, images, fusion.FusionConfig(method=method)).fused


def test_average_and_max_are_exact():
    images = np.random.default_rng(0).uniform(size=(2, 3, 9, 11, 3)).astype(np.float32)
    np.testing.assert_allclose(run("average", images), images.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(run("max", images), images.max(axis=1))


@pytest.mark.parametrize("method", ["dwt", "laplacian"])
@pytest.mark.parametrize("shape", [(64, 64), (45, 71)])
def test_identical_inputs_are_reconstructed(method, shape):
    image = np.random.default_rng(1).uniform(size=(*shape, 3)).astype(np.float32)
    fused = run(method, np.stack([image, image])[None])
    np.testing.assert_allclose(fused[0], image, atol=1e-5)


@pytest.mark.parametrize("method", ["dwt", "laplacian"])
def test_multiscale_baselines_recover_multifocus_detail(method, data_dir):
    lytro = files.load_image(data_dir / "multifocus_colour_lytro/lytro-02/lytro-02-A.jpg")
    sharp = lytro[200:296, 220:316]
    images = multifocus_set(sharp)[None]
    err_fused = np.mean((run(method, images)[0] - sharp) ** 2)
    err_average = np.mean((images[0].mean(axis=0) - sharp) ** 2)
    assert err_fused < 0.5 * err_average
