"""The PyTorch loop of the paper's algorithm, as a researcher would write it (FM0 on conv1_1)."""

from __future__ import annotations

import time

import numpy as np

from semfuse_jax.models import vgg19


class TorchFM0:
    """FM0 as commonly written in PyTorch: Adam on the pixels, one Python loop iteration a step."""

    def __init__(self, w: vgg19.Weights, pair: np.ndarray, compiled: bool) -> None:
        import torch

        self.torch = torch
        prep = w.preprocessing
        kernel = np.asarray(w.params["conv1_1"]["kernel"]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        self.conv = torch.nn.Conv2d(3, 64, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(kernel.copy()))
            self.conv.bias.copy_(torch.from_numpy(np.asarray(w.params["conv1_1"]["bias"])))
        self.conv.requires_grad_(False)
        self.scale, self.bgr = prep.scale, prep.channel_order == "BGR"
        self.mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(prep.std).view(1, 3, 1, 1)
        self.forward = torch.compile(self._features) if compiled else self._features
        inputs = torch.from_numpy(np.ascontiguousarray(pair.transpose(0, 3, 1, 2)))
        with torch.no_grad():
            feats = self._features(inputs)
            mask = feats[0].abs() >= feats[1].abs()
            self.target = torch.where(mask, feats[0], feats[1])[None]
        self.init = inputs.mean(dim=0, keepdim=True)

    def _features(self, x):
        x = x * self.scale
        if self.bgr:
            x = x.flip(1)
        return self.conv((x - self.mean) / self.std)

    def run(self, epochs: int, iters: int, lr: float = 1.0, decay: float = 0.95) -> tuple:
        torch = self.torch
        image = self.init.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([image], lr=lr / 255)
        losses, start = [], time.perf_counter()
        for epoch in range(epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr / 255 * decay**epoch
            for _ in range(iters):
                optimizer.zero_grad()
                loss = ((self.target - self.forward(image)) ** 2).sum()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    image.clamp_(0.0, 1.0)
            with torch.no_grad():
                losses.append(float(((self.target - self._features(image)) ** 2).sum()))
        return losses, time.perf_counter() - start
