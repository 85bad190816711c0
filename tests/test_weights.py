"""Weight conversion, the canonical file, integrity checks, download, semfuse-weights."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TEST_VGG19, assert_trees_all_close

from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import checkpoints, vgg19


def test_canonical_round_trip_keeps_params_preprocessing_and_provenance(
    pth_file, full_weights_file, torch_state
):
    info = vgg19.describe(full_weights_file)
    assert info["format"] == vgg19.FORMAT
    assert info["layers"].split(",") == list(vgg19.PARAM_LAYERS)
    assert info["missing"] == ""
    assert info["source_sha256"] == checkpoints.file_digests(pth_file)["sha256"]
    assert vgg19.Architecture.from_json(info["architecture"], "") == TEST_VGG19  # recorded
    loaded = vgg19.load_weights(full_weights_file)  # the file's own widths, not passed
    assert loaded.preprocessing == vgg19.TORCHVISION_PREPROCESSING
    # the .pth's tensors, converted in memory
    direct = vgg19.from_torchvision(torch_state, architecture=TEST_VGG19)
    assert_trees_all_close(loaded.params, direct, rtol=0, atol=0)
    # fc6: torch column c*49 + h*7 + w must land on our row (h*7 + w)*C + c.
    fc6 = np.asarray(loaded.params["fc6"]["kernel"])
    width = TEST_VGG19.widths[-1]
    c, h, w = width - 3, 2, 5
    np.testing.assert_array_equal(
        fc6[(h * 7 + w) * width + c], torch_state["classifier.0.weight"][:, c * 49 + h * 7 + w]
    )
    with pytest.raises(SemfuseError, match="holds a VGG19 of"):  # a file's widths are its own
        vgg19.load_weights(full_weights_file, architecture=vgg19.STANDARD)


def test_real_partial_file_converts_and_keeps_caffe_preprocessing(real_weights_file, tmp_path):
    out = tmp_path / "block1-3.safetensors"
    info = vgg19.convert(real_weights_file, out)
    assert info["layers"] == ",".join(vgg19.CONV_LAYERS[:8])
    assert json.loads(info["preprocessing"])["channel_order"] == "BGR"
    assert info["source_sha256"] == checkpoints.manifest()["keras_block1-3"]["sha256"]
    loaded = vgg19.load_weights(out, outputs=("conv3_4",))
    assert loaded.preprocessing == vgg19.CAFFE_PREPROCESSING


def test_corrupted_canonical_file_is_refused(real_weights_file, tmp_path):
    out = tmp_path / "w.safetensors"
    vgg19.convert(real_weights_file, out)
    data = bytearray(out.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the tensor data
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(SemfuseError, match="content_sha256"):
        vgg19.load_weights(bad)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(out.read_bytes()[:5000])
    with pytest.raises(SemfuseError, match="unreadable safetensors"):
        vgg19.load_weights(truncated)


def test_known_source_with_wrong_checksum_is_refused(real_weights_file, tmp_path):
    data = bytearray(real_weights_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / real_weights_file.name  # same name as the manifest entry
    bad.write_bytes(bytes(data))
    with pytest.raises(SemfuseError, match="does not match the pinned"):
        vgg19.load_weights(bad)
    with pytest.raises(SemfuseError, match="is not the expected"):
        vgg19.load_weights(real_weights_file, expected_sha256="0" * 64)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty file"),
        (b"this is not a weights file at all", "unknown format"),
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "unreadable HDF5"),
        (b"PK\x03\x04garbage", "refused or unreadable .pth"),
    ],
)
def test_unreadable_files_are_refused_with_one_line(tmp_path, content, match):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(SemfuseError, match=match) as info:
        vgg19.load_weights(path)
    assert "\n" not in str(info.value)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_in_pth_is_refused_without_running(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": _Payload(marker)}, f, protocol=2)
    with pytest.raises(SemfuseError, match="refused or unreadable"):
        vgg19.load_weights(path)
    assert not marker.exists()


def test_pth_loads_without_torch(pth_file, torch_state, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch would now fail
    loaded = vgg19.load_weights(pth_file, architecture=TEST_VGG19)
    expected = vgg19.from_torchvision(torch_state, architecture=TEST_VGG19)
    for layer in ("conv1_1", "conv5_4", "fc6", "fc8"):
        np.testing.assert_array_equal(
            np.asarray(loaded.params[layer]["kernel"]), expected[layer]["kernel"]
        )


def test_wrong_shapes_dtypes_and_keys_name_the_layer():
    rng = np.random.default_rng(0)
    state = {  # an ImageNet-sized conv1_1 in torchvision's layout
        "features.0.weight": rng.normal(size=(64, 3, 3, 3)).astype(np.float32),
        "features.0.bias": np.zeros(64, np.float32),
    }
    assert set(vgg19.from_torchvision(state)) == {"conv1_1"}
    bad = dict(state, **{"features.0.weight": state["features.0.weight"][:32]})
    with pytest.raises(SemfuseError, match=r"conv1_1 kernel has shape \(3, 3, 3, 32\)"):
        vgg19.from_torchvision(bad)
    bad = dict(state, **{"features.0.bias": state["features.0.bias"].astype(np.int32)})
    with pytest.raises(SemfuseError, match="conv1_1 bias has dtype int32"):
        vgg19.from_torchvision(bad)
    bad = dict(state, **{"features.1.running_mean": np.zeros(64, np.float32)})
    with pytest.raises(SemfuseError, match="unexpected keys"):
        vgg19.from_torchvision(bad)
    bad = dict(state, **{"features.0.weight": np.full_like(state["features.0.weight"], np.nan)})
    with pytest.raises(SemfuseError, match="NaN"):
        vgg19.from_torchvision(bad)


def test_weights_path_resolution(real_weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMFUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SEMFUSE_WEIGHTS", raising=False)
    assert vgg19.resolve_path() == vgg19.BUILTIN_FILE  # nothing else: the built-in conv1_1
    builtin = vgg19.load_weights()
    assert builtin.layers == ("conv1_1",)
    monkeypatch.setenv("SEMFUSE_WEIGHTS", str(real_weights_file))
    assert vgg19.resolve_path() == real_weights_file
    with pytest.raises(SemfuseError, match="does not exist"):
        vgg19.resolve_path(tmp_path / "missing.h5")
    monkeypatch.delenv("SEMFUSE_WEIGHTS")
    (tmp_path / "cache").mkdir()
    vgg19.convert(real_weights_file, tmp_path / "cache" / vgg19.DEFAULT_FILENAME)
    assert vgg19.load_weights().layers == vgg19.CONV_LAYERS[:8]


def test_builtin_conv1_1_is_the_imagenet_layer_with_attribution(real_weights):
    """The package's built-in layer equals conv1_1 of the shared Keras release, bit for bit."""
    builtin = vgg19.load_weights(vgg19.BUILTIN_FILE)
    assert builtin.layers == ("conv1_1",)
    assert builtin.preprocessing == vgg19.CAFFE_PREPROCESSING
    for part in ("kernel", "bias"):
        np.testing.assert_array_equal(
            np.asarray(builtin.params["conv1_1"][part]),
            np.asarray(real_weights.params["conv1_1"][part]),
        )
    _, meta = checkpoints.read_safetensors(vgg19.BUILTIN_FILE)
    assert meta["license"] == "CC BY 4.0" and "Simonyan" in meta["attribution"]
    assert meta["source_sha256"] == checkpoints.manifest()["keras_block1-3"]["sha256"]


def _fake_manifest(monkeypatch, entry: dict) -> None:
    real = checkpoints.manifest()
    monkeypatch.setattr(vgg19, "manifest", lambda: {**real, "test_source": entry})


def test_download_verifies_and_converts(real_weights_file, tmp_path, monkeypatch):
    entry = {
        "url": real_weights_file.resolve().as_uri(),
        "filename": "downloaded.h5",
        "sha256": checkpoints.file_digests(real_weights_file)["sha256"],
    }
    _fake_manifest(monkeypatch, entry)
    out = vgg19.download("test_source", tmp_path)
    assert out == tmp_path / vgg19.DEFAULT_FILENAME
    assert (tmp_path / "sources" / "downloaded.h5").is_file()
    assert vgg19.load_weights(out).layers == vgg19.CONV_LAYERS[:8]

    _fake_manifest(monkeypatch, {**entry, "filename": "other.h5", "sha256": "1" * 64})
    with pytest.raises(SemfuseError, match="does not match the pinned"):
        vgg19.download("test_source", tmp_path / "second")
    assert not (tmp_path / "second" / vgg19.DEFAULT_FILENAME).exists()


def test_download_offline_says_which_file_to_place_where(tmp_path, monkeypatch):
    entry = {"url": "http://127.0.0.1:9/vgg19.pth", "filename": "vgg19.pth", "md5": "0" * 32}
    _fake_manifest(monkeypatch, entry)
    with pytest.raises(SemfuseError) as info:
        vgg19.download("test_source", tmp_path)
    message = str(info.value)
    assert "http://127.0.0.1:9/vgg19.pth" in message
    assert str(tmp_path / "sources" / "vgg19.pth") in message
    assert not list((tmp_path / "sources").iterdir())  # no partial file left


def test_download_of_unpinned_source_needs_trust(tmp_path, monkeypatch):
    _fake_manifest(monkeypatch, {"url": "http://127.0.0.1:9/x", "filename": "x.safetensors"})
    with pytest.raises(SemfuseError, match="trust_unpinned"):
        vgg19.download("test_source", tmp_path)


def _tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semfuse_jax.cli.weights", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_weights_tool_info_convert_and_offline_download(real_weights_file, tmp_path):
    info = _tool("info", f"--path={real_weights_file}", "--json")
    assert info.returncode == 0, info.stderr
    record = json.loads(info.stdout)
    assert record["missing"].startswith("conv4_1") and record["format"] == "keras-h5"

    out = tmp_path / "w.safetensors"
    converted = _tool("convert", f"--src={real_weights_file}", f"--out={out}")
    assert converted.returncode == 0 and out.is_file()

    cache = tmp_path / "cache"
    offline = _tool("download", "--source=keras_block1-3", f"--cache_dir={cache}")
    assert offline.returncode == 1
    place = cache / "sources" / real_weights_file.name
    assert offline.stderr.strip().count("\n") == 0 and str(place) in offline.stderr
    place.parent.mkdir(parents=True)
    shutil.copy(real_weights_file, place)
    done = _tool("download", "--source=keras_block1-3", f"--cache_dir={cache}", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["path"] == str(cache / vgg19.DEFAULT_FILENAME)


def test_weights_tool_bad_input_is_one_line(tmp_path):
    for args in (("info", f"--path={tmp_path / 'nope.h5'}"), ("frobnicate",), ("convert",)):
        result = _tool(*args)
        assert result.returncode == 1
        assert ": error: " in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_features_match_between_weights_and_vgg19_apply(real_weights):
    x = jnp.linspace(0, 1, 2 * 10 * 12 * 3).reshape(2, 10, 12, 3)
    via_weights = real_weights.features(x, ("conv2_1",))["conv2_1"]
    by_hand = vgg19.apply(
        real_weights.params, checkpoints.preprocess(x, vgg19.CAFFE_PREPROCESSING), ("conv2_1",)
    )["conv2_1"]
    np.testing.assert_array_equal(np.asarray(via_weights), np.asarray(by_hand))
    bgr = checkpoints.preprocess(x, vgg19.CAFFE_PREPROCESSING)
    np.testing.assert_allclose(bgr[..., 0], x[..., 2] * 255 - 103.939, rtol=1e-6, atol=1e-4)
