"""Grad-CAM against torch autograd on the same random weights, and the CAM probability map."""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_torch, rel_err, torch

from semfuse_jax import cam
from semfuse_jax.models import vgg19

RELU_INDEX = {"conv3_4": 17, "conv4_4": 26, "conv5_4": 35}  # torchvision features.N after the conv


def _float64(w: vgg19.Weights) -> vgg19.Weights:
    """The same weights as float64 arrays (call with x64 enabled)."""
    return dataclasses.replace(
        w, params=jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), w.params)
    )


def _torch_grad_cam(model, x: np.ndarray, class_weights: np.ndarray, size) -> dict:
    """Grad-CAM maps [B, H, W] per layer, by hooks and autograd on the torch reference."""
    acts = {}
    handles = [
        model.features[index].register_forward_hook(
            lambda _m, _i, out, name=name: acts.__setitem__(name, out)
        )
        for name, index in RELU_INDEX.items()
    ]
    try:
        feats = model.features(torch.from_numpy(x))
        logits = model.classifier(torch.flatten(model.avgpool(feats), 1))
        for a in acts.values():
            a.retain_grad()
        (logits * torch.from_numpy(np.array(class_weights))).sum().backward()
    finally:
        for h in handles:
            h.remove()
    maps = {}
    for name, a in acts.items():
        alpha = a.grad.mean(dim=(2, 3), keepdim=True)
        heat = torch.relu((alpha * a).sum(dim=1, keepdim=True))
        up = torch.nn.functional.interpolate(heat, size=size, mode="bilinear", align_corners=False)
        maps[name] = up[:, 0].detach().numpy()
    return maps, logits.detach().numpy()


@needs_torch
@pytest.mark.parametrize("top_k", [1, 3])
def test_grad_cam_matches_torch_on_every_layer(torch_vgg19, full_weights, top_k):
    """Both sides in float64: ReLU and max-pool make the gradient piecewise, so float32 runs of
    either framework occasionally land on the other side of a kink (~1e-3 apart)."""
    rng = np.random.default_rng(top_k)
    images = rng.uniform(size=(2, 96, 128, 3))
    prep = vgg19.TORCHVISION_PREPROCESSING
    x = (images - np.array(prep.mean)) / np.array(prep.std)
    with jax.enable_x64(True):
        w64 = _float64(full_weights)
        logits = w64.features(jnp.asarray(images), ("logits",))["logits"]
        cw = np.asarray(cam.class_weights(logits, top_k=top_k))
        ours = np.asarray(jax.jit(cam.layer_maps)(w64, jnp.asarray(images), jnp.asarray(cw)))
        probs = np.asarray(cam.probability_map(w64, jnp.asarray(images), top_k=top_k)[0])
    assert ours.dtype == np.float64
    model64 = copy.deepcopy(torch_vgg19).double()
    expected, torch_logits = _torch_grad_cam(model64, x.transpose(0, 3, 1, 2), cw, (96, 128))
    assert rel_err(np.asarray(logits), torch_logits) < 1e-10
    assert ours.shape == (2, 3, 96, 128)
    for k, name in enumerate(cam.CAM_LAYERS):
        for b in range(2):  # per image: neither map is all zeros, and they agree
            assert expected[name][b].max() > 0, name
            assert rel_err(ours[b, k], expected[name][b]) < 1e-4, name
    product = np.prod(np.stack([expected[n] for n in cam.CAM_LAYERS], 1), axis=1)
    low = product.min(axis=(1, 2), keepdims=True)
    norm = (product - low) / (product.max(axis=(1, 2), keepdims=True) - low)
    np.testing.assert_allclose(probs, norm, atol=1e-6)
    assert probs.min() == 0.0 and probs.max() == pytest.approx(1.0)


def test_grad_cam_float32_agrees_with_float64(full_weights):
    images = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 64, 80, 3)), jnp.float32)
    cw = jax.nn.one_hot(jnp.array([3, 7]), 1000)
    maps32 = np.asarray(cam.layer_maps(full_weights, images, cw))
    with jax.enable_x64(True):
        w64 = _float64(full_weights)
        maps64 = np.asarray(cam.layer_maps(w64, jnp.asarray(images, jnp.float64), cw))
    assert maps32.dtype == np.float32
    for k in range(3):  # float32 is accurate up to the rare kink (see above)
        assert rel_err(maps32[:, k], maps64[:, k]) < 1e-2


def test_class_weights_top1_given_class_and_topk():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0]])
    np.testing.assert_array_equal(cam.class_weights(logits), [[0, 1, 0, 0]])
    np.testing.assert_array_equal(cam.class_weights(logits, target_class=2), [[0, 0, 1, 0]])
    w = np.asarray(cam.class_weights(logits, top_k=2))
    p = np.exp([3.0, 2.0]) / np.exp([3.0, 2.0]).sum()
    np.testing.assert_allclose(w, [[0, p[0], 0, p[1]]], rtol=1e-6)


def test_normalise_guards_constant_maps():
    maps = jnp.stack([jnp.zeros((4, 5)), jnp.full((4, 5), 7.0), jnp.arange(20.0).reshape(4, 5)])
    out = np.asarray(cam.normalise(maps))
    np.testing.assert_array_equal(out[0], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(out[2], np.arange(20.0).reshape(4, 5) / 19.0, rtol=1e-6)
    assert np.all(np.isfinite(out))
