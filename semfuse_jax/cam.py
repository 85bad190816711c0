"""Grad-CAM probability maps and the CAM mixing weights of FM2/FM3, FM5's semantic map (jittable).

The network is any classifier with named outputs and taps: VGG19 (``weights.Weights``) or
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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

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


def _grad_cam(
    weights: Network,
    images: jax.Array,
    choose: Callable[[jax.Array], jax.Array],
    layers: Sequence[str],
) -> tuple[jax.Array, jax.Array]:
    """One forward and backward pass: ``(maps [B, L, H, W], logits [B, 1000])``.

    ``choose`` maps the logits to the ``[B, 1000]`` class weights of the score; it sees the
    logits of the same forward pass and is not differentiated.
    """
    names = tuple(activation_name(layer) for layer in layers)
    outputs = (*names, "logits")
    shapes = jax.eval_shape(lambda x: weights.features(x, outputs), images)
    zeros = {name: jnp.zeros(shapes[name].shape, shapes[name].dtype) for name in names}

    def score(taps: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        out = weights.features(images, outputs, taps=taps)
        cls_weights = jax.lax.stop_gradient(choose(out["logits"]))
        return jnp.sum(out["logits"] * cls_weights), out

    grads, acts = jax.grad(score, has_aux=True)(zeros)
    batch, height, width = images.shape[:3]
    maps = []
    for name in names:
        alpha = jnp.mean(grads[name], axis=(1, 2))  # [B, C]
        cam = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", acts[name], alpha))
        maps.append(jax.image.resize(cam, (batch, height, width), "bilinear"))
    return jnp.stack(maps, axis=1), acts["logits"]


def layer_maps(
    weights: Network,
    images: jax.Array,
    cls_weights: jax.Array,
    layers: Sequence[str] = CAM_LAYERS,
) -> jax.Array:
    """Upsampled Grad-CAM maps of each layer: ``[B, H, W, 3|1]`` → ``[B, L, H, W]``.

    Args:
      weights: full VGG19 weights (conv layers up to the deepest in ``layers`` and the classifier).
      images: RGB or grey images in ``[0, 1]``.
      cls_weights: ``[B, 1000]`` weights of the class scores (see :func:`class_weights`).
      layers: conv layer names whose rectified outputs are differentiated.
    """
    return _grad_cam(weights, images, lambda _: cls_weights, layers)[0]


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
) -> tuple[jax.Array, jax.Array]:
    """Grad-CAM maps of each image's own classes (top-k, or ``target_class``), chosen from the
    logits of the same pass: ``(maps [B, L, H, W], logits [B, 1000])``."""
    return _grad_cam(
        network, images, lambda logits: class_weights(logits, top_k, target_class), layers
    )


def probability_map(
    weights: Network,
    images: jax.Array,
    top_k: int = 1,
    target_class: int | None = None,
    layers: Sequence[str] = CAM_LAYERS,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The paper's CAM probability map ``P`` of each image.

    Args:
      images: ``[B, H, W, 3|1]`` in ``[0, 1]``.

    Returns:
      ``(P [B, H, W], per-layer maps [B, L, H, W], logits [B, 1000])``.
    """
    maps, logits = class_maps(weights, images, top_k, target_class, layers)
    return normalise(jnp.prod(maps, axis=1)), maps, logits


def semantic_map(
    network: Network,
    images: jax.Array,
    top_k: int = 1,
    target_class: int | None = None,
    layers: Sequence[str] = CAM_LAYERS,
) -> jax.Array:
    """FM5's semantic map of each image: the mean of the min-max normalised Grad-CAM maps of
    ``layers`` (``[B, H, W, 3|1]`` → ``[B, H, W]`` in ``[0, 1]``). Unlike the paper's product,
    which keeps only where every layer agrees (a few peaked pixels), the mean marks the whole
    region each layer finds."""
    maps, _ = class_maps(network, images, top_k, target_class, layers)
    return jnp.mean(normalise(maps), axis=1)


def mixing_weights(probabilities: jax.Array) -> jax.Array:
    """Per-pixel mixing weights of N inputs: ``P_Mi = (1 + P_i − mean_{j≠i} P_j) / N``.

    ``probabilities``: ``[N, ...]`` in ``[0, 1]`` → ``[N, ...]``, ≥ 0 and summing to 1 over axis 0;
    for N = 2 this is the paper's ``P_M0 = ½(1 + P_0 − P_1)``.
    """
    n = probabilities.shape[0]
    others = (jnp.sum(probabilities, axis=0, keepdims=True) - probabilities) / (n - 1)
    return (1.0 + probabilities - others) / n
