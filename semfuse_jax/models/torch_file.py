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

A file built to exhaust memory or time is refused too, before anything large is allocated: each
pickle is scanned first (:func:`check_pickle`: no memo slot beyond its own length, no string or
bytes longer than the file), archives must store their members uncompressed (as torch writes
them), a file holds at most :data:`MAX_TENSORS` tensors and containers nest at most
:data:`MAX_DEPTH` deep, every tensor must fit inside its storage's bytes, and all tensors
together may take at most :data:`VIEW_FACTOR` times their storages' bytes.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from semfuse_jax.errors import SemfuseError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_TENSORS = 10_000  # VGG19 has 38 tensors, EfficientNet-Lite2 under 400
MAX_DEPTH = 32  # containers inside containers (a state dict is 1 deep)
MAX_PICKLE_BYTES = 4 << 20  # a state dict's pickle, without its tensor data, is < 100 KB
MAX_PICKLE_OPS = 1_000_000  # opcodes in one pickle (EfficientNet-Lite0's: about 20,000)
VIEW_FACTOR = 4  # the tensors may take this many times their storages' bytes (shared views)
_MEMO_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
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
        if count and (last >= values.size or count > values.size):
            raise pickle.UnpicklingError(
                f"a tensor of {count} elements does not fit inside storage {self.storage.key} "
                f"({values.size} elements)"
            )
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
        self.tensors = 0

    def _counted(self, *args: Any) -> Any:
        self.tensors += 1
        if self.tensors > MAX_TENSORS:
            raise pickle.UnpicklingError(f"more than {MAX_TENSORS} tensors; not a model's weights")
        return _rebuild_tensor(*args)

    def find_class(self, module: str, name: str) -> Any:
        try:
            found = SAFE_GLOBALS[module, name]
            return self._counted if found is _rebuild_tensor else found
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
            if len(self.storages) >= MAX_TENSORS:
                raise pickle.UnpicklingError(f"more than {MAX_TENSORS} storages")
            self.storages[key] = Storage(kind, key, numel)
        return self.storages[key]


def _materialise(
    obj: Any, data: Mapping[str, np.ndarray], budget: list[int], depth: int = 0
) -> Any:
    """``obj`` with its tensors read; ``budget[0]``: the bytes they may still take (views of one
    storage are copies, so many views of one large storage would otherwise multiply it)."""
    if depth > MAX_DEPTH:
        raise pickle.UnpicklingError(f"containers nested more than {MAX_DEPTH} deep")
    if isinstance(obj, LazyTensor):
        budget[0] -= int(np.prod(obj.size, dtype=object)) * obj.storage.kind.dtype.itemsize
        if budget[0] < 0:
            raise pickle.UnpicklingError(
                f"its tensors take more than {VIEW_FACTOR} times the bytes of their storages"
            )
        return obj.materialise(data)
    if isinstance(obj, Mapping):
        return type(obj)((k, _materialise(v, data, budget, depth + 1)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_materialise(v, data, budget, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, data, budget, depth + 1) for v in obj)
    return obj


def check_pickle(file: BinaryIO, limit: int) -> None:
    """Scan one pickle (from ``file``'s position to its STOP) without running it, and refuse
    what would make unpickling allocate more than the file justifies: a memo slot beyond the
    pickle's own opcode count (the unpickler sizes its memo by the largest index) or an opcode
    argument longer than ``limit`` bytes. The position is left after the pickle."""
    ops = 0
    try:
        for opcode, arg, _ in pickletools.genops(file):
            ops += 1
            if ops > MAX_PICKLE_OPS:
                raise pickle.UnpicklingError(f"more than {MAX_PICKLE_OPS} pickle opcodes")
            if opcode.name in _MEMO_OPS and isinstance(arg, int) and arg > ops:
                raise pickle.UnpicklingError(f"memo index {arg} beyond the pickle's {ops} opcodes")
            if isinstance(arg, bytes | str) and len(arg) > limit:
                raise pickle.UnpicklingError("an opcode argument longer than the file")
    except ValueError as exc:  # genops: a bad opcode, or an argument running past the end
        raise pickle.UnpicklingError(f"malformed pickle ({exc})") from None


class BoundedReader(io.RawIOBase):
    """A read-only view of a file that never hands out more bytes than remain in it, so a
    length field in the data cannot make a reader allocate more than the file holds."""

    def __init__(self, file: BinaryIO, size: int) -> None:
        super().__init__()
        self.file, self.size = file, size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.file.seek(offset, whence)

    def read(self, n: int = -1) -> bytes:
        left = max(0, self.size - self.file.tell())
        return self.file.read(left if n is None or n < 0 else min(n, left))

    def readline(self, limit: int = -1) -> bytes:
        left = max(0, self.size - self.file.tell())
        return self.file.readline(left if limit is None or limit < 0 else min(limit, left))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _unpickle(file: BinaryIO, storages: dict[str, Storage], limit: int) -> Any:
    """Scan, then load, the pickle at ``file``'s position (see :func:`check_pickle`)."""
    start = file.tell()
    check_pickle(file, limit)
    file.seek(start)
    return RestrictedUnpickler(file, storages).load()


def _read_exact(f: BinaryIO, count: int, what: str) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise pickle.UnpicklingError(f"file ends inside {what}")
    return data


def _load_zip(path: Path) -> Any:
    size = os.path.getsize(path)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_TENSORS + 16:
            raise pickle.UnpicklingError(f"{len(infos)} archive members; not a model's weights")
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED or info.file_size > size:
                raise pickle.UnpicklingError(
                    f"member {info.filename} is compressed or larger than the file (torch stores "
                    "its members uncompressed)"
                )
        members = {info.filename: info for info in infos}
        pickles = [n for n in members if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise pickle.UnpicklingError("zip archive without exactly one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in members and archive.read(byteorder).strip() not in (b"little", b""):
            raise pickle.UnpicklingError("big-endian tensors are not supported")
        if members[pickles[0]].file_size > MAX_PICKLE_BYTES:
            raise pickle.UnpicklingError(f"a data.pkl of more than {MAX_PICKLE_BYTES} bytes")
        storages: dict[str, Storage] = {}
        data: dict[str, np.ndarray] = {}
        result = _unpickle(io.BytesIO(archive.read(pickles[0])), storages, size)
        for key, storage in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in members:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive")
            nbytes = storage.numel * storage.kind.dtype.itemsize
            if members[entry].file_size < nbytes:
                raise pickle.UnpicklingError(f"storage {key} is shorter than its tensor")
            with archive.open(entry) as f:
                data[key] = np.frombuffer(f.read(nbytes), storage.kind.dtype)
    return result, data


def _load_legacy(path: Path) -> Any:
    file_size = os.path.getsize(path)
    data: dict[str, np.ndarray] = {}
    with open(path, "rb") as raw:
        f = BoundedReader(raw, file_size)
        storages: dict[str, Storage] = {}
        if _unpickle(f, storages, file_size) != LEGACY_MAGIC:
            raise pickle.UnpicklingError("not a torch file (wrong magic number)")
        _unpickle(f, storages, file_size)  # protocol version
        info = _unpickle(f, storages, file_size)
        if isinstance(info, dict) and info.get("little_endian") is False:
            raise pickle.UnpicklingError("big-endian tensors are not supported")
        result = _unpickle(f, storages, file_size)
        keys = _unpickle(f, storages, file_size)
        if not isinstance(keys, list):
            raise pickle.UnpicklingError("malformed storage key list")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise pickle.UnpicklingError(f"unknown storage key {key}")
            (count,) = struct.unpack("<q", _read_exact(f, 8, "a storage header"))
            nbytes = count * storage.kind.dtype.itemsize
            if count < storage.numel or nbytes > file_size - f.tell():
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
        budget = VIEW_FACTOR * sum(values.nbytes for values in data.values())
        return _materialise(result, data, [budget])
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
