"""The torch-free ``.pth`` reader: equal to torch on both file formats, and nothing in a hostile
pickle ever runs."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_torch, torch

from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import torch_file


def _tensors() -> dict:
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    return {
        "transposed": base.t(),  # non-contiguous strides
        "slice": base[1:, 2:5],  # an offset into a shared storage
        "half": torch.randn(3).half(),
        "bfloat16": torch.randn(5).bfloat16(),
        "double": torch.randn(2, 2).double(),
        "long": torch.arange(7),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
    }


@needs_torch
@pytest.mark.parametrize("zip_format", [True, False])
def test_reader_equals_torch_on_both_formats(tmp_path, zip_format):
    tensors = _tensors()
    path = tmp_path / "t.pth"
    torch.save(tensors, path, _use_new_zipfile_serialization=zip_format)
    assert zipfile.is_zipfile(path) == zip_format
    loaded = torch_file.load(path)
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        expected = tensor.float().numpy() if name == "bfloat16" else tensor.numpy()
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)
        assert loaded[name].dtype == expected.dtype, name


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _legacy_with(obj, path: Path) -> None:
    with open(path, "wb") as f:
        for header in (torch_file.LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        pickle.dump(obj, f, protocol=2)
        pickle.dump([], f, protocol=2)


def _zip_with(obj, path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        archive.writestr("archive/version", "3\n")


@pytest.mark.parametrize(
    "writer", [_legacy_with, _zip_with, lambda obj, p: p.write_bytes(pickle.dumps(obj))]
)
def test_hostile_pickles_are_refused_and_nothing_runs(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    writer({"features.0.weight": _Payload(marker)}, path)
    with pytest.raises(SemfuseError, match="refus"):
        torch_file.load(path)
    assert not marker.exists()


def test_whitelisted_objects_cannot_be_altered_by_the_pickle(tmp_path):
    """BUILD on a whitelisted storage type (to change what later files decode as) fails."""
    # GLOBAL torch.FloatStorage, then BUILD with {'dtype': ...}: pickle protocol 2 by hand
    evil = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeX\x02\x00\x00\x00<i8sb."
    path = tmp_path / "alter.pth"
    _zip_bytes = io.BytesIO()
    with zipfile.ZipFile(_zip_bytes, "w") as archive:
        archive.writestr("archive/data.pkl", evil)
    path.write_bytes(_zip_bytes.getvalue())
    with pytest.raises(SemfuseError):
        torch_file.load(path)
    assert torch_file.SAFE_GLOBALS["torch", "FloatStorage"].dtype == np.dtype("<f4")


@needs_torch
def test_truncated_and_foreign_files_give_one_line_errors(tmp_path):
    path = tmp_path / "t.pth"
    torch.save({"w": torch.randn(100)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50])
    with pytest.raises(SemfuseError, match=r"ends inside|bad size"):
        torch_file.load(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(SemfuseError):
        torch_file.load(path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(SemfuseError, match="not a state dict"):
        torch_file.load_state_dict(path)


def test_cli_refuses_a_payload_with_one_line(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "vgg19-evil.pth"
    _legacy_with({"features.0.weight": _Payload(marker)}, path)
    result = subprocess.run(
        [sys.executable, "-m", "semfuse_jax.cli.weights", "info", f"--path={path}"],
        capture_output=True,
        text=True,
        env={**os.environ, "SEMFUSE_WEIGHTS": ""},
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and "refus" in lines[0], result.stderr
    assert not marker.exists()
