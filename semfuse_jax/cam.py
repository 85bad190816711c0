"""Grad-CAM probability maps and the CAM mixing weights of FM2/FM3, FM5's semantic map (jittable).

The network is any classifier with named outputs and taps: VGG19 (``vgg19.Weights``) or
EfficientNet-Lite (``efficientnet.EfficientNetWeights``); see ``classifier``.

A Grad-CAM map of class score ``y`` at layer ``l`` is ``ReLU(Σ_c α_c A_l[..., c])`` with
``α_c`` the spatial mean of ``∂y/∂A_l[..., c]``, bilinearly upsampled (half-pixel centres) to the
input size. ``A_l`` is the layer's rectified output (``conv5_4`` means the activation after its
ReLU, as Keras names it). The paper's probability map is the product of the maps of
``conv3_4, conv4_4, conv5_4`` min-max normalised to ``[0, 1]``; a constant product (no pixel singled
out) gives an all-zero map.

Target classes: the score is ``y = Σ_k w_k · logit_k`` for a class-weight vector ``w``:
``top1`` (the default) puts weight 1 on the top class; a given class puts 1 on it; ``topk`` puts
on each of the top-k classes its softmax probability renormalised over those k. Grad-CAM is linear
in ``y`` before the ReLU, so the top-k map is the probability-weighted sum of the per-class
channel weights.

CAM methods (:data:`METHODS`, chosen by ``FusionConfig.cam`` / ``--cam``): each turns one layer's
activations ``A`` ``[B, h, w, C]`` (and, for the gradient methods, ``G = ∂y/∂A``) into a map
``[B, h, w]``, which is then rectified and upsampled as above; the default, ``gradcam``, is the
Grad-CAM above. They follow the definitions of pytorch-grad-cam (checked against it in
``tests/test_cam_methods.py``, to 1e-4 after the same normalisation), with these conventions:

- a top-k or given-class score ``y`` is differentiated (or, for Score-CAM, evaluated) as one
  score, so a method that is not linear in ``G`` gives the map of the combined score, not the
  sum of the per-class maps;
- maps are upsampled with half-pixel centres (as cv2.resize in pytorch-grad-cam) and
  normalised by the caller (the paper's product, FM5's mean); pytorch-grad-cam min-max
  normalises each layer's map first, which a min-max normalisation afterwards undoes;
- Eigen-CAM's principal direction is defined only up to its sign: it is oriented so that the
  map correlates positively with the channel sum of the activations (pytorch-grad-cam leaves
  the sign to the SVD routine, so its map may be the negated one before the ReLU);
- Score-CAM masks the network *input* (pytorch-grad-cam multiplies the preprocessed tensor):
  here each pixel is blended towards the image whose network input is zero (the
  preprocessing's mean colour), ``m·x + (1 − m)·μ/scale``, which is the same thing; its
  masked forwards run in chunks of :data:`SCORE_CAM_CHUNK` images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from semfuse_jax.errors import SemfuseError

Network = Any  # VGG19 Weights or efficientnet.EfficientNetWeights (``features`` with taps)

CAM_LAYERS: tuple[str, ...] = ("conv3_4", "conv4_4", "conv5_4")


def activation_name(layer: str) -> str:
    """``conv3_4`` → ``relu3_4`` (the rectified output Grad-CAM differentiates)."""
    return "relu" + layer.removeprefix("conv") if layer.startswith("conv") else layer


def class_weights(logits: jax.Array, top_k: int = 1, target_class: int | None = None) -> jax.Array:
    """Per-image class weights ``[B, 1000]`` for the Grad-CAM score (see the module docstring).

    Args:
      logits: ``[B, 1000]``.
      top_k: number of top classes to combine (1 = the top class).
      target_class: if given, use this class for every image (``top_k`` is ignored).
    """
    n_classes = logits.shape[-1]
    if target_class is not None:
        return jnp.broadcast_to(jax.nn.one_hot(target_class, n_classes), logits.shape)
    probs = jax.nn.softmax(logits, axis=-1)
    top_p, top_i = jax.lax.top_k(probs, top_k)
    top_p = top_p / jnp.sum(top_p, axis=-1, keepdims=True)
    return jnp.sum(jax.nn.one_hot(top_i, n_classes) * top_p[..., None], axis=-2)


def _grad_cam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """Grad-CAM: channels weighted by their mean gradient."""
    return jnp.einsum("bhwc,bc->bhw", acts, jnp.mean(grads, axis=(1, 2)))


def _grad_cam_plus_plus_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """Grad-CAM++ (Chattopadhay et al. 2018): positive gradients weighted per pixel by
    ``α = G² / (2G² + ΣA·G³)``, summed over the pixels."""
    g2 = grads**2
    total = jnp.sum(acts, axis=(1, 2), keepdims=True)
    alpha = jnp.where(grads != 0, g2 / (2 * g2 + total * g2 * grads + 1e-6), 0.0)
    return jnp.einsum("bhwc,bc->bhw", acts, jnp.sum(jax.nn.relu(grads) * alpha, axis=(1, 2)))


def _xgrad_cam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """XGrad-CAM (Fu et al. 2020): channel weights ``Σ G·A / ΣA``."""
    total = jnp.sum(acts, axis=(1, 2))
    weights = jnp.sum(grads * acts, axis=(1, 2)) / (total + 1e-7)
    return jnp.einsum("bhwc,bc->bhw", acts, weights)


def _layer_cam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """LayerCAM (Jiang et al. 2021): each pixel's activations weighted by its positive
    gradients."""
    return jnp.sum(jax.nn.relu(grads) * acts, axis=-1)


def _hires_cam_map(acts: jax.Array, grads: jax.Array) -> jax.Array:
    """HiResCAM (Draelos & Carin 2020): the element-wise product of gradients and activations,
    summed over channels."""
    return jnp.sum(grads * acts, axis=-1)


def _eigen_cam_map(acts: jax.Array, grads: jax.Array | None) -> jax.Array:
    """Eigen-CAM (Muhammad & Yeasin 2020): the centred activations projected on their first
    principal direction, oriented to correlate positively with the channel sum."""

    def one(a: jax.Array) -> jax.Array:  # [h, w, C]
        x = a.reshape(-1, a.shape[-1])
        x = x - jnp.mean(x, axis=0)
        direction = jnp.linalg.svd(x, full_matrices=False)[2][0]
        projection = x @ direction
        energy = jnp.sum(a, axis=-1).reshape(-1)
        sign = jnp.where(jnp.dot(projection, energy - jnp.mean(energy)) < 0, -1.0, 1.0)
        return (sign * projection).reshape(a.shape[:2])

    return jax.vmap(one)(acts)


SCORE_CAM_CHUNK = 32  # masked images per forward pass of Score-CAM


def resize_aligned(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``[..., h, w]`` to ``[..., H, W]`` with the corners aligned (corner
    pixels map onto corner pixels), as Score-CAM's reference upsampling."""

    def matrix(n_in: int, n_out: int) -> jax.Array:
        position = jnp.linspace(0.0, n_in - 1.0, n_out) if n_out > 1 else jnp.zeros(1)
        return jnp.maximum(0.0, 1.0 - jnp.abs(position[:, None] - jnp.arange(n_in)[None, :]))

    rows, cols = matrix(maps.shape[-2], size[0]), matrix(maps.shape[-1], size[1])
    return jnp.einsum("Hh,...hw,Ww->...HW", rows.astype(maps.dtype), maps, cols.astype(maps.dtype))


def score_cam_map(
    network: Network, images: jax.Array, acts: jax.Array, cls_weights: jax.Array
) -> jax.Array:
    """Score-CAM (Wang et al. 2020): channels weighted by the softmax, over channels, of the
    class score of the image masked by each channel's upsampled, min-max normalised activation.

    Args:
      images: ``[B, H, W, 3|1]`` in ``[0, 1]`` (the images the activations come from).
      acts: ``[B, h, w, C]``.
      cls_weights: ``[B, 1000]`` class weights of the score.

    Returns:
      ``[B, h, w]`` (before the ReLU).
    """
    height, width = images.shape[1:3]
    masks = resize_aligned(jnp.moveaxis(acts, -1, 1), (height, width))  # [B, C, H, W]
    low = jnp.min(masks, axis=(2, 3), keepdims=True)
    masks = (masks - low) / (jnp.max(masks, axis=(2, 3), keepdims=True) - low + 1e-8)
    prep = network.preprocessing
    baseline = jnp.asarray(prep.mean, images.dtype) / prep.scale
    if prep.channel_order == "BGR":
        baseline = baseline[::-1]
    channels = masks.shape[1]
    chunk = min(SCORE_CAM_CHUNK, channels)
    padded = -channels % chunk

    def scores(image: jax.Array, image_masks: jax.Array, weights: jax.Array) -> jax.Array:
        rgb = jnp.broadcast_to(image, (height, width, baseline.shape[0]))
        groups = jnp.pad(image_masks, ((0, padded), (0, 0), (0, 0))).reshape(
            -1, chunk, height, width
        )

        def forward(group: jax.Array) -> jax.Array:  # [chunk, H, W] masks → [chunk] scores
            m = group[..., None]
            logits = network.features(m * rgb + (1 - m) * baseline, ("logits",))["logits"]
            return logits @ weights

        return jax.lax.map(forward, groups).reshape(-1)[:channels]

    per_channel = jax.vmap(scores)(images, masks, cls_weights)  # [B, C]
    return jnp.einsum("bhwc,bc->bhw", acts, jax.nn.softmax(per_channel, axis=-1))


@dataclasses.dataclass(frozen=True)
class CamMethod:
    """One class activation mapping method.

    Attributes:
      name: the ``--cam`` value.
      summary: one line for ``--help``.
      layer_map: ``(acts [B, h, w, C], grads [B, h, w, C] | None) → [B, h, w]`` before the ReLU;
        None for Score-CAM (:func:`score_cam_map`, which runs the network on masked inputs).
      gradients: whether the map needs ``∂y/∂A`` (a backward pass).
    """

    name: str
    summary: str
    layer_map: Callable[[jax.Array, jax.Array | None], jax.Array] | None
    gradients: bool = True


METHODS: dict[str, CamMethod] = {
    m.name: m
    for m in (
        CamMethod("gradcam", "channels weighted by their mean gradient (the paper's)",
                  _grad_cam_map),
        CamMethod("gradcam++", "positive gradients weighted per pixel (Grad-CAM++)",
                  _grad_cam_plus_plus_map),
        CamMethod("xgradcam", "channel weights sum(G·A)/sum(A) (XGrad-CAM)", _xgrad_cam_map),
        CamMethod("layercam", "each pixel weighted by its positive gradients (LayerCAM)",
                  _layer_cam_map),
        CamMethod("hirescam", "element-wise gradient × activation (HiResCAM)", _hires_cam_map),
        CamMethod("eigencam", "first principal component of the activations (Eigen-CAM; no "
                  "gradients, class-agnostic)", _eigen_cam_map, gradients=False),
        CamMethod("scorecam", "channels weighted by the class score of the input masked by "
                  "each (Score-CAM; forward passes only, one per channel)", None,
                  gradients=False),
    )
}  # fmt: skip
NAMES: tuple[str, ...] = tuple(METHODS)


def get(name: str) -> CamMethod:
    """The CAM method ``name``; an unknown name is one :class:`SemfuseError` listing them."""
    try:
        return METHODS[name]
    except KeyError:
        raise SemfuseError(f"unknown CAM method {name!r}; choose from {', '.join(NAMES)}") from None


def _grad_cam(
    weights: Network,
    images: jax.Array,
    choose: Callable[[jax.Array], jax.Array],
    layers: Sequence[str],
    method: str = "gradcam",
) -> tuple[jax.Array, jax.Array]:
    """One forward (and, for a gradient method, backward) pass, then ``method``'s map of each
    layer: ``(maps [B, L, H, W], logits [B, 1000])``.

    ``choose`` maps the logits to the ``[B, 1000]`` class weights of the score; it sees the
    logits of the same forward pass and is not differentiated.
    """
    spec = get(method)
    names = tuple(activation_name(layer) for layer in layers)
    outputs = (*names, "logits")
    shapes = jax.eval_shape(lambda x: weights.features(x, outputs), images)
    zeros = {name: jnp.zeros(shapes[name].shape, shapes[name].dtype) for name in names}

    def score(taps: dict[str, jax.Array]) -> tuple[jax.Array, tuple[dict, jax.Array]]:
        out = weights.features(images, outputs, taps=taps)
        cls_weights = jax.lax.stop_gradient(choose(out["logits"]))
        return jnp.sum(out["logits"] * cls_weights), (out, cls_weights)

    if spec.gradients:
        grads, (acts, cls_weights) = jax.grad(score, has_aux=True)(zeros)
    else:
        _, (acts, cls_weights) = score(zeros)
        grads = dict.fromkeys(names)
    batch, height, width = images.shape[:3]
    maps = []
    for name in names:
        if spec.layer_map is None:
            raw = score_cam_map(weights, images, acts[name], cls_weights)
        else:
            raw = spec.layer_map(acts[name], grads[name])
        maps.append(jax.image.resize(jax.nn.relu(raw), (batch, height, width), "bilinear"))
    return jnp.stack(maps, axis=1), acts["logits"]


def layer_maps(
    weights: Network,
    images: jax.Array,
    cls_weights: jax.Array,
    layers: Sequence[str] = CAM_LAYERS,
    method: str = "gradcam",
) -> jax.Array:
    """Upsampled CAM maps of each layer: ``[B, H, W, 3|1]`` → ``[B, L, H, W]``.

    Args:
      weights: full VGG19 weights (conv layers up to the deepest in ``layers`` and the classifier).
      images: RGB or grey images in ``[0, 1]``.
      cls_weights: ``[B, 1000]`` weights of the class scores (see :func:`class_weights`).
      layers: conv layer names whose rectified outputs are differentiated.
      method: a name in :data:`METHODS`.
    """
    return _grad_cam(weights, images, lambda _: cls_weights, layers, method)[0]


def normalise(maps: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Min-max normalise each ``[H, W]`` map of ``[..., H, W]`` to ``[0, 1]`` (constant → 0)."""
    low = jnp.min(maps, axis=(-2, -1), keepdims=True)
    span = jnp.max(maps, axis=(-2, -1), keepdims=True) - low
    scaled = jnp.clip((maps - low) / jnp.where(span > eps, span, 1.0), 0.0, 1.0)
    return jnp.where(span > eps, scaled, 0.0)


def class_maps(
    network: Network,
    images: jax.Array,
    top_k: int = 1,
    target_class: int | None = None,
    layers: Sequence[str] = CAM_LAYERS,
    method: str = "gradcam",
) -> tuple[jax.Array, jax.Array]:
    """CAM maps (``method``, see :data:`METHODS`) of each image's own classes (top-k, or
    ``target_class``), chosen from the logits of the same pass:
    ``(maps [B, L, H, W], logits [B, 1000])``."""
    return _grad_cam(
        network, images, lambda logits: class_weights(logits, top_k, target_class), layers, method
    )


def probability_map(
    weights: Network,
    images: jax.Array,
    top_k: int = 1,
    target_class: int | None = None,
    layers: Sequence[str] = CAM_LAYERS,
    method: str = "gradcam",
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The paper's CAM probability map ``P`` of each image (its Grad-CAM, or ``method``'s).

    Args:
      images: ``[B, H, W, 3|1]`` in ``[0, 1]``.

    Returns:
      ``(P [B, H, W], per-layer maps [B, L, H, W], logits [B, 1000])``.
    """
    maps, logits = class_maps(weights, images, top_k, target_class, layers, method)
    return normalise(jnp.prod(maps, axis=1)), maps, logits


def semantic_map(
    network: Network,
    images: jax.Array,
    top_k: int = 1,
    target_class: int | None = None,
    layers: Sequence[str] = CAM_LAYERS,
    method: str = "gradcam",
) -> jax.Array:
    """FM5's semantic map of each image: the mean of the min-max normalised CAM maps of
    ``layers`` (``[B, H, W, 3|1]`` → ``[B, H, W]`` in ``[0, 1]``). Unlike the paper's product,
    which keeps only where every layer agrees (a few peaked pixels), the mean marks the whole
    region each layer finds."""
    maps, _ = class_maps(network, images, top_k, target_class, layers, method)
    return jnp.mean(normalise(maps), axis=1)


def mixing_weights(probabilities: jax.Array) -> jax.Array:
    """Per-pixel mixing weights of N inputs: ``P_Mi = (1 + P_i − mean_{j≠i} P_j) / N``.

    ``probabilities``: ``[N, ...]`` in ``[0, 1]`` → ``[N, ...]``, ≥ 0 and summing to 1 over axis 0;
    for N = 2 this is the paper's ``P_M0 = ½(1 + P_0 − P_1)``.
    """
    n = probabilities.shape[0]
    others = (jnp.sum(probabilities, axis=0, keepdims=True) - probabilities) / (n - 1)
    return (1.0 + probabilities - others) / n
