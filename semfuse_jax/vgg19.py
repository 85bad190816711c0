"""VGG19 (configuration E of Simonyan & Zisserman) as a pure Flax module over an explicit pytree.

Layout: NHWC activations, HWIO conv kernels, ``[in, out]`` dense kernels. ``fc6``'s kernel rows
are in NHWC flatten order, ``(h * 7 + w) * 512 + c``. The classifier sees torchvision's adaptive
7×7 average pool, so any input size classifies. Dropout is omitted: the model is inference-only.

Named outputs (any subset can be requested; only the layers up to the deepest one run):

- ``conv{b}_{i}``: convolution output before the ReLU; ``relu{b}_{i}``: after it.
- ``pool{b}``: output of the 2×2 max-pool closing block ``b``.
- ``fc6``, ``fc7`` (before their ReLUs) and ``logits`` (fc8, 1000 ImageNet classes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax.errors import MissingLayersError, SemfuseError

BLOCKS: tuple[int, ...] = (2, 2, 4, 4, 4)
WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
CONV_LAYERS: tuple[str, ...] = tuple(
    f"conv{b + 1}_{i + 1}" for b, n in enumerate(BLOCKS) for i in range(n)
)
FC_LAYERS: tuple[str, ...] = ("fc6", "fc7", "fc8")
PARAM_LAYERS: tuple[str, ...] = CONV_LAYERS + FC_LAYERS
POOL_SIZE = 7


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

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        outputs: Sequence[str],
        taps: Mapping[str, jax.Array] | None = None,
    ) -> dict[str, jax.Array]:
        """Run the network on a preprocessed batch.

        Args:
          x: ``[B, H, W, 3]`` network input (already preprocessed, see ``weightfiles.preprocess``).
          outputs: names to return (see the module docstring).
          taps: optional ``{name: array}`` added to the named activations as they are computed;
            the gradient of anything with respect to a zero tap is the gradient with respect to
            that activation (how Grad-CAM differentiates the class score).

        Returns:
          ``{name: array}``; conv/relu/pool maps are ``[B, h, w, C]``, fc6/fc7 ``[B, 4096]``,
          logits ``[B, 1000]``.
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
        for b, (n, width) in enumerate(zip(BLOCKS, WIDTHS, strict=True)):
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
            ("fc6", "fc6", 4096),
            ("fc7", "fc7", 4096),
            ("logits", "fc8", 1000),
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
    """Functional forward pass: ``VGG19(dtype).apply({'params': params}, x, outputs, taps)``.

    ``params`` maps layer names to ``{'kernel', 'bias'}``; it may hold only some layers, as long as
    it holds every layer ``outputs`` need. Wrap in ``jax.jit(..., static_argnames=('outputs',
    'dtype'))`` or call inside a jitted function.
    """
    return VGG19(dtype=dtype).apply({"params": params}, x, tuple(outputs), taps)


def init_params(key: jax.Array, layers: Sequence[str] = PARAM_LAYERS) -> dict[str, Any]:
    """Random parameters in the canonical layout (He-normal kernels, zero biases), for tests.

    Args:
      key: PRNG key.
      layers: which parameter layers to create (a partial network is allowed).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    cin = 3
    for b, n in enumerate(BLOCKS):
        for i in range(n):
            shapes[f"conv{b + 1}_{i + 1}"] = (3, 3, cin, WIDTHS[b])
            cin = WIDTHS[b]
    shapes.update(fc6=(POOL_SIZE * POOL_SIZE * 512, 4096), fc7=(4096, 4096), fc8=(4096, 1000))
    params: dict[str, Any] = {}
    for k, layer in zip(jax.random.split(key, len(PARAM_LAYERS)), PARAM_LAYERS, strict=True):
        if layer in layers:
            shape = shapes[layer]
            fan_in = int(np.prod(shape[:-1]))
            kernel = jax.random.normal(k, shape, jnp.float32) * np.sqrt(2.0 / fan_in)
            params[layer] = {"kernel": kernel, "bias": jnp.zeros(shape[-1:], jnp.float32)}
    return params


PARAM_SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    layer: (tuple(p["kernel"].shape), tuple(p["bias"].shape))
    for layer, p in jax.eval_shape(lambda: init_params(jax.random.key(0))).items()
}
