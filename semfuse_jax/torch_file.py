"""Read PyTorch ``.pth`` state dicts without torch and without running pickled code.

A ``.pth`` file is a pickle whose tensors point at raw storages, either in a zip archive (torch ≥
1.6: ``<name>/data.pkl`` beside ``<name>/data/<key>``) or, in the legacy format, appended after
the pickle (magic number, protocol version and system info pickles come first; after the object
pickle, a pickle of the storage keys, then for each key an int64 element count and the raw
little-endian data).

The unpickler here resolves only a whitelist of names: ``collections.OrderedDict``, torch's tensor
and parameter rebuild functions and the typed storage classes. Every other global a pickle names
is refused before anything is called, so a malicious file cannot run code; what comes back is
plain Python containers holding numpy arrays.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from semfuse_jax.errors import SemfuseError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),  # widened to float32 when the tensor is built
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class StorageType(NamedTuple):
    """Stands for one of torch's typed storage classes; holds only its element type."""

    name: str
    dtype: np.dtype


class Storage(NamedTuple):
    """A storage the pickle names; its data are read from the archive or the file afterwards."""

    kind: StorageType
    key: str
    numel: int


class LazyTensor(NamedTuple):
    """A tensor whose storage may not be read yet (legacy files store data after the pickle).

    Immutable (a tuple) like the other objects here, so a pickle cannot alter them once built.
    """

    storage: Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialise(self, data: Mapping[str, np.ndarray]) -> np.ndarray:
        values = data.get(self.storage.key)
        if values is None:
            raise pickle.UnpicklingError(f"storage {self.storage.key} has no data")
        count = int(np.prod(self.size)) if self.size else 1
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
        if count and last >= values.size:
            raise pickle.UnpicklingError(f"a tensor reaches outside storage {self.storage.key}")
        view = np.lib.stride_tricks.as_strided(
            values[self.offset :] if count else values[:0],
            shape=self.size,
            strides=tuple(s * values.itemsize for s in self.stride),
            writeable=False,
        )
        array = np.array(view)
        if self.storage.kind.name == "BFloat16Storage":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        return array


def _int_tuple(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and 0 <= v < 1 << 40 for v in value
    ):
        raise pickle.UnpicklingError("malformed tensor size or stride")
    return tuple(value)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> Any:
    if not isinstance(storage, Storage) or not isinstance(offset, int) or offset < 0:
        raise pickle.UnpicklingError("malformed tensor")
    size, stride = _int_tuple(size), _int_tuple(stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError("malformed tensor size or stride")
    return LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    return data


SAFE_GLOBALS: dict[tuple[str, str], Callable[..., Any] | StorageType] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`SAFE_GLOBALS` and torch's storage references."""

    def __init__(self, file: BinaryIO, storages: dict[str, Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return SAFE_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it references {module}.{name}, which is not a tensor, storage or dict; "
                "refusing to load it"
            ) from None

    def persistent_load(self, pid: Any) -> Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:60]}")
        kind, key, _location, numel = pid[1:5]
        if not isinstance(kind, StorageType) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError("malformed storage reference")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = Storage(kind, key, numel)
        return self.storages[key]


def _materialise(obj: Any, data: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, LazyTensor):
        return obj.materialise(data)
    if isinstance(obj, Mapping):
        return type(obj)((k, _materialise(v, data)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_materialise(v, data) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, data) for v in obj)
    return obj


def _read_exact(f: BinaryIO, count: int, what: str) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise pickle.UnpicklingError(f"file ends inside {what}")
    return data


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise pickle.UnpicklingError("zip archive without exactly one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise pickle.UnpicklingError("big-endian tensors are not supported")
        storages: dict[str, Storage] = {}
        data: dict[str, np.ndarray] = {}
        with archive.open(pickles[0]) as f:
            result = RestrictedUnpickler(io.BytesIO(f.read()), storages).load()
        for key, storage in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive")
            size = archive.getinfo(entry).file_size
            nbytes = storage.numel * storage.kind.dtype.itemsize
            if size < nbytes:
                raise pickle.UnpicklingError(f"storage {key} is shorter than its tensor")
            data[key] = np.frombuffer(archive.read(entry)[:nbytes], storage.kind.dtype)
    return result, data


def _load_legacy(path: Path) -> Any:
    file_size = os.path.getsize(path)
    data: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        storages: dict[str, Storage] = {}
        if RestrictedUnpickler(f, storages).load() != LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a torch file (wrong magic number)")
        RestrictedUnpickler(f, storages).load()  # protocol version
        info = RestrictedUnpickler(f, storages).load()
        if isinstance(info, dict) and info.get("little_endian") is False:
            raise pickle.UnpicklingError("big-endian tensors are not supported")
        result = RestrictedUnpickler(f, storages).load()
        keys = RestrictedUnpickler(f, storages).load()
        if not isinstance(keys, list):
            raise pickle.UnpicklingError("malformed storage key list")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise pickle.UnpicklingError(f"unknown storage key {key}")
            (count,) = struct.unpack("<q", _read_exact(f, 8, "a storage header"))
            nbytes = count * storage.kind.dtype.itemsize
            if count < storage.numel or nbytes > file_size:
                raise pickle.UnpicklingError(f"storage {key} has a bad size")
            data[storage.key] = np.frombuffer(
                _read_exact(f, nbytes, "storage data"), storage.kind.dtype
            )
    return result, data


def load(path: str | os.PathLike[str]) -> Any:
    """Load a ``.pth`` file (zip or legacy format) as containers of numpy arrays.

    Raises:
      SemfuseError: one line, for a file that is not a torch file, is truncated, or names
        anything outside the whitelist (nothing it names is ever called).
    """
    path = Path(path)
    try:
        result, data = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
        return _materialise(result, data)
    except SemfuseError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise SemfuseError(f"weights {path}: refused or unreadable .pth file ({exc})") from None
    except (EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise SemfuseError(
            f"weights {path}: unreadable .pth file ({type(exc).__name__}: {exc})"
        ) from None
    except (OSError, MemoryError, RecursionError) as exc:
        raise SemfuseError(f"weights {path}: cannot read .pth file ({exc})") from None


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict as ``{name: array}``; anything but a flat dict of arrays is refused."""
    state = load(path)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        raise SemfuseError(f"weights {path}: not a state dict of tensors")
    return dict(state)
