"""The objectives of the image optimisation: what a set's pixels are optimised to match.

Per set, the feature loss is ``L(x) = Σ_l ||G_l − N_l(x)||²`` (plain sum of squares over the
layer set ``l``). An objective is a pytree with ``gradient(x)`` and ``batch_axes()``
(:class:`Objective`); three are here, and one gradient path gives one result:

- :class:`NetworkObjective`: autodiff through the network (any loss layers).
- :class:`QuadraticObjective`: when the only loss layer is ``conv1_1`` (before its ReLU, the
  paper's layer), the network is affine in the pixels, ``N(x) = A·x + d``, so ``L`` is an exact
  quadratic and ``∇L = 2·AᵀA·x − b`` with ``b = 2·Aᵀ(G − d)``. ``AᵀA`` is a 5×5 stencil
  (C → C channels, C = 1 for a grey plane, 3 for colour) except on the outermost ring of pixels,
  where the zero padding of the convolution removes the outputs beyond the border: those terms
  are 1-D 5-tap stencils along each edge plus one term per corner, subtracted exactly. ``b``
  comes from one autodiff pass at ``x = 0`` (``−∇L(0)``). It follows the same Adam trajectory as
  the network path (to float rounding) at a fraction of the cost per step.
- :class:`EdgeObjective`: FM4's gradient-domain refinement.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import metrics
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models.vgg19 import Weights

Targets = Mapping[str, jax.Array]
GRADIENTS: tuple[str, ...] = ("auto", "quadratic", "network")
LINEAR_LAYERS: tuple[str, ...] = ("conv1_1",)


class Objective(Protocol):
    """What the solver needs of an objective: a pytree of one set's (or, with the axes of
    :meth:`batch_axes`, a batch's) data."""

    def gradient(self, image: jax.Array) -> jax.Array:
        """``∇L`` at one image ``[H, W, C]``."""
        ...

    def batch_axes(self) -> Any:
        """The same pytree with each leaf's ``vmap`` axis (0: per set, None: shared)."""
        ...


def feature_loss(
    weights: Weights, image: jax.Array, targets: Targets, dtype: Any = None
) -> jax.Array:
    """``Σ_l ||targets[l] − N_l(image)||²`` for one image ``[H, W, C]``; targets ``[h, w, c]``.

    ``dtype`` is the network's compute dtype (None: float32); the loss is summed in float32.
    """
    features = weights.features(image[None], tuple(targets), dtype=dtype)
    return sum(
        jnp.sum(jnp.square(targets[k] - features[k][0].astype(jnp.float32))) for k in targets
    )


@jax.jit
def batch_loss(weights: Weights, images: jax.Array, targets: Targets) -> jax.Array:
    """:func:`feature_loss` of each set: ``[B, H, W, C]`` → ``[B]``."""
    return jax.vmap(feature_loss, in_axes=(None, 0, 0))(weights, images, targets)


@flax.struct.dataclass
class NetworkObjective:
    """The loss through the network, differentiated by autodiff (any loss layers).

    Attributes:
      weights: VGG19 weights holding the loss layers (shared by the sets of a batch).
      targets: ``{layer: [h, w, c]}`` for one set, ``[B, h, w, c]`` for a batch.
      dtype: the network's compute dtype inside the steps (None: float32).
    """

    weights: Weights
    targets: dict[str, jax.Array]
    dtype: Any = flax.struct.field(pytree_node=False, default=None)

    def gradient(self, image: jax.Array) -> jax.Array:
        """``∇L`` at one image ``[H, W, C]``."""
        return jax.grad(feature_loss, argnums=1)(self.weights, image, self.targets, self.dtype)

    def batch_axes(self) -> NetworkObjective:
        """``vmap`` axes: targets per set, weights shared."""
        return NetworkObjective(weights=None, targets=0, dtype=self.dtype)


@flax.struct.dataclass
class QuadraticObjective:
    """The exact quadratic form of the ``conv1_1`` loss (see the module docstring).

    Attributes:
      stencil: ``[5, 5, C, C]`` the interior stencil of ``AᵀA`` (input channel, output channel).
      edges: ``[4, 5, C, C]`` the 1-D stencils removed along the top, bottom, left, right edge.
      corners: ``[4, C, C]`` the terms added back at the top-left, top-right, bottom-left and
        bottom-right pixel (counted by two edges).
      rhs: ``b = 2·Aᵀ(G − d)``: ``[H, W, C]`` for one set, ``[B, H, W, C]`` for a batch.
      offset: ``||G − d||²``, the loss at ``x = 0``: ``[]`` for one set, ``[B]`` for a batch.
    """

    stencil: jax.Array
    edges: jax.Array
    corners: jax.Array
    rhs: jax.Array
    offset: jax.Array

    def loss(self, image: jax.Array) -> jax.Array:
        """``L(x) = xᵀAᵀA x − xᵀb + ||G − d||²`` at one image ``[H, W, C]`` (float32; for
        checks: the driver reports losses through the network)."""
        hx = self.gradient(image) + self.rhs  # 2·AᵀA·x
        return 0.5 * jnp.vdot(image, hx) - jnp.vdot(image, self.rhs) + self.offset

    def gradient(self, image: jax.Array) -> jax.Array:
        """``∇L = 2·AᵀA·x − b`` at one image ``[H, W, C]``."""
        out = _stencil_2d(image, self.stencil)
        top, bottom, left, right = self.edges
        out = out.at[0].add(-_stencil_1d(image[0], top))
        out = out.at[-1].add(-_stencil_1d(image[-1], bottom))
        out = out.at[:, 0].add(-_stencil_1d(image[:, 0], left))
        out = out.at[:, -1].add(-_stencil_1d(image[:, -1], right))
        for (row, col), term in zip(
            ((0, 0), (0, -1), (-1, 0), (-1, -1)), self.corners, strict=True
        ):
            out = out.at[row, col].add(image[row, col] @ term)
        return 2.0 * out - self.rhs

    def batch_axes(self) -> QuadraticObjective:
        """``vmap`` axes: the right-hand side per set, the stencils shared."""
        return QuadraticObjective(stencil=None, edges=None, corners=None, rhs=0, offset=0)


@flax.struct.dataclass
class EdgeObjective:
    """Gradient-domain refinement: ``L(x) = Σ_p ω_p·||S(x)_p − E_p||² + fidelity·||x − x₀||²``,
    in grey levels² (of 255), with ``S`` the Sobel responses (s_x, s_y) of each channel
    (:func:`semfuse_jax.metrics.sobel`). Quadratic in ``x``; its gradient comes from autodiff
    through the Sobel shifts, a few additions per pixel.

    Attributes:
      anchor: ``x₀`` ``[H, W, C]`` for one set (``[B, H, W, C]`` for a batch), the image refined.
      edges: the target field ``E`` ``[2, H, W, C]`` (s_x, s_y).
      strength: the per-pixel weight ``ω`` ``[H, W]`` of the edge term.
      fidelity: the weight of staying at ``x₀`` (shared by the sets of a batch).
    """

    anchor: jax.Array
    edges: jax.Array
    strength: jax.Array
    fidelity: float = flax.struct.field(pytree_node=False, default=0.05)

    def loss(self, image: jax.Array) -> jax.Array:
        """``L`` at one image ``[H, W, C]``."""
        s_x, s_y = metrics.sobel(jnp.moveaxis(image, -1, 0))  # [C, H, W] each
        field = jnp.moveaxis(jnp.stack([s_x, s_y]), 1, -1)  # [2, H, W, C]
        edge = jnp.sum(self.strength[..., None] * jnp.square(field - self.edges))
        stay = self.fidelity * jnp.sum(jnp.square(image - self.anchor))
        return 255.0**2 * (edge + stay)

    def gradient(self, image: jax.Array) -> jax.Array:
        """``∇L`` at one image ``[H, W, C]``."""
        return jax.grad(self.loss)(image)

    def batch_axes(self) -> EdgeObjective:
        """``vmap`` axes: everything per set but the fidelity."""
        return EdgeObjective(anchor=0, edges=0, strength=0, fidelity=self.fidelity)


@jax.jit
def batch_edge_loss(objective: EdgeObjective, images: jax.Array) -> jax.Array:
    """:meth:`EdgeObjective.loss` of each set: ``[B, H, W, C]`` → ``[B]``."""
    return jax.vmap(type(objective).loss, in_axes=(objective.batch_axes(), 0))(objective, images)


def _stencil_2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``out[q, o] = Σ_{δ, c} kernel[δ + 2, c, o] · x[q + δ, c]`` with zero padding, as
    shift-and-add (far faster than a convolution call for one or three channels on a CPU)."""
    h, w, c = x.shape
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = jnp.pad(x, ((ry, ry), (rx, rx), (0, 0)))
    out = [jnp.zeros((h, w), x.dtype)] * c
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            shifted = padded[i : i + h, j : j + w]
            for o in range(c):
                for k in range(c):
                    out[o] = out[o] + shifted[..., k] * kernel[i, j, k, o]
    return jnp.stack(out, axis=-1)


def _stencil_1d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """:func:`_stencil_2d` along one axis: ``x`` ``[L, C]``, ``kernel`` ``[5, C, C]``."""
    return _stencil_2d(x[None], kernel[None])[0]


def input_kernel(weights: Weights, channels: int) -> np.ndarray:
    """``conv1_1``'s kernel acting on pixels in ``[0, 1]``: ``[3, 3, C, 64]`` (float64).

    The preprocessing's per-channel scale (``scale / std``) and channel order are folded in; for a
    grey plane (C = 1) the three replicated channels are summed. Its mean subtraction and the
    bias are the affine part ``d``, which the right-hand side ``b`` absorbs.
    """
    prep = weights.preprocessing
    kernel = np.asarray(weights.params["conv1_1"]["kernel"], np.float64)
    scale = prep.scale / np.asarray(prep.std, np.float64)
    rgb = [2, 1, 0] if prep.channel_order == "BGR" else [0, 1, 2]  # network channel → RGB
    folded = np.zeros_like(kernel)
    for j, c in enumerate(rgb):
        folded[:, :, c, :] = kernel[:, :, j, :] * scale[j]
    return folded.sum(axis=2, keepdims=True) if channels == 1 else folded


def gram_stencils(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``AᵀA`` of a 3×3 convolution ``kernel`` ``[3, 3, C, K]`` (zero padding 1) as stencils.

    Returns ``(stencil [5, 5, C, C], edges [4, 5, C, C], corners [4, C, C])`` as
    :class:`QuadraticObjective` uses them. With ``a = (i − 1, j − 1)`` the offset of kernel tap
    ``(i, j)``: ``stencil[δ + 2] = Σ_{a' − a = δ} k[a'] k[a]ᵀ`` (``[C, K] @ [K, C]``); the
    outputs one row above the image see only its top row, through kernel row ``i = 2``, so the
    top edge removes the 1-D autocorrelation of ``k[2, :]`` (bottom: ``k[0, :]``, left:
    ``k[:, 2]``, right: ``k[:, 0]``);
    each corner output beyond the image (e.g. above-left, through ``k[2, 2]``) is in two edges
    and is added back once.
    """
    k = np.asarray(kernel, np.float64)
    c = k.shape[2]
    stencil = np.zeros((5, 5, c, c))
    for i, j, i2, j2 in np.ndindex(3, 3, 3, 3):
        stencil[i2 - i + 2, j2 - j + 2] += k[i2, j2] @ k[i, j].T

    def autocorrelation(taps: np.ndarray) -> np.ndarray:  # [3, C, K] → [5, C, C]
        out = np.zeros((5, c, c))
        for a, b in np.ndindex(3, 3):
            out[b - a + 2] += taps[b] @ taps[a].T
        return out

    edges = np.stack([autocorrelation(t) for t in (k[2], k[0], k[:, 2], k[:, 0])])
    corners = np.stack(
        [k[2, 2] @ k[2, 2].T, k[2, 0] @ k[2, 0].T, k[0, 2] @ k[0, 2].T, k[0, 0] @ k[0, 0].T]
    )
    return stencil, edges, corners


@jax.jit
def _quadratic_rhs(
    weights: Weights, targets: Targets, zeros: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(b = −∇L(0) [B, H, W, C], L(0) [B])`` of each set, one set after another so that a
    set's values do not depend on the size of its batch (Adam amplifies the last bit)."""
    value_and_grad = jax.value_and_grad(feature_loss, argnums=1)
    loss, grad = jax.lax.map(lambda args: value_and_grad(weights, *args), (zeros, targets))
    return -grad, loss


def quadratic_objective(
    weights: Weights, targets: Targets, shape: tuple[int, ...]
) -> QuadraticObjective:
    """The quadratic objective of a batch: ``targets`` ``{'conv1_1': [B, H, W, 64]}``, images of
    ``shape`` ``[B, H, W, C]``."""
    if tuple(targets) != LINEAR_LAYERS:
        raise SemfuseError(f"the quadratic form needs the loss layers {LINEAR_LAYERS}")
    stencil, edges, corners = gram_stencils(input_kernel(weights, shape[-1]))
    rhs, offset = _quadratic_rhs(weights, dict(targets), jnp.zeros(shape, jnp.float32))
    as32 = partial(jnp.asarray, dtype=jnp.float32)
    return QuadraticObjective(as32(stencil), as32(edges), as32(corners), rhs, offset)


def choose_gradient(gradient: str, layers: tuple[str, ...], dtype: Any = None) -> str:
    """``quadratic`` or ``network`` for a ``gradient`` setting (``auto``: quadratic exactly when
    every loss layer is linear and the compute dtype is float32)."""
    if gradient not in GRADIENTS:
        raise SemfuseError(f"unknown gradient {gradient!r}; choose from {', '.join(GRADIENTS)}")
    linear = tuple(layers) == LINEAR_LAYERS
    if gradient == "quadratic" and not linear:
        raise SemfuseError(f"--gradient=quadratic needs --layers={','.join(LINEAR_LAYERS)}")
    if gradient == "auto":
        return "quadratic" if linear and dtype is None else "network"
    return gradient
