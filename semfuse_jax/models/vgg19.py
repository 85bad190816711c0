"""VGG19 (configuration E of Simonyan & Zisserman) as a pure Flax module over an explicit pytree.

Layout: NHWC activations, HWIO conv kernels, ``[in, out]`` dense kernels. ``fc6``'s kernel rows
are in NHWC flatten order, ``(h * 7 + w) * C + c`` (``C = 512``, the last block's width). The
classifier sees torchvision's adaptive 7×7 average pool, so any input size classifies. Dropout is
omitted: the model is inference-only.

The layer widths are an :class:`Architecture`: ImageNet VGG19's (:data:`STANDARD`) unless a
file declares others (a pruned or a test-sized network; the module reads them from the
parameters' shapes, and every file format is checked against the declared widths).

Named outputs (any subset can be requested; only the layers up to the deepest one run):

- ``conv{b}_{i}``: convolution output before the ReLU; ``relu{b}_{i}``: after it.
- ``pool{b}``: output of the 2×2 max-pool closing block ``b``.
- ``fc6``, ``fc7`` (before their ReLUs) and ``logits`` (fc8, 1000 ImageNet classes).

Its weights (the rest of this module): import from torchvision, timm and Keras files, one
canonical file, loading.

The canonical file is a safetensors file holding ``<layer>.kernel`` / ``<layer>.bias`` in the
layout of the module above (HWIO convs, ``[in, out]`` dense kernels, fc6 rows in NHWC order)
and, in its metadata, the preprocessing the weights were trained with and a SHA-256 of the
tensor contents that is checked on every load.

Imports (all also readable directly by :func:`load_weights`):

- torchvision ``vgg19-*.pth`` state dicts, read without torch by
  :mod:`semfuse_jax.models.torch_file` (a whitelisting reader: no pickled code ever runs): conv
  OIHW → HWIO ``transpose(2, 3, 1, 0)``; fc6 columns go from NCHW flatten order
  ``c·49 + h·7 + w`` to NHWC ``(h·7 + w)·512 + c``.
- timm ``vgg19.tv_in1k`` safetensors (no torch needed): the same weights with fc6/fc7 stored as
  1×1 / 7×7 convolutions under ``pre_logits`` and fc8 under ``head.fc``.
- Keras HDF5 weight files (``vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5``, or any
  file with the Keras 2 ``layer_names``/``weight_names`` layout): kernels are already HWIO and fc1
  rows already NHWC; these weights expect BGR, 0–255, mean-subtracted input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import files
from semfuse_jax.errors import MissingLayersError, SemfuseError
from semfuse_jax.models import torch_file
from semfuse_jax.models.checkpoints import (
    Params,
    Preprocessing,
    cache_dir,
    content_digest,
    file_digests,
    is_safetensors,
    manifest,
    preprocess,
    read_safetensors,
    verify_known_source,
    write_safetensors,
)

BLOCKS: tuple[int, ...] = (2, 2, 4, 4, 4)
CONV_LAYERS: tuple[str, ...] = tuple(
    f"conv{b + 1}_{i + 1}" for b, n in enumerate(BLOCKS) for i in range(n)
)
FC_LAYERS: tuple[str, ...] = ("fc6", "fc7", "fc8")
PARAM_LAYERS: tuple[str, ...] = CONV_LAYERS + FC_LAYERS
POOL_SIZE = 7
CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The widths of a VGG19: one per convolution block, and fc6/fc7's (fc8 has 1000 classes).

    Attributes:
      widths: output channels of every convolution in blocks 1..5.
      hidden: output width of fc6 and fc7.
    """

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    hidden: int = 4096

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        if len(widths) != len(BLOCKS) or not all(
            isinstance(w, int) and w > 0 for w in (*widths, self.hidden)
        ):
            raise SemfuseError(
                f"a VGG19 architecture has {len(BLOCKS)} positive block widths and a positive "
                f"hidden width, not widths={self.widths!r} hidden={self.hidden!r}"
            )
        object.__setattr__(self, "widths", widths)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``{layer: (kernel shape, bias shape)}`` for every parameter layer."""
        shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        cin = 3
        for b, n in enumerate(BLOCKS):
            for i in range(n):
                shapes[f"conv{b + 1}_{i + 1}"] = ((3, 3, cin, self.widths[b]), (self.widths[b],))
                cin = self.widths[b]
        fc_in = (POOL_SIZE * POOL_SIZE * cin, self.hidden, self.hidden)
        for layer, n_in, n_out in zip(
            FC_LAYERS, fc_in, (self.hidden, self.hidden, CLASSES), strict=True
        ):
            shapes[layer] = ((n_in, n_out), (n_out,))
        return shapes

    def to_json(self) -> str:
        return json.dumps({"widths": list(self.widths), "hidden": self.hidden})

    @classmethod
    def from_json(cls, text: str, source: str) -> Architecture:
        """Parse :meth:`to_json`'s output; ``SemfuseError`` naming ``source`` if it is not."""
        try:
            data = json.loads(text)
            return cls(tuple(data["widths"]), data["hidden"])
        except (ValueError, TypeError, KeyError) as exc:
            raise SemfuseError(
                f"weights {source}: unreadable architecture {text!r} ({exc})"
            ) from None

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Architecture:
        """The architecture ``params``' shapes imply; absent layers keep :data:`STANDARD`'s."""
        widths = list(STANDARD.widths)
        for b in range(len(BLOCKS)):
            if f"conv{b + 1}_1" in params:
                widths[b] = int(np.shape(params[f"conv{b + 1}_1"]["kernel"])[-1])
        hidden = int(np.shape(params["fc6"]["kernel"])[-1]) if "fc6" in params else STANDARD.hidden
        return cls(tuple(widths), hidden)


STANDARD = Architecture()


def _output_plan() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Every output name in network order, with the parameter layers needed to compute it."""
    plan: list[tuple[str, tuple[str, ...]]] = []
    needed: list[str] = []
    for b, n in enumerate(BLOCKS):
        for i in range(n):
            needed.append(f"conv{b + 1}_{i + 1}")
            plan.append((f"conv{b + 1}_{i + 1}", tuple(needed)))
            plan.append((f"relu{b + 1}_{i + 1}", tuple(needed)))
        plan.append((f"pool{b + 1}", tuple(needed)))
    for name, layer in (("fc6", "fc6"), ("fc7", "fc7"), ("logits", "fc8")):
        needed.append(layer)
        plan.append((name, tuple(needed)))
    return tuple(plan)


OUTPUT_PLAN = _output_plan()
OUTPUTS: tuple[str, ...] = tuple(name for name, _ in OUTPUT_PLAN)
_DEPTH = {name: k for k, (name, _) in enumerate(OUTPUT_PLAN)}


def check_outputs(outputs: Sequence[str]) -> tuple[str, ...]:
    """Validate requested output names; returns them as a tuple (hashable, for ``jit``)."""
    outputs = tuple(outputs)
    if not outputs:
        raise SemfuseError("no VGG19 outputs requested")
    unknown = [o for o in outputs if o not in _DEPTH]
    if unknown:
        raise SemfuseError(
            f"unknown VGG19 output(s) {', '.join(unknown)}; known: conv1_1..conv5_4, "
            "relu1_1..relu5_4, pool1..pool5, fc6, fc7, logits"
        )
    return outputs


def required_layers(outputs: Sequence[str]) -> tuple[str, ...]:
    """Parameter layers (``conv1_1`` .. ``fc8``) needed to compute ``outputs``."""
    deepest = max(_DEPTH[o] for o in check_outputs(outputs))
    return OUTPUT_PLAN[deepest][1]


def check_params(params: dict[str, Any], outputs: Sequence[str], source: str = "") -> None:
    """Raise :class:`MissingLayersError` naming each layer ``outputs`` need but ``params`` lack."""
    missing = [layer for layer in required_layers(outputs) if layer not in params]
    if missing:
        raise MissingLayersError(missing, source or "in use", ", ".join(outputs))


def adaptive_avg_pool_matrix(size: int, out: int = POOL_SIZE) -> np.ndarray:
    """``[out, size]`` averaging matrix with torch ``AdaptiveAvgPool`` bins.

    Bin ``i`` averages input rows ``floor(i * size / out)`` .. ``ceil((i + 1) * size / out) - 1``.
    """
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class VGG19(nn.Module):
    """VGG19 returning a dict of named activations.

    Attributes:
      dtype: computation dtype; None (the default) follows the inputs and parameters (float32
        normally, float64 for float64 inputs and parameters), ``bfloat16`` trades accuracy for
        speed on accelerators.
    """

    dtype: Any = None
    architecture: Architecture = STANDARD

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        outputs: Sequence[str],
        taps: Mapping[str, jax.Array] | None = None,
    ) -> dict[str, jax.Array]:
        """Run the network on a preprocessed batch.

        Args:
          x: ``[B, H, W, 3]`` network input (already preprocessed, see ``checkpoints.preprocess``).
          outputs: names to return (see the module docstring).
          taps: optional ``{name: array}`` added to the named activations as they are computed;
            the gradient of anything with respect to a zero tap is the gradient with respect to
            that activation (how Grad-CAM differentiates the class score).

        Returns:
          ``{name: array}``; conv/relu/pool maps are ``[B, h, w, C]``, fc6/fc7 ``[B, 4096]``,
          logits ``[B, 1000]``; the widths are the parameters' (see :class:`Architecture`).
        """
        wanted = set(check_outputs(outputs))
        taps = taps or {}
        result: dict[str, jax.Array] = {}

        def mark(name: str, value: jax.Array) -> jax.Array:
            if name in taps:
                value = value + taps[name]
            if name in wanted:
                result[name] = value
            return value

        def done() -> bool:
            return len(result) == len(wanted)

        if self.dtype is not None:
            x = x.astype(self.dtype)
        for b, (n, width) in enumerate(zip(BLOCKS, self.architecture.widths, strict=True)):
            for i in range(n):
                name = f"{b + 1}_{i + 1}"
                conv = nn.Conv(
                    width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"conv{name}"
                )
                x = mark(f"conv{name}", conv(x))
                if done():
                    return result
                x = mark(f"relu{name}", nn.relu(x))
                if done():
                    return result
            x = mark(f"pool{b + 1}", nn.max_pool(x, (2, 2), strides=(2, 2)))
            if done():
                return result

        ph = jnp.asarray(adaptive_avg_pool_matrix(x.shape[1]), x.dtype)
        pw = jnp.asarray(adaptive_avg_pool_matrix(x.shape[2]), x.dtype)
        x = jnp.einsum("ih,bhwc,jw->bijc", ph, x, pw).reshape(x.shape[0], -1)
        for name, layer, width in (
            ("fc6", "fc6", self.architecture.hidden),
            ("fc7", "fc7", self.architecture.hidden),
            ("logits", "fc8", CLASSES),
        ):
            if name != "fc6":
                x = nn.relu(x)
            x = mark(name, nn.Dense(width, dtype=self.dtype, name=layer)(x))
            if done():
                break
        return result


def apply(
    params: Mapping[str, Any],
    x: jax.Array,
    outputs: Sequence[str],
    taps: Mapping[str, jax.Array] | None = None,
    dtype: Any = None,
) -> dict[str, jax.Array]:
    """Functional forward pass: ``VGG19(dtype, architecture).apply({'params': params}, x, …)``.

    ``params`` maps layer names to ``{'kernel', 'bias'}``; it may hold only some layers, as long as
    it holds every layer ``outputs`` need. The widths are read from the parameters' (static)
    shapes. Wrap in ``jax.jit(..., static_argnames=('outputs', 'dtype'))`` or call inside a jitted
    function.
    """
    module = VGG19(dtype=dtype, architecture=Architecture.of(params))
    return module.apply({"params": params}, x, tuple(outputs), taps)


def init_params(
    key: jax.Array, layers: Sequence[str] = PARAM_LAYERS, architecture: Architecture = STANDARD
) -> dict[str, Any]:
    """Random parameters in the canonical layout (He-normal kernels, zero biases), for tests.

    Args:
      key: PRNG key.
      layers: which parameter layers to create (a partial network is allowed).
      architecture: the widths (ImageNet VGG19's by default).
    """
    shapes = architecture.shapes()
    params: dict[str, Any] = {}
    for k, layer in zip(jax.random.split(key, len(PARAM_LAYERS)), PARAM_LAYERS, strict=True):
        if layer in layers:
            shape = shapes[layer][0]
            fan_in = int(np.prod(shape[:-1]))
            kernel = jax.random.normal(k, shape, jnp.float32) * np.sqrt(2.0 / fan_in)
            params[layer] = {"kernel": kernel, "bias": jnp.zeros(shape[-1:], jnp.float32)}
    return params


FORMAT = "semfuse_jax.vgg19/1"
DEFAULT_FILENAME = "safetensors"
TORCHVISION_FEATURE_INDEX = dict(
    zip(CONV_LAYERS, (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34), strict=True)
)
TORCHVISION_CLASSIFIER = {"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
TIMM_CLASSIFIER = {"fc6": "pre_logits.fc1", "fc7": "pre_logits.fc2", "fc8": "head.fc"}
KERAS_NAMES = {
    **{f"block{c[4]}_conv{c[6]}": c for c in CONV_LAYERS},
    "fc1": "fc6",
    "fc2": "fc7",
    "predictions": "fc8",
}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# The package's built-in weights: the ImageNet VGG19 conv1_1 layer (all FM0, FM1 and FM4 need),
# from the Keras release of the original weights; rebuilt by weights/build_builtin.py.
BUILTIN_FILE = Path(__file__).resolve().parent.parent / "data" / "vgg19_conv1_1.safetensors"
BUILTIN_ATTRIBUTION = (
    "VGG19 ImageNet weights by K. Simonyan and A. Zisserman (Visual Geometry Group, University "
    "of Oxford), 'Very Deep Convolutional Networks for Large-Scale Image Recognition', ICLR "
    "2015, released under CC BY 4.0; this file holds their conv1_1 layer only, taken from the "
    "Keras Applications release of those weights"
)


TORCHVISION_PREPROCESSING = Preprocessing("RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE_PREPROCESSING = Preprocessing("BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))


@flax.struct.dataclass
class Weights:
    """VGG19 parameters with the preprocessing they need; a pytree (``params`` are its leaves).

    Attributes:
      params: ``{layer: {'kernel': array, 'bias': array}}`` for the layers present.
      preprocessing: see :class:`Preprocessing`.
      source: where the weights came from (for messages and reports).
    """

    params: Params
    preprocessing: Preprocessing = flax.struct.field(pytree_node=False)
    source: str = flax.struct.field(pytree_node=False, default="")

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer for layer in PARAM_LAYERS if layer in self.params)

    def require(self, outputs: tuple[str, ...]) -> None:
        """Raise ``MissingLayersError`` unless these weights can compute ``outputs``."""
        check_params(self.params, outputs, self.source)

    def features(
        self,
        images: jax.Array,
        outputs: tuple[str, ...],
        taps: Mapping[str, jax.Array] | None = None,
        dtype: Any = None,
    ) -> dict[str, jax.Array]:
        """Named VGG19 activations of RGB images in ``[0, 1]``, ``[B, H, W, 3]``.

        A grey batch ``[B, H, W, 1]`` is replicated to three channels first.
        """
        if images.shape[-1] == 1:
            images = jnp.repeat(images, 3, axis=-1)
        return apply(self.params, preprocess(images, self.preprocessing), outputs, taps, dtype)


# ----------------------------------------------------------------------------- validation


def validate_params(
    params: Mapping[str, Mapping[str, Any]], source: str, architecture: Architecture = STANDARD
) -> Params:
    """Check names, shapes and dtypes against a VGG19 of ``architecture``; return float32 numpy
    params.

    Raises:
      SemfuseError: naming the first offending layer, or if no layer is present.
    """
    shapes = architecture.shapes()
    out: Params = {}
    for layer, tensors in params.items():
        if layer not in shapes:
            raise SemfuseError(f"weights {source}: unknown layer {layer!r}")
        for part, shape in zip(("kernel", "bias"), shapes[layer], strict=True):
            if part not in tensors:
                raise SemfuseError(f"weights {source}: layer {layer} has no {part}")
            value = np.asarray(tensors[part])
            if value.dtype.kind != "f":
                raise SemfuseError(
                    f"weights {source}: layer {layer} {part} has dtype {value.dtype}, not float"
                )
            if value.shape != shape:
                raise SemfuseError(
                    f"weights {source}: layer {layer} {part} has shape {value.shape}, "
                    f"expected {shape}"
                )
            if not np.all(np.isfinite(value)):
                raise SemfuseError(f"weights {source}: layer {layer} {part} holds NaN or Inf")
        out[layer] = {p: np.ascontiguousarray(tensors[p], np.float32) for p in ("kernel", "bias")}
    if not out:
        raise SemfuseError(f"weights {source}: no VGG19 layer found")
    return out


# ----------------------------------------------------------------------------- converters


def from_torchvision(
    state: Mapping[str, np.ndarray],
    source: str = "torchvision",
    architecture: Architecture = STANDARD,
) -> Params:
    """Convert a torchvision-layout VGG19 state dict (numpy values) to canonical params.

    Layers may be missing (partial networks are allowed); unknown keys are refused; every shape
    must be ``architecture``'s.
    """
    last = architecture.widths[-1]
    state = dict(state)
    params: Params = {}
    for layer, index in TORCHVISION_FEATURE_INDEX.items():
        w, b = (
            state.pop(f"features.{index}.weight", None),
            state.pop(f"features.{index}.bias", None),
        )
        if w is not None or b is not None:
            w = np.asarray(w)
            if w.ndim != 4:
                raise SemfuseError(f"weights {source}: layer {layer} weight has shape {w.shape}")
            params[layer] = {"kernel": w.transpose(2, 3, 1, 0), "bias": b}
    for layer, key in TORCHVISION_CLASSIFIER.items():
        w, b = state.pop(f"{key}.weight", None), state.pop(f"{key}.bias", None)
        if w is None and b is None:
            continue
        w = np.asarray(w)
        if w.ndim == 4:  # timm stores fc6 as a 7x7 conv and fc7 as a 1x1 conv: [out, in, kh, kw]
            w = w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        elif layer == "fc6" and w.ndim == 2 and w.shape[1] == last * POOL_SIZE**2:
            w = w.reshape(-1, last, POOL_SIZE, POOL_SIZE).transpose(0, 2, 3, 1)
            w = w.reshape(w.shape[0], -1)
        params[layer] = {"kernel": w.T, "bias": b}
    if state:
        extra = ", ".join(sorted(state)[:5])
        raise SemfuseError(
            f"weights {source}: unexpected keys ({extra}, ...); is this VGG19 without batch norm?"
        )
    return validate_params(params, source, architecture)


def from_timm(
    state: Mapping[str, np.ndarray], source: str = "timm", architecture: Architecture = STANDARD
) -> Params:
    """Convert a timm ``tv_in1k`` state dict (numpy values) to canonical params."""
    renamed = {}
    for key, value in state.items():
        for layer, timm_key in TIMM_CLASSIFIER.items():
            if key.startswith(timm_key + "."):
                key = TORCHVISION_CLASSIFIER[layer] + key[len(timm_key) :]
        renamed[key] = value
    return from_torchvision(renamed, source, architecture)


def read_keras_h5(path: Path, architecture: Architecture = STANDARD) -> Params:
    """Read a Keras 2 HDF5 weights file (``layer_names`` / ``weight_names`` layout).

    Every dataset's shape is checked against the VGG19 layer it names, and its stored bytes
    against that shape, before it is read: a header claiming huge (or compressed, or unwritten)
    data is refused without allocating it.
    """
    import h5py

    shapes = architecture.shapes()
    params: Params = {}
    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            if "layer_names" not in root.attrs:
                raise SemfuseError(f"weights {path}: HDF5 file without Keras 'layer_names'")
            layer_names = root.attrs["layer_names"]
            if len(layer_names) > 4 * len(KERAS_NAMES):  # VGG19's layers, pools and input
                raise SemfuseError(f"weights {path}: {len(layer_names)} layers is not VGG19")
            for raw in layer_names:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                group = root[name]
                names = [
                    n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]
                ]
                if not names:
                    continue
                if name not in KERAS_NAMES:
                    raise SemfuseError(f"weights {path}: unexpected Keras layer {name!r}")
                layer = KERAS_NAMES[name]
                datasets = [group[n] for n in names]
                if len(datasets) != 2 or sorted(d.ndim > 1 for d in datasets) != [False, True]:
                    raise SemfuseError(f"weights {path}: Keras layer {name} is not kernel + bias")
                kernel, bias = sorted(datasets, key=lambda d: -d.ndim)
                for part, dataset, shape in zip(
                    ("kernel", "bias"), (kernel, bias), shapes[layer], strict=True
                ):
                    if dataset.shape != shape:
                        raise SemfuseError(
                            f"weights {path}: Keras layer {name} {part} has shape "
                            f"{dataset.shape}, expected {shape} (larger than VGG19's layer or "
                            "not VGG19)"
                        )
                    if dataset.id.get_storage_size() < dataset.size * dataset.dtype.itemsize:
                        raise SemfuseError(
                            f"weights {path}: Keras layer {name} {part} stores fewer bytes than "
                            "its shape needs (compressed, unwritten or truncated data)"
                        )
                params[layer] = {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise SemfuseError(f"weights {path}: unreadable HDF5 file ({exc})") from None
    return validate_params(params, str(path), architecture)


# ----------------------------------------------------------------------------- canonical file


def save_canonical(
    path: str | os.PathLike[str],
    params: Params,
    preprocessing: Preprocessing,
    source: str,
    source_sha256: str = "",
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write params + preprocessing + digests (+ ``extra`` metadata) as one safetensors file,
    atomically. The widths are the params' (recorded in the metadata when not
    :data:`STANDARD`'s)."""
    architecture = Architecture.of(params)
    params = validate_params(params, source, architecture)
    tensors = {f"{layer}.{part}": v for layer, p in params.items() for part, v in p.items()}
    metadata = {
        "format": FORMAT,
        "preprocessing": preprocessing.to_json(),
        "layers": ",".join(layer for layer in PARAM_LAYERS if layer in params),
        "content_sha256": content_digest(params, PARAM_LAYERS),
        "source": source,
        "source_sha256": source_sha256,
        **({} if architecture == STANDARD else {"architecture": architecture.to_json()}),
        **(extra or {}),
    }
    write_safetensors(path, tensors, metadata)


# ----------------------------------------------------------------------------- loading


def resolve_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The weights file to use: ``path``, else ``$SEMFUSE_WEIGHTS``, else the cache's
    ``safetensors``, else the built-in ``conv1_1`` layer (:data:`BUILTIN_FILE`)."""
    if path:
        chosen, how = Path(path), "given"
    elif os.environ.get("SEMFUSE_WEIGHTS"):
        chosen, how = Path(os.environ["SEMFUSE_WEIGHTS"]), "from $SEMFUSE_WEIGHTS"
    else:
        chosen, how = cache_dir() / DEFAULT_FILENAME, "default"
        if not chosen.is_file():
            chosen, how = BUILTIN_FILE, "built in"
            if not chosen.is_file():
                raise SemfuseError(f"broken installation: {chosen} is missing")
    if not chosen.is_file():
        raise SemfuseError(f"weights file {chosen} ({how}) does not exist")
    return chosen


def read_any(
    path: Path, expected_sha256: str | None = None, architecture: Architecture | None = None
) -> tuple[Params, Preprocessing, dict[str, str]]:
    """Read and convert any supported weights file.

    The format is detected from the content. Files whose name matches a manifest entry are checked
    against its pinned digests; canonical files against their embedded content digest. Shapes are
    checked against ``architecture``: a canonical file's own (which a given one must equal), else
    :data:`STANDARD` unless one is given.

    Returns:
      ``(params, preprocessing, info)`` with ``info`` holding ``format``, ``source`` and
      ``source_sha256``.
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise SemfuseError(f"weights {path}: empty file")
    digests = file_digests(path)
    if expected_sha256 and digests["sha256"] != expected_sha256.lower():
        raise SemfuseError(
            f"weights {path}: sha256 {digests['sha256']} is not the expected {expected_sha256}"
        )
    for entry in manifest().values():
        if entry.get("filename") == path.name:
            verify_known_source(path, entry, digests)
    info = {"source": path.name, "source_sha256": digests["sha256"]}
    declared = architecture or STANDARD
    if head.startswith(_HDF5_MAGIC):
        return read_keras_h5(path, declared), CAFFE_PREPROCESSING, {**info, "format": "keras-h5"}
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return (
            from_torchvision(torch_file.load_state_dict(path), str(path), declared),
            TORCHVISION_PREPROCESSING,
            {
                **info,
                "format": "torchvision-pth",
            },
        )
    if is_safetensors(head):
        tensors, meta = read_safetensors(path)
        if meta.get("format") == FORMAT:
            own = (
                Architecture.from_json(meta["architecture"], str(path))
                if "architecture" in meta
                else STANDARD
            )
            if architecture is not None and architecture != own:
                raise SemfuseError(
                    f"weights {path}: the file holds a VGG19 of {own}, not the given {architecture}"
                )
            params: Params = {}
            for key, value in tensors.items():
                layer, _, part = key.partition(".")
                params.setdefault(layer, {})[part] = value
            params = validate_params(params, str(path), own)
            if content_digest(params, PARAM_LAYERS) != meta.get("content_sha256"):
                raise SemfuseError(
                    f"weights {path}: tensor contents do not match the file's content_sha256; "
                    "the file is corrupt"
                )
            info = {
                "source": meta.get("source", path.name),
                "source_sha256": meta.get("source_sha256", ""),
            }
            return (
                params,
                Preprocessing.from_json(meta.get("preprocessing", "")),
                {
                    **info,
                    "format": FORMAT,
                },
            )
        return (
            from_timm(tensors, str(path), declared),
            TORCHVISION_PREPROCESSING,
            {**info, "format": "timm-safetensors"},
        )
    raise SemfuseError(
        f"weights {path}: unknown format (expected .safetensors, Keras .h5 or torchvision .pth)"
    )


def load_weights(
    path: str | os.PathLike[str] | None = None,
    outputs: tuple[str, ...] | None = None,
    expected_sha256: str | None = None,
    architecture: Architecture | None = None,
) -> Weights:
    """Load VGG19 weights (any supported format) as device arrays.

    Args:
      path: weights file; ``None`` uses ``$SEMFUSE_WEIGHTS`` or the per-user cache.
      outputs: if given, fail now, with the missing layers named, unless these outputs can be
        computed.
      expected_sha256: if given, the file's SHA-256 must match.
      architecture: the widths a torchvision, timm or Keras file holds, if not ImageNet
        VGG19's (a canonical file records its own; see :func:`read_any`).
    """
    resolved = resolve_path(path)
    params, prep, _ = read_any(resolved, expected_sha256, architecture)
    weights = Weights(
        params=jax.tree.map(jnp.asarray, params), preprocessing=prep, source=str(resolved)
    )
    if outputs is not None:
        weights.require(outputs)
    return weights


def convert(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    overwrite: bool = False,
    architecture: Architecture | None = None,
) -> dict[str, str]:
    """Convert any supported weights file to the canonical safetensors file; returns its info.

    ``out`` must not be ``src``, and must not exist unless ``overwrite``; ``architecture`` as in
    :func:`read_any`.
    """
    src_path = Path(src)
    if not src_path.is_file():
        raise SemfuseError(f"weights file {src_path} does not exist")
    files.check_outputs([out], [src_path], overwrite)
    params, prep, info = read_any(src_path, architecture=architecture)
    save_canonical(out, params, prep, info["source"], info["source_sha256"])
    return describe(Path(out))


def describe(path: str | os.PathLike[str]) -> dict[str, str]:
    """What a weights file holds: format, layers, preprocessing, digests."""
    path = Path(path)
    if not path.is_file():
        raise SemfuseError(f"weights file {path} does not exist")
    params, prep, info = read_any(path)
    return {
        "path": str(path),
        "format": info["format"],
        "layers": ",".join(layer for layer in PARAM_LAYERS if layer in params),
        "missing": ",".join(layer for layer in PARAM_LAYERS if layer not in params),
        "preprocessing": prep.to_json(),
        "architecture": Architecture.of(params).to_json(),
        "file_sha256": file_digests(path)["sha256"],
        "content_sha256": content_digest(params, PARAM_LAYERS),
        "source": info["source"],
        "source_sha256": info["source_sha256"],
    }


def download(name: str, dest_dir: Path | None = None, trust_unpinned: bool = False) -> Path:
    """Fetch a known source into ``<cache>/sources``, verify it, convert to the canonical file.

    A source file already present in ``<cache>/sources`` is used without downloading (the way to
    install weights on an offline machine). Returns the canonical file's path.
    """
    sources = manifest()
    if name not in sources:
        raise SemfuseError(f"unknown weights source {name!r}; known: {', '.join(sorted(sources))}")
    entry = sources[name]
    dest_dir = dest_dir or cache_dir()
    raw = dest_dir / "sources" / entry["filename"]
    if not raw.is_file():
        if not entry.get("url"):
            raise SemfuseError(
                f"source {name} has no public URL; place {entry['filename']} at {raw} and run again"
            )
        if (
            not (entry.get("sha256") or entry.get("sha256_prefix") or entry.get("md5"))
            and not trust_unpinned
        ):
            raise SemfuseError(
                f"source {name} has no pinned digest; pass --trust_unpinned to accept it unverified"
            )
        raw.parent.mkdir(parents=True, exist_ok=True)
        try:
            with (
                urllib.request.urlopen(entry["url"], timeout=60) as response,
                files.atomic_path(raw) as tmp,
                open(tmp, "wb") as f,
            ):
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    f.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SemfuseError(
                f"cannot download {name} from {entry['url']} ({reason}); on a machine with "
                f"internet fetch that URL and place the file at {raw}, then run "
                f"`semfuse-weights download --source={name}` again"
            ) from None
    digests = file_digests(raw)
    verify_known_source(raw, entry, digests)
    out = dest_dir / DEFAULT_FILENAME
    params, prep, _ = read_any(raw)
    save_canonical(out, params, prep, f"{name}:{entry['filename']}", digests["sha256"])
    return out
