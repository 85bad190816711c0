"""Semantic retention judged by an independent classifier (jittable, batched on the device).

A fused image keeps input ``i`` when the judge's top-1 class of input ``i``, ``c_i``, is among
the judge's top-5 classes of the fused image. For a set of ``N`` inputs and its fused image F:

- ``semantic_kept``: the share of the inputs kept (1.0: every input's class survives);
- ``semantic_ratio``: ``min_i P(c_i | F) / P(c_i | I_i)``, how much of the least kept input's
  confidence the fused image retains (1.0: as sure as on the input itself; it may exceed 1).

The judge must not be the network whose CAMs steered the fusion: a method judged by the network
it was steered towards proves little. :func:`check_independent` refuses that unless asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import classifier
from semfuse_jax.errors import SemfuseError

TOP_K = 5  # a class is kept when it is among the fused image's top 5
COLUMNS: tuple[str, ...] = ("semantic_kept", "semantic_ratio")  # both higher is better


class Retention(NamedTuple):
    """Retention of a batch of ``B`` sets of ``N`` inputs.

    Attributes:
      classes: ``[B, N]`` top-1 class of each input.
      kept: ``[B, N]`` whether it is in the fused image's top-k.
      input_probability: ``[B, N]`` ``P(c_i | I_i)``.
      fused_probability: ``[B, N]`` ``P(c_i | F)``.
      share: ``[B]`` share of the inputs kept (``semantic_kept``).
      ratio: ``[B]`` ``min_i P(c_i | F) / P(c_i | I_i)`` (``semantic_ratio``).
    """

    classes: jax.Array
    kept: jax.Array
    input_probability: jax.Array
    fused_probability: jax.Array
    share: jax.Array
    ratio: jax.Array


@partial(jax.jit, static_argnames="k")
def retention(input_probs: jax.Array, fused_probs: jax.Array, k: int = TOP_K) -> Retention:
    """Retention from class probabilities: ``input_probs`` ``[B, N, K]``, ``fused_probs``
    ``[B, K]`` (``K`` classes) → :class:`Retention`."""
    classes = jnp.argmax(input_probs, axis=-1)
    top = jax.lax.top_k(fused_probs, k)[1]
    kept = jnp.any(classes[..., None] == top[:, None, :], axis=-1)
    p_input = jnp.take_along_axis(input_probs, classes[..., None], axis=-1)[..., 0]
    p_fused = jnp.take_along_axis(fused_probs, classes, axis=-1)
    share = jnp.mean(kept.astype(input_probs.dtype), axis=-1)
    return Retention(classes, kept, p_input, p_fused, share, jnp.min(p_fused / p_input, axis=-1))


@jax.jit
def judge(network: classifier.Network, inputs: jax.Array, fused: jax.Array) -> Retention:
    """Retention of fused images by ``network``: inputs ``[B, N, H, W, C]``, fused
    ``[B, H, W, C']`` in ``[0, 1]`` (``C, C'`` 1 or 3)."""
    b, n = inputs.shape[:2]
    input_probs = classifier.classify(network, inputs.reshape(b * n, *inputs.shape[2:]))
    fused_probs = classifier.classify(network, fused)
    return retention(input_probs.reshape(b, n, -1), fused_probs)


def scores(network: classifier.Network, inputs: np.ndarray, fused: np.ndarray) -> list[dict]:
    """Per set of a batch (``[B, N, H, W, C]``, ``[B, H, W, C']``): the :data:`COLUMNS` and a
    ``semantic`` record naming the judge and, per input, its class and what the fused image
    kept of it."""
    result = jax.device_get(judge(network, jnp.asarray(inputs), jnp.asarray(fused)))
    names = classifier.class_names()
    rows = []
    for b in range(len(result.share)):
        per_input = [
            {
                "class": int(c),
                "label": names[int(c)],
                "kept": bool(result.kept[b, i]),
                "input_probability": float(result.input_probability[b, i]),
                "fused_probability": float(result.fused_probability[b, i]),
            }
            for i, c in enumerate(result.classes[b])
        ]
        rows.append(
            {
                "semantic_kept": float(result.share[b]),
                "semantic_ratio": float(result.ratio[b]),
                "semantic": {
                    "judge": classifier.network_name(network),
                    "top_k": TOP_K,
                    "inputs": per_input,
                },
            }
        )
    return rows


def check_independent(judge_name: str, cam_classifiers: Iterable[str], allow_same: bool) -> None:
    """Refuse a judge that is one of the (resolved) classifiers whose CAMs made the fusions,
    unless ``allow_same``."""
    if not allow_same and judge_name in set(cam_classifiers):
        raise SemfuseError(
            f"the judge {judge_name} is the classifier whose CAMs steered the fusion, so it "
            "cannot judge it independently; choose another --judge (e.g. "
            f"{_other(judge_name)}) or pass --allow_same_judge"
        )


def _other(name: str) -> str:
    return "efficientnet_lite1" if name != "efficientnet_lite1" else "efficientnet_lite0"


def describe(record: dict[str, Any]) -> str:
    """One line per input of a ``semantic`` record: its class and whether it was kept."""
    lines = [f"judge          {record['judge']} (kept: top-1 of the input in the fused top-5)"]
    for i, row in enumerate(record["inputs"]):
        lines.append(
            f"input {i + 1:<8d} {row['label']} ({row['input_probability']:.3f} → "
            f"{row['fused_probability']:.3f}) {'kept' if row['kept'] else 'lost'}"
        )
    return "\n".join(lines)
