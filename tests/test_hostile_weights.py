"""Weight files built to hurt: each is refused with one line, in memory bounded by its size.

The files are written here byte by byte (``.pth`` pickles by opcode, zip and legacy layouts,
safetensors headers, HDF5 datasets), next to a well-formed file of each kind that must load, so
that the refusals come from the checks and not from a writer that is wrong.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tool_cases

from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import torch_file, vgg19

# ----------------------------------------------------------------------------- .pth by opcode


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(value: int) -> bytes:
    if 0 <= value < 1 << 31:
        return b"J" + struct.pack("<i", value)  # BININT
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1


def _ints(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"  # MARK ... TUPLE


ORDERED_DICT = b"ccollections\nOrderedDict\n)R"  # GLOBAL, EMPTY_TUPLE, REDUCE


def _tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple) -> bytes:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``
    with a persistent ``('storage', FloatStorage, key, 'cpu', numel)``."""
    storage = b"(" + _str("storage") + b"ctorch\nFloatStorage\n" + _str(key) + _str("cpu")
    storage += _int(numel) + b"tQ"  # TUPLE, BINPERSID
    args = storage + _int(offset) + _ints(size) + _ints(stride) + b"\x89" + ORDERED_DICT
    return b"ctorch._utils\n_rebuild_tensor_v2\n(" + args + b"tR"


def _state_pickle(tensors: list[tuple[str, bytes]]) -> bytes:
    """An ordered dict ``{name: tensor}`` (protocol 2)."""
    items = b"".join(_str(name) + tensor for name, tensor in tensors)
    return b"\x80\x02" + ORDERED_DICT + b"(" + items + b"u."  # MARK ... SETITEMS, STOP


def _write_zip(path: Path, pickle_bytes: bytes, storages: dict[str, bytes], **kw) -> Path:
    with zipfile.ZipFile(path, "w", compression=kw.get("compression", zipfile.ZIP_STORED)) as z:
        z.writestr("archive/data.pkl", pickle_bytes)
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data)
    return path


def _write_legacy(path: Path, pickle_bytes: bytes, storages: dict[str, tuple[int, bytes]]) -> Path:
    import pickle

    with open(path, "wb") as f:
        for header in (torch_file.LEGACY_MAGIC, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(pickle_bytes)
        pickle.dump(list(storages), f, protocol=2)
        for count, data in storages.values():
            f.write(struct.pack("<q", count) + data)
    return path


FLOATS = np.arange(12, dtype="<f4")


def _good_tensors() -> bytes:
    return _state_pickle([("w", _tensor("0", 12, 0, (3, 4), (4, 1)))])


def test_the_writers_make_files_that_load(tmp_path):
    """The positive control: the hand-written files load to the right arrays."""
    for path in (
        _write_zip(tmp_path / "z.pth", _good_tensors(), {"0": FLOATS.tobytes()}),
        _write_legacy(tmp_path / "l.pth", _good_tensors(), {"0": (12, FLOATS.tobytes())}),
    ):
        state = torch_file.load_state_dict(path)
        np.testing.assert_array_equal(state["w"], FLOATS.reshape(3, 4))


def _nested(depth: int) -> bytes:
    return b"\x80\x02" + ORDERED_DICT + _str("w") + b"]" * depth + b"a" * (depth - 1) + b"s."


def _many_tensors(count: int) -> bytes:
    return _state_pickle([(f"t{k}", _tensor(str(k), 1, 0, (1,), (1,))) for k in range(count)])


def _pth_cases(d: Path) -> list[tuple[Path, str]]:
    data = FLOATS.tobytes()
    good_zip = _write_zip(d / "good.pth", _good_tensors(), {"0": data}).read_bytes()
    views = _state_pickle([(f"v{k}", _tensor("0", 12, 0, (3, 4), (4, 1))) for k in range(8)])
    many = _many_tensors(torch_file.MAX_TENSORS + 1)
    cases = [
        ("zip_truncated.pth", lambda p: p.write_bytes(good_zip[: len(good_zip) // 2]), "zip"),
        (
            "zip_huge_storage.pth",
            lambda p: _write_zip(
                p, _state_pickle([("w", _tensor("0", 1 << 36, 0, (1 << 36,), (1,)))]), {"0": data}
            ),
            "shorter than its tensor",
        ),
        (
            "zip_negative_size.pth",
            lambda p: _write_zip(
                p, _state_pickle([("w", _tensor("0", 12, 0, (-5,), (1,)))]), {"0": data}
            ),
            "malformed tensor size",
        ),
        (
            "zip_stride_zero.pth",  # 2^39 elements read from one float: a 2 TB allocation
            lambda p: _write_zip(
                p, _state_pickle([("w", _tensor("0", 12, 0, (1 << 39,), (0,)))]), {"0": data}
            ),
            "times the bytes of their storages",
        ),
        (
            "zip_stride_zero_small.pth",  # 24 elements from a storage of 12 (within the budget)
            lambda p: _write_zip(
                p, _state_pickle([("w", _tensor("0", 12, 0, (24,), (0,)))]), {"0": data}
            ),
            "does not fit inside storage",
        ),
        (
            "zip_offset_past_end.pth",
            lambda p: _write_zip(
                p, _state_pickle([("w", _tensor("0", 12, 1000, (4,), (1,)))]), {"0": data}
            ),
            "does not fit inside storage",
        ),
        (
            "zip_shape_vs_bytes.pth",  # a 3x4 tensor over 8 bytes of data
            lambda p: _write_zip(p, _good_tensors(), {"0": data[:8]}),
            "shorter than its tensor",
        ),
        (
            "zip_bomb.pth",  # 64 MB of zeros, compressed to about 64 KB
            lambda p: _write_zip(
                p,
                _state_pickle([("w", _tensor("0", 1 << 24, 0, (1 << 24,), (1,)))]),
                {"0": bytes(1 << 26)},
                compression=zipfile.ZIP_DEFLATED,
            ),
            "compressed",
        ),
        (
            "zip_overlapping_views.pth",  # 8 copies of one storage: past the views budget
            lambda p: _write_zip(p, views, {"0": data}),
            "times the bytes of their storages",
        ),
        ("zip_deep.pth", lambda p: _write_zip(p, _nested(100_000), {}), "nested more than"),
        (
            "zip_memo.pth",  # LONG_BINPUT 10^8: the unpickler would size its memo to 10^8 slots
            lambda p: _write_zip(p, b"\x80\x02N" + b"r" + struct.pack("<I", 10**8) + b".", {}),
            "memo index",
        ),
        (
            "zip_many_tensors.pth",
            lambda p: _write_zip(p, many, {str(k): data[:4] for k in range(10)}),
            "more than",
        ),
        (
            "legacy_truncated.pth",
            lambda p: p.write_bytes(
                _write_legacy(p, _good_tensors(), {"0": (12, data)}).read_bytes()[:-20]
            ),
            "bad size",
        ),
        (
            "legacy_huge_count.pth",
            lambda p: _write_legacy(p, _good_tensors(), {"0": (1 << 60, data)}),
            "bad size",
        ),
        (
            "legacy_negative_count.pth",
            lambda p: _write_legacy(p, _good_tensors(), {"0": (-1, data)}),
            "bad size",
        ),
        (
            "legacy_huge_bytes.pth",  # a BINBYTES claiming 4 GB inside a small file
            lambda p: _write_legacy(p, b"\x80\x03B" + struct.pack("<I", 0xFFFFFFF0) + b"xy.", {}),
            "malformed pickle",
        ),
        ("legacy_deep.pth", lambda p: _write_legacy(p, _nested(100_000), {}), "nested more than"),
        (
            "legacy_many_tensors.pth",
            lambda p: _write_legacy(p, many, {"0": (1, data[:4])}),
            "more than",
        ),
    ]
    return [(_made(d / name, make), needle) for name, make, needle in cases]


def _made(path: Path, make: Callable[[Path], object]) -> Path:
    make(path)
    return path


# ----------------------------------------------------------------------------- safetensors


def _safetensors(path: Path, header: dict | bytes, data: bytes, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _entry(offsets: list[int], shape: list[int]) -> dict:
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


def _safetensors_cases(d: Path) -> list[tuple[Path, str]]:
    data = FLOATS.tobytes()  # 48 bytes
    tiny = {f"t{k}": _entry([0, 0], [0]) for k in range(200_000)}
    cases = [
        (_safetensors(d / "st_truncated.st", {"a": _entry([0, 48], [12])}, data[:20]), "unread"),
        (_safetensors(d / "st_huge_header.st", b"{}", data, length=1 << 40), "header of"),
        (_safetensors(d / "st_header_past_end.st", b"{}", data, length=1000), "truncated"),
        (_safetensors(d / "st_past_end.st", {"a": _entry([0, 4800], [1200])}, data), "unread"),
        (
            _safetensors(
                d / "st_overlap.st",
                {"a": _entry([0, 32], [8]), "b": _entry([16, 48], [8])},
                data,
            ),
            "unread",
        ),
        (_safetensors(d / "st_shape_vs_bytes.st", {"a": _entry([0, 48], [1000])}, data), "unread"),
        (_safetensors(d / "st_many_tensors.st", tiny, b""), "header of"),
        (_safetensors(d / "st_deep.st", b"[" * 50_000 + b"]" * 50_000, b""), "unknown format"),
        (
            _safetensors(
                d / "st_deep_object.st", b'{"a":' + b"[" * 50_000 + b"]" * 50_000 + b"}", b""
            ),
            "unread",
        ),
    ]
    return cases


# ----------------------------------------------------------------------------- HDF5


def _h5(path: Path, kernel: dict, names: int = 1) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1"] * names
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0"]
        group.create_dataset("block1_conv1/kernel:0", **kernel)
        group.create_dataset("block1_conv1/bias:0", data=np.zeros(64, np.float32))
    return path


def _h5_cases(d: Path) -> list[tuple[Path, str]]:
    good = _h5(d / "h5_good.h5", {"data": np.zeros((3, 3, 3, 64), np.float32)})
    assert list(vgg19.read_any(good)[0]) == ["conv1_1"]  # the positive control
    return [
        (_made(d / "h5_truncated.h5", lambda p: p.write_bytes(good.read_bytes()[:1500])), "HDF5"),
        (
            _h5(d / "h5_huge.h5", {"shape": (100_000, 100_000), "dtype": "f4", "chunks": (1, 16)}),
            "expected",
        ),
        (_h5(d / "h5_wrong_shape.h5", {"data": np.zeros((3, 3, 3, 65), np.float32)}), "expected"),
        (
            _h5(d / "h5_unwritten.h5", {"shape": (3, 3, 3, 64), "dtype": "f4", "chunks": True}),
            "stores fewer bytes",
        ),
        (
            _h5(
                d / "h5_compressed.h5",
                {"data": np.zeros((3, 3, 3, 64), np.float32), "compression": "gzip"},
            ),
            "stores fewer bytes",
        ),
        (
            _h5(d / "h5_many_layers.h5", {"data": np.zeros((3, 3, 3, 64), np.float32)}, 2_000),
            "is not VGG19",
        ),
    ]


# ----------------------------------------------------------------------------- the checks


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> list[tuple[Path, str]]:
    d = tmp_path_factory.mktemp("hostile")
    return _pth_cases(d) + _safetensors_cases(d) + _h5_cases(d)


def test_every_hostile_file_is_refused_in_memory_bounded_by_its_size(hostile):
    assert len(hostile) >= 30
    failures = []
    for path, needle in hostile:
        tracemalloc.start()
        try:
            vgg19.read_any(path)
        except SemfuseError as exc:
            message = str(exc)
        else:
            message = "loaded"
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        bound = 8 * path.stat().st_size + (16 << 20)
        if needle not in message or "\n" in message or peak > bound:
            failures.append((path.name, message[:200], peak, bound))
    assert not failures, failures


def test_the_weights_tool_gives_one_line_for_each(hostile, tmp_path):
    results = run_tool_cases("weights", [["info", f"--path={p}"] for p, _ in hostile], tmp_path)
    failures = []
    for (path, needle), result in zip(hostile, results, strict=True):
        lines = [line for line in result["stderr"].splitlines() if line.strip()]
        if result["returncode"] != 1 or len(lines) != 1 or needle not in lines[0]:
            failures.append((path.name, result["returncode"], result["stderr"][-300:]))
    assert not failures, failures
