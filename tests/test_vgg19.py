"""VGG19 in Flax against a torch.nn reference, through each weight import path."""

from __future__ import annotations

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TEST_VGG19, needs_torch, rel_err, torch
from PIL import Image

from semfuse_jax.errors import MissingLayersError, SemfuseError
from semfuse_jax.models import vgg19

TORCH_CONV_INDEX = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


@pytest.fixture(scope="module")
def network_input() -> np.ndarray:
    """A non-square batch in NCHW, as torch wants it: 2 × 3 × 160 × 224."""
    return np.random.default_rng(1).normal(size=(2, 3, 160, 224)).astype(np.float32)


@pytest.fixture(scope="module")
def torch_outputs(torch_vgg19, network_input) -> dict[str, np.ndarray]:
    """Every conv output (pre-ReLU, NHWC) and the logits of the torch reference."""
    out = {}
    x = torch.from_numpy(network_input)
    names = iter(vgg19.CONV_LAYERS)
    with torch.no_grad():
        for index, layer in enumerate(torch_vgg19.features):
            x = layer(x)
            if index in TORCH_CONV_INDEX:
                out[next(names)] = x.permute(0, 2, 3, 1).numpy()
        x = torch_vgg19.classifier(torch.flatten(torch_vgg19.avgpool(x), 1))
    out["logits"] = x.numpy()
    return out


def _flax_outputs(params, network_input) -> dict[str, np.ndarray]:
    nhwc = jnp.asarray(network_input.transpose(0, 2, 3, 1))
    fn = jax.jit(vgg19.apply, static_argnames=("outputs",))
    result = fn(params, nhwc, outputs=(*vgg19.CONV_LAYERS, "logits"))
    return {k: np.asarray(v) for k, v in result.items()}


@needs_torch
def test_torchvision_import_matches_torch_on_every_conv_and_logits(
    pth_file, torch_outputs, network_input
):
    loaded = vgg19.load_weights(pth_file, architecture=TEST_VGG19)
    assert loaded.preprocessing == vgg19.TORCHVISION_PREPROCESSING
    ours = _flax_outputs(loaded.params, network_input)
    for name, expected in torch_outputs.items():
        assert ours[name].shape == expected.shape, name
        assert rel_err(ours[name], expected) < 1e-4, name
    with pytest.raises(SemfuseError, match=r"conv1_1 kernel has shape \(3, 3, 3, 8\), expected"):
        vgg19.load_weights(pth_file)  # other widths than ImageNet VGG19's only when declared


def _fc6_conv(torch_state: dict[str, np.ndarray]) -> np.ndarray:
    """torch's fc6 weight ``[hidden, C·49]`` as the 7×7 convolution ``[hidden, C, 7, 7]``."""
    weight = torch_state["classifier.0.weight"]
    return weight.reshape(weight.shape[0], -1, 7, 7)


def _timm_state(torch_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    state = {k: v for k, v in torch_state.items() if k.startswith("features.")}
    state["pre_logits.fc1.weight"] = _fc6_conv(torch_state)
    state["pre_logits.fc1.bias"] = torch_state["classifier.0.bias"]
    state["pre_logits.fc2.weight"] = torch_state["classifier.3.weight"][:, :, None, None]
    state["pre_logits.fc2.bias"] = torch_state["classifier.3.bias"]
    state["head.fc.weight"] = torch_state["classifier.6.weight"]
    state["head.fc.bias"] = torch_state["classifier.6.bias"]
    return state


@needs_torch
def test_timm_safetensors_import_matches_torch(torch_state, torch_outputs, network_input, tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "vgg19.tv_in1k-random.safetensors"
    save_file(_timm_state(torch_state), path)
    loaded = vgg19.load_weights(path, architecture=TEST_VGG19)
    assert loaded.preprocessing == vgg19.TORCHVISION_PREPROCESSING
    ours = _flax_outputs(loaded.params, network_input)
    assert rel_err(ours["logits"], torch_outputs["logits"]) < 1e-4
    assert rel_err(ours["conv5_4"], torch_outputs["conv5_4"]) < 1e-4


def write_keras_h5(path, torch_state: dict[str, np.ndarray], with_top: bool = True) -> None:
    """Write torch weights in the Keras 2 HDF5 weights layout (HWIO kernels, NHWC fc1 rows)."""
    layers: list[tuple[str, list[tuple[str, np.ndarray]]]] = [("input_1", [])]
    for (b, i), index in zip(
        [(b + 1, i + 1) for b, n in enumerate(vgg19.BLOCKS) for i in range(n)],
        TORCH_CONV_INDEX,
        strict=True,
    ):
        name = f"block{b}_conv{i}"
        kernel = torch_state[f"features.{index}.weight"].transpose(2, 3, 1, 0)
        bias = torch_state[f"features.{index}.bias"]
        layers.append((name, [("kernel:0", kernel), ("bias:0", bias)]))
        if i == vgg19.BLOCKS[b - 1]:
            layers.append((f"block{b}_pool", []))
    if with_top:
        fc1 = _fc6_conv(torch_state).transpose(2, 3, 1, 0)  # rows (h*7+w)*C+c
        fc1 = fc1.reshape(-1, fc1.shape[-1])
        layers.append(("flatten", []))
        for name, kernel, bias in (
            ("fc1", fc1, torch_state["classifier.0.bias"]),
            ("fc2", torch_state["classifier.3.weight"].T, torch_state["classifier.3.bias"]),
            ("predictions", torch_state["classifier.6.weight"].T, torch_state["classifier.6.bias"]),
        ):
            layers.append((name, [("kernel:0", kernel), ("bias:0", bias)]))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        f.attrs["backend"] = b"tensorflow"
        for name, tensors in layers:
            group = f.create_group(name)
            group.attrs["weight_names"] = np.array(
                [f"{name}/{w}".encode() for w, _ in tensors], dtype="S"
            )
            for w, value in tensors:
                group.create_dataset(f"{name}/{w}", data=value)


@needs_torch
def test_keras_h5_import_matches_torch(torch_state, torch_outputs, network_input, tmp_path):
    path = tmp_path / "vgg19_random_keras.h5"
    write_keras_h5(path, torch_state)
    loaded = vgg19.load_weights(path, architecture=TEST_VGG19)
    assert loaded.preprocessing == vgg19.CAFFE_PREPROCESSING
    ours = _flax_outputs(loaded.params, network_input)
    assert rel_err(ours["logits"], torch_outputs["logits"]) < 1e-4
    assert rel_err(ours["conv1_1"], torch_outputs["conv1_1"]) < 1e-4


@needs_torch
@pytest.mark.parametrize("size", [1, 3, 5, 7, 10, 13, 14, 23])
def test_adaptive_pool_matrix_matches_torch(size):
    x = np.random.default_rng(size).normal(size=(1, 2, size, size + 3)).astype(np.float32)
    expected = torch.nn.AdaptiveAvgPool2d((7, 7))(torch.from_numpy(x)).numpy()
    ph, pw = vgg19.adaptive_avg_pool_matrix(size), vgg19.adaptive_avg_pool_matrix(size + 3)
    np.testing.assert_allclose(np.einsum("ih,bchw,jw->bcij", ph, x, pw), expected, rtol=1e-5)


def test_only_layers_up_to_the_deepest_request_are_needed():
    params = vgg19.init_params(jax.random.key(0), layers=("conv1_1", "conv1_2"))
    x = jnp.ones((1, 12, 10, 3))
    out = vgg19.apply(params, x, ("relu1_2", "conv1_1"))
    assert set(out) == {"relu1_2", "conv1_1"}
    assert out["relu1_2"].shape == (1, 12, 10, 64)
    assert float(out["relu1_2"].min()) >= 0.0
    assert vgg19.required_layers(("pool1",)) == ("conv1_1", "conv1_2")
    assert vgg19.required_layers(("logits",)) == vgg19.PARAM_LAYERS
    with pytest.raises(MissingLayersError, match="conv2_1"):
        vgg19.check_params(params, ("conv2_1",))


def test_unknown_output_name_is_refused():
    with pytest.raises(SemfuseError, match="conv6_1"):
        vgg19.required_layers(("conv6_1",))


def test_real_shared_file_loads_with_published_values(real_weights):
    kernel_oihw = np.asarray(real_weights.params["conv1_1"]["kernel"]).transpose(3, 2, 0, 1)
    np.testing.assert_allclose(kernel_oihw.ravel()[:3], [0.341195, 0.339992, -0.0448442], atol=1e-6)
    bias = np.asarray(real_weights.params["conv1_1"]["bias"])
    np.testing.assert_allclose(bias[:3], [0.7301776, 0.06493629, 0.03428847], rtol=1e-6)
    assert real_weights.layers == vgg19.CONV_LAYERS[:8]


def test_real_relu1_1_equals_float64_numpy_convolution(real_weights, data_dir):
    rgb = np.asarray(Image.open(data_dir / "multifocus_colour_lytro/lytro-01/lytro-01-A.jpg"))
    image = rgb[100:148, 200:264].astype(np.float32) / 255.0  # 48 x 64 crop, RGB in [0, 1]
    ours = np.asarray(real_weights.features(jnp.asarray(image[None]), ("relu1_1",))["relu1_1"][0])

    # Caffe preprocessing by hand: 0-255, RGB -> BGR, minus the BGR mean.
    x = image.astype(np.float64)[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68])
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))  # H W C kh kw
    kernel = np.asarray(real_weights.params["conv1_1"]["kernel"], np.float64)  # kh kw C O
    expected = np.einsum("hwcij,ijco->hwo", windows, kernel)
    expected = np.maximum(expected + np.asarray(real_weights.params["conv1_1"]["bias"]), 0.0)
    assert rel_err(ours, expected) < 1e-6


def test_partial_file_refuses_deep_layers_and_serves_shallow(real_weights):
    with pytest.raises(MissingLayersError) as info:
        real_weights.require(("conv5_4",))
    message = str(info.value)
    assert "\n" not in message
    assert all(f"conv{b}_{i}" in message for b in (4, 5) for i in range(1, 5))
    assert "conv3_4" not in message.split("needed")[0]
    real_weights.require(("conv1_1",))
    out = real_weights.features(jnp.full((1, 8, 8, 3), 0.5), ("conv1_1",))
    assert out["conv1_1"].shape == (1, 8, 8, 64)
