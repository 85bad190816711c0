"""Weight files shared by every model: the cache folder, safetensors reading, digests, the
manifest of known sources, and the input preprocessing a set of weights expects.

Model-specific import and loading live beside each model: :mod:`semfuse_jax.models.vgg19` (VGG19)
and :mod:`semfuse_jax.models.efficientnet` (EfficientNet-Lite).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax.errors import SemfuseError, write_error
from semfuse_jax.files import atomic_path

Params = dict[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How an RGB image in ``[0, 1]`` becomes network input: ``(x·scale)[order] − mean) / std``.

    Attributes:
      channel_order: ``"RGB"`` or ``"BGR"`` (the order the first conv's input channels expect).
      scale: multiplier applied to ``[0, 1]`` pixels (1 for torchvision, 255 for Keras/Caffe).
      mean: per-channel mean, in ``channel_order``.
      std: per-channel standard deviation, in ``channel_order``.
    """

    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        try:
            d = json.loads(text)
            prep = cls(
                str(d["channel_order"]),
                float(d["scale"]),
                tuple(float(x) for x in d["mean"]),
                tuple(float(x) for x in d["std"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SemfuseError(f"invalid preprocessing metadata {text!r} ({exc})") from None
        if prep.channel_order not in ("RGB", "BGR") or len(prep.mean) != 3 or len(prep.std) != 3:
            raise SemfuseError(f"invalid preprocessing metadata {text!r}")
        return prep


def preprocess(images: jax.Array, prep: Preprocessing) -> jax.Array:
    """Map RGB images in ``[0, 1]``, ``[..., H, W, 3]``, to the network input the weights expect."""
    x = images * prep.scale
    if prep.channel_order == "BGR":
        x = x[..., ::-1]
    return (x - jnp.asarray(prep.mean, x.dtype)) / jnp.asarray(prep.std, x.dtype)


def cache_dir() -> Path:
    """Per-user cache: ``$SEMFUSE_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/semfuse_jax``."""
    if os.environ.get("SEMFUSE_CACHE"):
        return Path(os.environ["SEMFUSE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "semfuse_jax"


def content_digest(params: Params, order: Sequence[str]) -> str:
    """SHA-256 over layer names, shapes and float32 bytes of ``{layer: {part: array}}``, in the
    layer order ``order``."""
    h = hashlib.sha256()
    for layer in order:
        for part in ("kernel", "bias"):
            if layer in params:
                value = np.ascontiguousarray(params[layer][part], np.float32)
                h.update(f"{layer}.{part}{value.shape}".encode())
                h.update(value.tobytes())
    return h.hexdigest()


# A safetensors header larger than this is refused before it is parsed: it would describe
# thousands of tensors (VGG19 has 38, EfficientNet-Lite2 under 300; their headers are < 40 KB).
MAX_SAFETENSORS_HEADER = 1 << 20


def is_safetensors(head: bytes) -> bool:
    """Whether a file's first (at least 9) bytes open a safetensors file: a little-endian 64-bit
    header length, then the JSON header's ``{``."""
    return len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor of a safetensors file (as numpy) and its metadata.

    The header's size is checked against :data:`MAX_SAFETENSORS_HEADER` and the file's size
    before it is parsed; the reader checks every tensor's shape, type and offsets against the
    header and the data, so nothing larger than the file is allocated.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with open(path, "rb") as f:
            header = int.from_bytes(f.read(8), "little")
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise SemfuseError(f"weights {path}: cannot read ({exc.strerror or exc})") from None
    if header > MAX_SAFETENSORS_HEADER:
        raise SemfuseError(
            f"weights {path}: safetensors header of {header} bytes (the limit is "
            f"{MAX_SAFETENSORS_HEADER}); not a weights file this tool writes or reads"
        )
    if 8 + header > size:
        raise SemfuseError(f"weights {path}: truncated safetensors file (header past the end)")
    try:
        with safe_open(path, framework="numpy") as f:
            names = list(f.keys())
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, MemoryError) as exc:
        raise SemfuseError(f"weights {path}: unreadable safetensors file ({exc})") from None


def write_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> None:
    """Write ``tensors`` and ``metadata`` as one safetensors file, atomically (complete or not
    at all); a failed write (e.g. a full disk) is one :class:`SemfuseError` line."""
    from safetensors.numpy import save

    data = save(dict(tensors), metadata=dict(metadata))
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise write_error(path, exc) from None


def manifest() -> dict[str, dict[str, Any]]:
    """Known weight sources (``weights/manifest.json``): name → url, filename, digests, format."""
    package = Path(__file__).resolve().parent.parent  # semfuse_jax/, installed or in the repo
    for candidate in (package / "manifest.json", package.parent / "weights" / "manifest.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())["sources"]
    raise SemfuseError("weights manifest not found (broken installation)")


def file_digests(path: Path) -> dict[str, str]:
    """SHA-256 and MD5 of a file's bytes."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            sha.update(chunk)
            md5.update(chunk)
    return {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def verify_known_source(path: Path, entry: Mapping[str, Any], digests: Mapping[str, str]) -> None:
    """Compare a file's digests with every digest the manifest pins for it."""
    checks = [
        ("sha256", entry.get("sha256"), digests["sha256"]),
        (
            "sha256 prefix",
            entry.get("sha256_prefix"),
            digests["sha256"][: len(entry.get("sha256_prefix") or "")],
        ),
        ("md5", entry.get("md5"), digests["md5"]),
    ]
    for kind, expected, actual in checks:
        if expected and expected != actual:
            raise SemfuseError(
                f"weights {path}: {kind} {actual} does not match the pinned {expected}; "
                "the file is corrupt or not the published one"
            )
