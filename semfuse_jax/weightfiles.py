"""Weight files shared by every model: the cache folder, safetensors reading, digests, the
manifest of known sources, and the input preprocessing a set of weights expects.

Model-specific import and loading live beside each model: :mod:`semfuse_jax.weights` (VGG19)
and :mod:`semfuse_jax.efficientnet` (EfficientNet-Lite).
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

from semfuse_jax.errors import SemfuseError

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


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            names = list(f.keys())
            return {k: f.get_tensor(k) for k in names}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise SemfuseError(f"weights {path}: unreadable safetensors file ({exc})") from None


def manifest() -> dict[str, dict[str, Any]]:
    """Known weight sources (``weights/manifest.json``): name → url, filename, digests, format."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "manifest.json", here.parent / "weights" / "manifest.json"):
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
