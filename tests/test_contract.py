"""The contract every registry entry keeps (methods, classifiers, CAM methods, metrics): it runs
on a tiny set, each set of a batch comes out as it would alone, its jittable parts give the same
under ``jax.jit``, and a method's configuration round-trips through JSON and a run's report.

"As it would alone" is checked as ``f([a, b])[0] == f([a, a])[0]`` and
``f([a, b])[1] == f([b, b])[1]``: one batch shape, so one compilation per entry, and any
dependence of a set's result on its batchmates (a batch statistic, padding, a mixed-up index)
changes one side.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from semfuse_jax import cam, classifier, fusion, methods, metrics, regions, runs
from semfuse_jax.cli import options
from semfuse_jax.models import Models, efficientnet
from semfuse_jax.optimise import Schedule
from semfuse_jax.synthetic import multifocus_set

SHORT = Schedule(epochs=2, iters=3)
HOST_PARTS = {("dwt", "combine")}  # the wavelet baseline: PyWavelets on the host, in float64
# FM6 with 6 candidates and 2 views instead of 38 and 4: the same code paths, a smaller program
SETTINGS = {"fm6": regions.RegionParams(biases=(0.3,), directions=2, offsets=(0.0,), zooms=())}


def _pairs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Two multi-focus sets ``[2, 2, *shape]`` of random images (float32, in ``[0, 1]``)."""
    rng = np.random.default_rng(seed)
    return np.stack([multifocus_set(rng.uniform(size=shape)) for _ in range(2)])


def _alone(run, batch: np.ndarray) -> np.ndarray:
    """``run(batch)`` ``[2, ...]``, having checked that it gives each member of ``batch`` what
    it gives that member in a batch of its own copies."""
    together = np.asarray(run(batch))
    for k in (0, 1):
        alone = np.asarray(run(np.stack([batch[k], batch[k]])))
        np.testing.assert_allclose(together[k], alone[k], atol=1e-5, err_msg=f"set {k}")
    return together


@pytest.fixture(scope="module")
def lite0() -> classifier.Network:
    return efficientnet.load("efficientnet_lite0")


@pytest.mark.parametrize("name", methods.NAMES)
def test_every_method_keeps_the_contract(name, real_weights, lite0, tmp_path):
    method = methods.get(name)
    sets = _pairs((32, 40, 3), seed=len(name))
    config = fusion.FusionConfig(
        method=name, schedule=SHORT, classifier="efficientnet_lite0",
        method_params=SETTINGS.get(name),
    )  # fmt: skip
    network = lite0 if config.uses_cam else None

    def run(batch: np.ndarray) -> np.ndarray:
        return fusion.fuse(real_weights, batch, config, network=network).fused

    fused = _alone(run, sets)
    assert fused.shape == (2, 32, 40, 3) and np.all((fused >= 0) & (fused <= 1))

    one = jnp.asarray(sets[0])  # the method's parts, on one set [N, H, W, C]
    params = config.params
    parts = {
        "combine": (method.combine, (jnp.asarray(sets),)),
        "start": (method.start if method.optimised else None, (one,)),
        "edges": (method.edges, (one,)),
        "bounds": (method.bounds, (one,)),
        "mix": (method.mix, (one, jax.nn.softmax(one[..., 0], axis=0))),
    }
    for part, (function, arrays) in parts.items():
        if function is None or (name, part) in HOST_PARTS:
            continue
        settings = () if part == "combine" else (params,)
        eager = jax.tree.leaves(function(*arrays, *settings))
        jitted = jax.tree.leaves(jax.jit(lambda *a, f=function, p=settings: f(*a, *p))(*arrays))
        assert eager, part
        for e, j in zip(eager, jitted, strict=True):
            np.testing.assert_allclose(np.asarray(j), np.asarray(e), atol=1e-5, err_msg=part)

    assert fusion.FusionConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    report = tmp_path / "report.json"
    report.write_text(json.dumps(runs.run_info(Models(real_weights, network, None), config)))
    assert options.read_config(str(report)) == config
    fields = dataclasses.fields(params) if params is not None else ()
    numbers = [f.name for f in fields if _is_number(params, f.name)]
    if numbers:  # a changed setting travels too
        value = getattr(params, numbers[0])
        changed = dataclasses.replace(
            config, method_params=dataclasses.replace(params, **{numbers[0]: value + 1})
        )
        assert fusion.FusionConfig.from_dict(changed.to_dict()) == changed != config


def _is_number(params: object, field: str) -> bool:
    value = getattr(params, field)
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.parametrize("name", classifier.NAMES)
def test_every_classifier_keeps_the_contract(name, full_weights):
    entry = classifier.get(name)
    network = classifier.load(name, full_weights)
    assert classifier.network_name(network) == name
    outputs = (*entry.cam_layers, "logits")
    images = _pairs((64, 64, 3), seed=1)[:, 0]  # [2, 64, 64, 3]

    @jax.jit
    def forward(x: jax.Array) -> dict[str, jax.Array]:
        return network.features(x, outputs)

    eager = network.features(jnp.asarray(images), outputs)
    jitted = forward(jnp.asarray(images))
    assert set(jitted) == set(outputs) and jitted["logits"].shape == (2, 1000)
    for layer in entry.cam_layers:
        assert jitted[layer].ndim == 4 and jitted[layer].shape[0] == 2, layer
    for key in outputs:
        np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-4, atol=1e-4, err_msg=key)
    _alone(lambda x: forward(jnp.asarray(x))["logits"], images)


@pytest.mark.parametrize("name", cam.NAMES)
def test_every_cam_method_keeps_the_contract(name, lite0):
    images = _pairs((64, 64, 3), seed=2)[:, 0]
    weights = jax.nn.one_hot(jnp.array([281, 967]), 1000)  # one class per image
    # XGrad-CAM divides by channel sums, ill-conditioned on a (linear) stage output: on the
    # rectified head; Score-CAM (a forward per channel) on stage 6's fewer channels
    layer = {"xgradcam": "head", "scorecam": "stage6"}.get(name, "stage7")

    def maps(x: np.ndarray) -> jax.Array:
        return cam.layer_maps(lite0, jnp.asarray(x), weights[: len(x)], (layer,), name)

    together = np.asarray(maps(images))
    assert together.shape == (2, 1, 64, 64) and np.all(np.isfinite(together))
    assert np.all(together >= 0)
    jitted = jax.jit(lambda x, w: cam.layer_maps(lite0, x, w, (layer,), name))
    # float32 rounding relative to the map's scale (Eigen-CAM's SVD reaches ~1.5e-5)
    np.testing.assert_allclose(jitted(jnp.asarray(images), weights), together, rtol=1e-4, atol=1e-5)
    for k in (0, 1):  # each image with its own class, alone or beside the other
        pair = jnp.asarray(np.stack([images[k], images[k]]))
        alone = np.asarray(cam.layer_maps(lite0, pair, weights[k][None].repeat(2, 0),
                                          (layer,), name))  # fmt: skip
        np.testing.assert_allclose(
            together[k], alone[k], rtol=1e-4, atol=1e-5, err_msg=f"image {k}"
        )


@pytest.mark.parametrize("name", list(metrics.REGISTRY))
def test_every_metric_keeps_the_contract(name):
    sets = _pairs((24, 28, 3), seed=3)  # [2 sets, 2 inputs, H, W, 3]
    fused = sets.mean(axis=1)
    scores = [metrics.score_set(s, f) for s, f in zip(sets, fused, strict=True)]
    entry = metrics.REGISTRY[name]
    values = [s[name] for s in scores]
    assert all(v is not None and np.isfinite(v) for v in values), values  # colour sets
    grey = metrics.score_set(sets[0, ..., :1], fused[0, ..., :1])[name]
    assert (grey is None) == entry.colour_only
    if entry.colour_only:
        return
    kernel = metrics.KERNELS[name]
    sources = jnp.asarray(metrics.luminance_255(sets))  # [2, 2, H, W]
    target = jnp.asarray(metrics.luminance_255(fused))  # [2, H, W]
    batched = np.asarray(jax.jit(kernel)(sources, target))
    assert batched.shape == (2,)
    np.testing.assert_allclose(batched, values, rtol=1e-4, atol=1e-4)
    both = np.concatenate([sources, target[:, None]], axis=1)  # [2, 3, H, W]: inputs, then fused
    _alone(lambda b: kernel(jnp.asarray(b[:, :2]), jnp.asarray(b[:, 2])), both)
