"""An independent torch EfficientNet-Lite0, built from an EfficientNet-PyTorch state dict.

Written from the published architecture (not from the Flax module): TensorFlow "same" padding
done by hand, batch norm kept as batch norm (eps 1e-3), ReLU6, the Lite0 block table.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Lite0 blocks: (kernel, stride, expand ratio, width out); stride 2 at blocks 1, 3, 5 and 11.
LITE0_BLOCKS = (
    [(3, 1, 1, 16)]
    + [(3, 2, 6, 24), (3, 1, 6, 24)]
    + [(5, 2, 6, 40), (5, 1, 6, 40)]
    + [(3, 2, 6, 80)]
    + [(3, 1, 6, 80)] * 2
    + [(5, 1, 6, 112)] * 3
    + [(5, 2, 6, 192)]
    + [(5, 1, 6, 192)] * 3
    + [(3, 1, 6, 320)]
)


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow 'same' padding: total max((ceil(n/s) − 1)s + k − n, 0), smaller half first."""
    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad takes the last dimension first
        total = max((math.ceil(n / stride) - 1) * stride + kernel - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(same_pad(x, self.kernel, self.stride)))


class TorchLite0(nn.Module):
    """Returns ``{'stem', 'block{i}', 'head', 'logits'}``; each named activation passes through
    an identity module of ``taps`` (where hooks, e.g. pytorch-grad-cam's, can see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 32, 3, 2)
        self.blocks = nn.ModuleList()
        cin = 32
        for kernel, stride, ratio, cout in LITE0_BLOCKS:
            mid = cin * ratio
            block = nn.Module()
            block.expand = ConvBN(cin, mid, 1, 1) if ratio != 1 else None
            block.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
            block.project = ConvBN(mid, cout, 1, 1)
            block.residual = stride == 1 and cin == cout
            self.blocks.append(block)
            cin = cout
        self.head = ConvBN(cin, 1280, 1, 1)
        self.fc = nn.Linear(1280, 1000)
        names = ["stem", *(f"block{i}" for i in range(len(LITE0_BLOCKS))), "head"]
        self.taps = nn.ModuleDict({name: nn.Identity() for name in names})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = out["stem"] = self.taps["stem"](F.relu6(self.stem(x)))
        for i, block in enumerate(self.blocks):
            h = x if block.expand is None else F.relu6(block.expand(x))
            h = block.project(F.relu6(block.depthwise(h)))
            x = out[f"block{i}"] = self.taps[f"block{i}"](h + x if block.residual else h)
        x = out["head"] = self.taps["head"](F.relu6(self.head(x)))
        out["logits"] = self.fc(x.mean(dim=(2, 3)))
        return out

    def load_efficientnet_pytorch(self, state: dict[str, np.ndarray]) -> None:
        """Copy an EfficientNet-PyTorch state dict (``_conv_stem``, ``_blocks.N...``) in."""
        mine = {}
        for key, value in state.items():
            k = key.replace("_conv_stem.", "stem.conv.").replace("_bn0.", "stem.bn.", 1)
            if key.startswith("_blocks."):
                _, n, part, leaf = key.split(".", 3)
                module, sub = {
                    "_expand_conv": ("expand", "conv"),
                    "_bn0": ("expand", "bn"),
                    "_depthwise_conv": ("depthwise", "conv"),
                    "_bn1": ("depthwise", "bn"),
                    "_project_conv": ("project", "conv"),
                    "_bn2": ("project", "bn"),
                }[part]
                k = f"blocks.{n}.{module}.{sub}.{leaf}"
            elif key.startswith("_conv_head."):
                k = key.replace("_conv_head.", "head.conv.")
            elif key.startswith("_bn1."):
                k = key.replace("_bn1.", "head.bn.")
            elif key.startswith("_fc."):
                k = key.replace("_fc.", "fc.")
            mine[k] = torch.from_numpy(np.array(value))
        self.load_state_dict(mine, strict=True)
        self.eval()


def random_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A random EfficientNet-PyTorch-layout Lite0 state dict with non-trivial batch norms."""
    torch.manual_seed(seed)
    model = TorchLite0()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    names = {"stem.conv": "_conv_stem", "stem.bn": "_bn0", "head.conv": "_conv_head"}
    names |= {"head.bn": "_bn1", "fc": "_fc"}
    parts = {
        "expand.conv": "_expand_conv",
        "expand.bn": "_bn0",
        "depthwise.conv": "_depthwise_conv",
    }
    parts |= {"depthwise.bn": "_bn1", "project.conv": "_project_conv", "project.bn": "_bn2"}
    state = {}
    for key, value in model.state_dict().items():
        prefix, leaf = key.rsplit(".", 1)
        if prefix.startswith("blocks."):
            _, n, rest = prefix.split(".", 2)
            new = f"_blocks.{n}.{parts[rest]}"
        else:
            new = names[prefix]
        state[f"{new}.{leaf}"] = value.numpy().copy()
    return state


class Logits(nn.Module):
    """A TorchLite0 that returns only its logits ``[B, 1000]`` (what CAM libraries expect)."""

    def __init__(self, net: TorchLite0) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["logits"]
