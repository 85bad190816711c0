"""Every CAM method against pytorch-grad-cam on the same EfficientNet-Lite0 (real weights, both
sides in float32), same layer and class, maps compared after the same normalisation; the
registry and its wiring into the fusion settings."""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_torch, torch
from PIL import Image

from semfuse_jax import cam, classifier, fusion
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import efficientnet, torch_file

REFERENCE_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}

# Layers compared (ours, the torch model's tap): the last stage's output by default; XGrad-CAM
# divides by each channel's activation sum, which is ill-conditioned on a stage output (linear,
# of either sign, sums near zero), so it is compared on the rectified head, as its paper
# assumes; Score-CAM (one forward per channel) on stage 6's fewer channels.
LAYERS = {"xgradcam": ("head", "head"), "scorecam": ("stage6", "block14")}


def _grad_cam_package():
    """pytorch-grad-cam, imported without torchvision (it imports torchvision only for image
    transforms and detection boxes, which none of the methods compared here use; the test
    environment installs it with ``--no-deps`` so that torchvision stays out)."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")
        functional = types.ModuleType("torchvision.transforms.functional")
        for name in ("Compose", "Normalize", "ToTensor"):
            setattr(transforms, name, None)
        functional.resize = None
        stub.transforms, transforms.functional = transforms, functional
        sys.modules.setdefault("torchvision", stub)
        sys.modules.setdefault("torchvision.transforms", transforms)
        sys.modules.setdefault("torchvision.transforms.functional", functional)
    try:
        return importlib.import_module("pytorch_grad_cam")
    except ImportError as exc:
        message = f"pytorch-grad-cam is not installed ({exc}); see the README's test command"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, np.ndarray]:
    return torch_file.load_state_dict(efficientnet.package_file("efficientnet_lite0"))


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Two photos (a cat, an espresso) at 128×160, RGB in [0, 1], float32."""
    skimage = pytest.importorskip("skimage")
    folder = Path(skimage.__file__).parent / "data"
    return np.stack(
        [
            np.asarray(Image.open(folder / name).convert("RGB").resize((160, 128)), np.float32)
            / 255.0
            for name in ("chelsea.png", "coffee.png")
        ]
    )


def _normalise(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - low) / (maps.max(axis=(-2, -1), keepdims=True) - low)


@needs_torch
@pytest.mark.parametrize("method", list(REFERENCE_CLASSES))
def test_cam_method_equals_pytorch_grad_cam(method, lite0_state, photos, monkeypatch):
    package = _grad_cam_package()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torch_lite import Logits, TorchLite0

    layer, torch_layer = LAYERS.get(method, ("stage7", "block15"))
    net = efficientnet.load("efficientnet_lite0")
    images = jnp.asarray(photos)
    logits = net.features(images, ("logits",))["logits"]
    classes = np.asarray(jnp.argmax(logits, axis=-1))
    weights = jax.nn.one_hot(classes, 1000)
    ours = np.asarray(cam.layer_maps(net, images, weights, (layer,), method))[:, 0]
    assert ours.shape == (2, 128, 160)

    model = TorchLite0()
    model.load_efficientnet_pytorch(lite0_state)
    prep = efficientnet.LITE_PREPROCESSING
    x = (photos * prep.scale - np.array(prep.mean)) / np.array(prep.std)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))
    if method == "eigencam":  # orient the principal direction as ours (see semfuse_jax.cam)
        original = package.eigen_cam.get_2d_projection

        def oriented(activations: np.ndarray) -> np.ndarray:
            projection = original(activations)
            energy = activations.sum(axis=1)
            for b in range(len(projection)):
                centred = energy[b] - energy[b].mean()
                if np.sum(projection[b] * centred) < 0:
                    projection[b] = -projection[b]
            return projection

        monkeypatch.setattr(package.eigen_cam, "get_2d_projection", oriented)
    reference = getattr(package, REFERENCE_CLASSES[method])(
        model=Logits(model), target_layers=[model.taps[torch_layer]]
    )
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    theirs = reference(input_tensor=x, targets=targets)
    assert theirs.shape == (2, 128, 160)
    for b in range(2):
        assert ours[b].max() > ours[b].min(), (method, b)  # a map, not a constant
        np.testing.assert_allclose(_normalise(ours[b]), theirs[b], atol=1e-4, err_msg=method)


def test_methods_differ_and_each_is_a_valid_map(lite0_state, photos):
    """On a real photo every method gives a finite, non-negative, non-constant map, and no two
    methods give the same map (each formula is wired to its own name)."""
    net = efficientnet.load("efficientnet_lite0")
    images = jnp.asarray(photos[:1])
    weights = jax.nn.one_hot(jnp.argmax(net.features(images, ("logits",))["logits"], -1), 1000)
    maps = {}
    for name in cam.NAMES:
        m = np.asarray(cam.layer_maps(net, images, weights, ("stage6",), name))[0, 0]
        assert np.all(np.isfinite(m)) and m.min() >= 0 and m.max() > m.min(), name
        maps[name] = _normalise(m)
    for a in cam.NAMES:
        for b in cam.NAMES:
            if a < b:
                assert np.abs(maps[a] - maps[b]).max() > 1e-3, (a, b)


def test_resize_aligned_maps_corners_onto_corners():
    grid = jnp.arange(6.0).reshape(2, 3)
    out = np.asarray(cam.resize_aligned(grid, (3, 5)))
    np.testing.assert_allclose(out[0], [0, 0.5, 1, 1.5, 2])
    np.testing.assert_allclose(out[:, 0], [0, 1.5, 3])
    np.testing.assert_allclose(out[-1, -1], 5)


def test_config_and_flag_choose_the_method():
    assert len(cam.NAMES) >= 7 and cam.NAMES[0] == "gradcam"
    config = fusion.FusionConfig(method="fm5", cam="layercam")
    assert fusion.FusionConfig.from_dict(config.to_dict()).cam == "layercam"
    assert fusion.FusionConfig().cam == "gradcam"
    with pytest.raises(SemfuseError, match="unknown CAM method 'gradcam3'"):
        fusion.FusionConfig(method="fm3", cam="gradcam3")


def test_fusion_uses_the_configured_cam_method():
    net = efficientnet.load("efficientnet_lite0")
    images = np.random.default_rng(0).uniform(size=(1, 2, 48, 64, 3)).astype(np.float32)
    grad = fusion.fuse(None, images, fusion.FusionConfig(method="fm3"), network=net)
    eigen = fusion.fuse(
        None, images, fusion.FusionConfig(method="fm3", cam="eigencam"), network=net
    )
    assert not np.array_equal(grad.probabilities, eigen.probabilities)
    layers = classifier.LITE_CAM_LAYERS
    expected = fusion.cam_maps(net, jnp.asarray(images), 1, None, layers, "product", "eigencam")
    np.testing.assert_array_equal(eigen.probabilities, np.asarray(expected))
