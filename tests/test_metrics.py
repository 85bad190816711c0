"""Fusion metrics: identities, hand-computed values, special cases, dtype and batch stability."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from semfuse_jax import metrics
from semfuse_jax.synthetic import gaussian_blur

H, W = 24, 32
RAMP = np.tile(np.arange(W, dtype=np.float64), (H, 1)) * 4.0  # 0..124 along columns
CHECKER = (np.indices((H, W)).sum(axis=0) % 2) * 255.0


@pytest.fixture(scope="module")
def real(data_dir) -> np.ndarray:
    """Channel 0 of the clock pair as float64 on 0..255: [2, 512, 512]."""
    from PIL import Image

    folder = data_dir / "multifocus_grey" / "clock"
    return np.stack(
        [np.asarray(Image.open(folder / f"clock{s}.jpg"))[..., 0] for s in "AB"]
    ).astype(np.float64)


def pair(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    return np.stack([a, a if b is None else b])


def test_q0_identities_and_symmetry(real):
    a, b = real[0, :96, :96], real[1, :96, :96]
    assert float(metrics.q0(pair(a), a)) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.q0(pair(a), b)) == pytest.approx(float(metrics.q0(pair(b), a)), abs=1e-12)


def test_q0_hand_computed_cases():
    # y = 2x on a ramp: every window has mu_y = 2 mu_x, var_y = 4 var_x, cov = 2 var_x -> 16/25.
    assert float(metrics.q0(pair(RAMP), 2 * RAMP)) == pytest.approx(0.64, abs=1e-12)
    # A checkerboard against its negative: cov = -var, equal means -> -1 in every window.
    assert float(metrics.q0(pair(CHECKER), 255 - CHECKER)) == pytest.approx(-1.0, abs=1e-12)
    # Flat windows with non-zero means: Q = 2 mu_x mu_y / (mu_x^2 + mu_y^2) = 0.8 for 100 vs 50.
    flat = np.full((H, W), 100.0)
    assert float(metrics.q0(pair(flat), flat / 2)) == pytest.approx(0.8, abs=1e-12)
    # Both windows zero: Q = 1 by definition.
    zeros = np.zeros((H, W))
    assert float(metrics.q0(pair(zeros), zeros)) == pytest.approx(1.0, abs=1e-15)
    # Flat against textured: the numerator is 0 (no covariance) -> 0 in every window.
    assert float(metrics.q0(pair(flat), CHECKER)) == pytest.approx(0.0, abs=1e-12)
    # Half the windows flat (left, 0.8) and half a scaled ramp (0.64): windows are 8 wide.
    left = np.concatenate([np.full((H, 8), 100.0), RAMP[:, 8:]], axis=1)
    right = np.concatenate([np.full((H, 8), 50.0), 2 * RAMP[:, 8:]], axis=1)
    with jax.enable_x64(True):
        q = metrics.q0_map(left, right)
    assert float(q[0, 0]) == pytest.approx(0.8) and float(q[0, 8]) == pytest.approx(0.64)


def test_piella_identities_and_saliency_weighting():
    noise = np.random.default_rng(0).uniform(0, 255, (H, W))
    assert float(metrics.qw(pair(noise), noise)) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.qe(pair(noise), noise)) == pytest.approx(1.0, abs=1e-12)
    # B flat: all saliency is A's, so Q_W = Q0 of F against A alone, averaged with C weights.
    flat = np.full((H, W), 80.0)
    assert float(metrics.qw(pair(noise, flat), noise)) == pytest.approx(1.0, abs=1e-9)
    with jax.enable_x64(True):
        weights = metrics.local_variance(noise)
        expected = float(np.sum(weights * metrics.q0_map(noise, 2 * noise)) / np.sum(weights))
    assert float(metrics.qw(pair(noise, flat), 2 * noise)) == pytest.approx(expected, rel=1e-9)


def test_sobel_convention_on_a_ramp():
    with jax.enable_x64(True):
        s_x, s_y = metrics.sobel(RAMP)
    np.testing.assert_allclose(np.asarray(s_x)[1:-1, 1:-1], -4.0)
    np.testing.assert_allclose(np.asarray(s_y)[1:-1, 1:-1], 0.0)


def test_qabf_maximum_at_perfect_fusion_and_falls_with_blur(real):
    a = real[0, 128:256, 128:256]
    best_benchmark = 0.9994 / (1 + np.exp(-15 * 0.5)) * 0.9879 / (1 + np.exp(-22 * 0.2))
    assert float(metrics.qabf(pair(a), a)) == pytest.approx(best_benchmark, rel=1e-12)
    assert float(metrics.qabf_petrovic(pair(a), a)) == pytest.approx(1.0, abs=1e-12)
    previous = {"qabf": best_benchmark, "qabf_petrovic": 1.0}
    for sigma in (0.6, 1.0, 2.0, 4.0):
        blurred = gaussian_blur(a[..., None], sigma)[..., 0]
        for name in previous:
            value = float(getattr(metrics, name)(pair(a), blurred))
            assert value < previous[name], (name, sigma)
            previous[name] = value


def test_entropy_mi_and_simple_statistics():
    halves = np.zeros((H, W))
    halves[:, W // 2 :] = 200
    assert float(metrics.en(pair(halves), halves)) == pytest.approx(1.0, abs=1e-12)
    noise = np.round(np.random.default_rng(1).uniform(0, 255, (64, 64)))
    en = float(metrics.en(pair(noise), noise))
    with jax.enable_x64(True):
        assert float(metrics.mutual_information(noise, noise)) == pytest.approx(en, abs=1e-9)
    assert float(metrics.mi(pair(noise), noise)) == pytest.approx(2 * en, abs=1e-9)
    assert float(metrics.sd(pair(halves), halves)) == pytest.approx(100.0)
    assert float(metrics.sf(pair(RAMP), RAMP)) == pytest.approx(4.0)  # RF = 4, CF = 0
    assert float(metrics.ag(pair(RAMP), RAMP)) == pytest.approx(4.0 / np.sqrt(2.0))
    assert float(metrics.ssim(pair(noise), noise)) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.ssim(pair(noise), 255 - noise)) < 0


def test_float32_float64_and_batch_agree(real):
    sources = real[:, 100:228, 100:228]
    fused = np.round(sources.mean(axis=0))
    as64 = metrics.compute_all(sources, fused)
    as32 = metrics.compute_all(sources.astype(np.float32), fused.astype(np.float32))
    batch = metrics.compute_all(np.stack([sources, sources[::-1]]), np.stack([fused, fused]))
    for name in metrics.NAMES:
        assert abs(float(as64[name]) - float(as32[name])) < 1e-6, name
        assert abs(float(batch[name][0]) - float(as64[name])) < 1e-6, name
        assert abs(float(batch[name][1]) - float(as64[name])) < 1e-6, name  # order of inputs


def test_three_inputs_reduce_sensibly():
    noise = np.random.default_rng(2).uniform(0, 255, (H, W))
    three = np.stack([noise, noise, noise])
    assert float(metrics.q0(three, noise)) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.qabf_petrovic(three, noise)) == pytest.approx(1.0, abs=1e-12)
    assert float(metrics.qw(three, noise)) == pytest.approx(1.0, abs=1e-9)


def test_mismatched_shapes_are_refused():
    from semfuse_jax.errors import SemfuseError

    with pytest.raises(SemfuseError, match="do not match"):
        metrics.q0(pair(RAMP), RAMP[:, :-1])
    with pytest.raises(SemfuseError, match="N>=2"):
        metrics.q0(RAMP[None], RAMP)


def test_the_registry_drives_scores_and_tables():
    from semfuse_jax import tables

    rng = np.random.default_rng(3)
    grey = rng.random((2, 16, 16, 1)).astype(np.float32)
    colour = rng.random((2, 16, 16, 3)).astype(np.float32)
    for inputs in (grey, colour):
        scores = metrics.score_set(inputs, inputs.mean(axis=0))
        assert tuple(scores) == tables.COLUMNS == tuple(metrics.REGISTRY)
        for name, metric in metrics.REGISTRY.items():
            assert (scores[name] is None) == (metric.colour_only and inputs is grey), name
    assert set(metrics.KERNELS) == {n for n, m in metrics.REGISTRY.items() if not m.colour_only}
    # a table marks the lowest value best exactly where the registry says lower is better
    rows = [{"method": "a"} | dict.fromkeys(tables.COLUMNS, 1.0), {"method": "b"}]
    rows[1] |= dict.fromkeys(tables.COLUMNS, 2.0)
    cells = zip(*tables.bold_best(rows, ["method"]), strict=True)
    marked = dict(zip(["method", *tables.COLUMNS], cells, strict=True))
    for name, metric in metrics.REGISTRY.items():
        best = marked[name][0 if metric.lower_is_better else 1]
        assert best.startswith("**"), name
