"""EfficientNet-Lite in Flax against an independent torch model; the real Lite0 weights through the
library's own loading path; Grad-CAM on it against torch autograd (float64)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_torch, rel_err, torch
from PIL import Image

from semfuse_jax import cam, classifier
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import efficientnet, torch_file

if torch is not None:  # the independent reference model
    from torch_lite import TorchLite0, random_state

OUTPUTS = ("stem", *(f"block{i}" for i in range(16)), "head", "logits")


def _to_torch_input(images: np.ndarray, prep) -> np.ndarray:
    x = (images * prep.scale - np.array(prep.mean)) / np.array(prep.std)
    return x.transpose(0, 3, 1, 2)


def _as_nhwc(value) -> np.ndarray:
    value = value.detach().numpy()
    return value.transpose(0, 2, 3, 1) if value.ndim == 4 else value


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return torch_file.load_state_dict(efficientnet.package_file("efficientnet_lite0"))


@needs_torch
@pytest.mark.parametrize("which", ["random", "real"])
def test_flax_lite0_equals_torch_on_every_stage(which, lite0_state):
    state = random_state(1) if which == "random" else lite0_state
    params = efficientnet.from_torch(state, which)
    net = efficientnet.EfficientNetWeights(
        jax.tree.map(jnp.asarray, params), efficientnet.LITE_PREPROCESSING, which, "lite0"
    )
    assert len(net.spec) == 16
    assert [i for i, b in enumerate(net.spec) if b.stride == 2] == [1, 3, 5, 11]
    images = np.random.default_rng(0).uniform(size=(2, 75, 101, 3)).astype(np.float32)
    ours = net.features(jnp.asarray(images), OUTPUTS)
    model = TorchLite0()
    model.load_efficientnet_pytorch(state)
    with torch.no_grad():
        theirs = model(torch.from_numpy(_to_torch_input(images, net.preprocessing)).float())
    for name in OUTPUTS:
        assert ours[name].shape == _as_nhwc(theirs[name]).shape, name
        assert rel_err(ours[name], _as_nhwc(theirs[name])) < 1e-4, name
    stages = net.features(jnp.asarray(images), ("stage3", "stage7"))
    np.testing.assert_array_equal(stages["stage3"], ours["block4"])
    np.testing.assert_array_equal(stages["stage7"], ours["block15"])


def _photo(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


@pytest.fixture(scope="module")
def photos(data_dir) -> dict[str, np.ndarray]:
    skimage = pytest.importorskip("skimage")
    folder = Path(skimage.__file__).parent / "data"
    return {
        "coffee": _photo(folder / "coffee.png"),
        "chelsea": _photo(folder / "chelsea.png"),
        "clock": _photo(data_dir / "multifocus_grey" / "clock" / "clockA.jpg"),
    }


@pytest.mark.parametrize("name", list(efficientnet.PACKAGES))
def test_real_lites_classify_photos_through_the_loading_path(name, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMFUSE_CACHE", str(tmp_path))
    net = efficientnet.load(name)  # converts the package's file into the cache
    cached = tmp_path / f"{name}.safetensors"
    assert cached.is_file()
    again = efficientnet.load(name)  # reads the canonical file
    for a, b in zip(jax.tree.leaves(net.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    names = classifier.class_names()
    expected = {
        "coffee": {"espresso"},
        "chelsea": {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"},
        "clock": {"analog clock", "wall clock"},
    }
    for key, image in photos.items():
        top = int(np.argmax(classifier.classify(net, image[None])[0]))
        assert names[top] in expected[key], (key, names[top])


def test_corrupt_cache_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMFUSE_CACHE", str(tmp_path))
    net = efficientnet.load("efficientnet_lite0")
    cached = tmp_path / "efficientnet_lite0.safetensors"
    data = bytearray(cached.read_bytes())
    data[-100] ^= 0xFF  # a tensor byte
    cached.write_bytes(bytes(data))
    with pytest.raises(SemfuseError, match="digest"):
        efficientnet.load("efficientnet_lite0")
    assert net.name == "efficientnet_lite0"


def test_preprocessing_matches_the_first_batch_norm_statistics(lite0_state, photos):
    """The scaling these weights expect: the stem's output statistics on real photos are closer
    to the stored running statistics of its batch norm with (x − 127)/128 than with ImageNet
    mean/std (the measurement benchmarks/semantic.py reports)."""
    from semfuse_jax.models.vgg19 import TORCHVISION_PREPROCESSING, preprocess

    kernel = jnp.asarray(lite0_state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    running_var = lite0_state["_bn0.running_var"]

    def log_var_error(prep) -> float:
        outs = []
        for image in photos.values():
            x = preprocess(jnp.asarray(image)[None], prep)
            y = jax.lax.conv_general_dilated(
                x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            outs.append(np.asarray(y).reshape(-1, kernel.shape[-1]))
        var = np.concatenate(outs).var(axis=0)
        live = (var > 0) & (running_var > 0)  # a few stem channels are dead
        return float(np.median(np.abs(np.log(var[live] / running_var[live]))))

    assert log_var_error(efficientnet.LITE_PREPROCESSING) < 0.7 * log_var_error(
        TORCHVISION_PREPROCESSING
    )


@needs_torch
def test_grad_cam_on_lite_matches_torch_autograd_in_float64(lite0_state):
    layers = classifier.LITE_CAM_LAYERS
    torch_names = {"stage6": "block14", "stage7": "block15", "head": "head"}
    images = np.random.default_rng(3).uniform(size=(2, 96, 128, 3))
    params = efficientnet.from_torch(lite0_state, "real")
    with jax.enable_x64(True):
        net = efficientnet.EfficientNetWeights(
            jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params),
            efficientnet.LITE_PREPROCESSING,
            "real",
            "efficientnet_lite0",
        )
        logits = net.features(jnp.asarray(images), ("logits",))["logits"]
        weights = np.asarray(cam.class_weights(logits, top_k=2))
        ours = np.asarray(cam.layer_maps(net, jnp.asarray(images), jnp.asarray(weights), layers))
    model = TorchLite0().double()
    model.load_efficientnet_pytorch(lite0_state)
    model.double()
    x = torch.from_numpy(_to_torch_input(images, efficientnet.LITE_PREPROCESSING).copy())
    out = model(x)
    acts = [out[torch_names[layer]] for layer in layers]
    for a in acts:
        a.retain_grad()
    (out["logits"] * torch.from_numpy(weights.copy())).sum().backward()
    assert ours.dtype == np.float64 and ours.shape == (2, 3, 96, 128)
    for k, a in enumerate(acts):
        heat = torch.relu((a.grad.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True))
        up = torch.nn.functional.interpolate(heat, (96, 128), mode="bilinear", align_corners=False)
        expected = up[:, 0].detach().numpy()
        for b in range(2):
            assert expected[b].max() > 0
            # 1e-4 as for VGG19: the folded batch norm is stored in float32 (~1e-7 apart)
            assert rel_err(ours[b, k], expected[b]) < 1e-4, (layers[k], b)


def test_weights_with_other_layers_or_keys_are_refused(lite0_state):
    bad = dict(lite0_state)
    bad["_blocks.3._se_reduce.weight"] = np.zeros((4, 24, 1, 1), np.float32)
    with pytest.raises(SemfuseError, match="unexpected keys"):
        efficientnet.from_torch(bad, "bad")
    bad = {k: v for k, v in lite0_state.items() if not k.startswith("_blocks.4._project")}
    with pytest.raises(SemfuseError):
        efficientnet.from_torch(bad, "bad")
    net_params = efficientnet.from_torch(lite0_state, "ok")
    net = efficientnet.EfficientNetWeights(net_params, efficientnet.LITE_PREPROCESSING)
    with pytest.raises(SemfuseError, match="unknown EfficientNet-Lite output"):
        net.require(("conv5_4",))


def test_classifier_choice(full_weights, real_weights):
    assert classifier.resolve("auto", full_weights) == "vgg19"
    assert classifier.resolve("auto", real_weights) == "efficientnet_lite0"
    assert classifier.resolve("auto", None) == "efficientnet_lite0"
    with pytest.raises(SemfuseError, match="fc6"):
        classifier.load("vgg19", real_weights)
    net = classifier.load("auto", real_weights)
    assert classifier.network_name(net) == "efficientnet_lite0"
    assert classifier.cam_layers_for(net, ()) == classifier.LITE_CAM_LAYERS
    assert classifier.cam_layers_for(full_weights, ()) == cam.CAM_LAYERS
    assert len(classifier.class_names()) == 1000
    assert dataclasses.is_dataclass(net)
