"""The networks of a run, resolved from its config in one place.

:func:`load_models` is the only place a configuration's networks are chosen and loaded: the
library (:func:`semfuse_jax.fusion.fuse` given no weights), ``semfuse-fuse``, table mode and
``semfuse-eval`` all call it, so one config means the same networks everywhere (``auto``:
VGG19 when the VGG19 weights in use hold its classifier, else EfficientNet-Lite0) and a run
loads each network once.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

from semfuse_jax import classifier, judge
from semfuse_jax.models import vgg19

if TYPE_CHECKING:
    from semfuse_jax.fusion import FusionConfig


class Models(NamedTuple):
    """The networks of a run, each loaded once.

    Attributes:
      vgg: the VGG19 weights the method needs (None when it needs none).
      network: the classifier of the CAMs (and of the class report without a judge); None when
        neither is wanted.
      judge: the independent classifier of the semantic scores (``--judge``), or None.
    """

    vgg: vgg19.Weights | None
    network: classifier.Network | None
    judge: classifier.Network | None


def load_models(
    config: FusionConfig,
    weights_file: str | None,
    *,
    classes: bool = False,
    judge_name: str | None = None,
    allow_same_judge: bool = False,
) -> tuple[Models, FusionConfig]:
    """The networks ``config`` needs (:class:`Models`; the class report's with ``classes``, a
    judge with ``judge_name``) and ``config`` with its classifier resolved to a concrete name.

    ``weights_file`` None: ``$SEMFUSE_WEIGHTS``, the cache's file, else the built-in
    ``conv1_1`` (:func:`semfuse_jax.models.vgg19.load_weights`).

    Raises:
      SemfuseError: a judge that is the CAM classifier (unless ``allow_same_judge``), or a
        network that cannot be loaded.
    """
    w = network = judge_net = None
    wants_network = config.uses_cam or (classes and judge_name is None)
    wants_vgg = wants_network and config.classifier != "efficientnet_lite0"
    if config.required_outputs or wants_vgg or judge_name == "vgg19":
        full = wants_vgg or judge_name == "vgg19"
        w = vgg19.load_weights(weights_file, outputs=None if full else config.required_outputs)
    if wants_network:
        network = classifier.load(config.classifier, w)
        config = dataclasses.replace(config, classifier=classifier.network_name(network))
    if judge_name is not None:
        cams = [config.classifier] if config.uses_cam else []
        judge.check_independent(judge_name, cams, allow_same_judge)
        judge_net = classifier.load(judge_name, w)
    return Models(w, network, judge_net), config
