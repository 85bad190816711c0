"""The paper's fusion methods FM0–FM5 for batches of N-image sets.

``images`` are ``[B, N, H, W, C]`` float arrays in ``[0, 1]``: B sets of N registered inputs, all
grey (C = 1) or all RGB (C = 3; a set mixing grey and colour is fused in colour with the grey
inputs replicated, see :func:`stack_set`).

- FM0: image optimisation towards the choose-max (Ψ0) of the inputs' VGG19 features.
- FM1: the same towards the majority-filtered choice (Ψ1).
- FM2: FM0 with each input's features weighted by its Grad-CAM probability map for the selection
  (the target holds the original feature values by default; ``fm2_weighted_target`` uses the
  weighted ones).
- FM3: no optimisation: ``I* = Σ_i P_Mi · I_i`` with the CAM mixing weights.
- FM5 (beyond the paper): each pixel from the input whose semantic map (mean of its normalised
  Grad-CAM layer maps) is highest, blended in a Laplacian pyramid; keeps each input's
  class-relevant region intact (``benchmarks/semantic.py`` measures the classes kept).
- FM4 (beyond the paper): Adam from an activity-guided Laplacian pyramid
  (:func:`semfuse_jax.baselines.activity_pyramid`) towards the inputs' features chosen by the
  same channel-consistent local activity, keeping per set the last epoch that improved on
  source-referenced quality (Q_E and Petrovic Q^{AB/F}, neither worse; :func:`fm4_quality`).
  ``benchmarks/fm4_experiment.py`` and ``benchmarks/RESULTS.md`` show why.

Grey sets are optimised as a single grey plane replicated inside the network, so the result is
exactly grey.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import cam, classifier, metrics, pyramid, rules
from semfuse_jax.baselines import BASELINES, activity_pyramid, fuse_baseline
from semfuse_jax.errors import SemfuseError
from semfuse_jax.optimise import BATCHING, GRADIENTS, Schedule, optimise
from semfuse_jax.weights import Weights, load_weights

METHODS: tuple[str, ...] = ("fm0", "fm1", "fm2", "fm3", "fm4", "fm5")
FM5_LEVELS = 3  # pyramid detail levels of FM5's blend (benchmarks/semantic.py)
ALL_METHODS: tuple[str, ...] = METHODS + BASELINES


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Settings of one fusion run.

    Attributes:
      method: one of :data:`METHODS` or a classical baseline (:data:`BASELINES`).
      layers: VGG19 conv outputs in the loss (the paper: ``conv1_1``).
      schedule: Adam schedule (FM0–FM2, FM4; FM4 may stop earlier on quality).
      classifier: the network whose Grad-CAMs FM2/FM3 use: ``vgg19`` (the paper's; needs full
        VGG19 weights), ``efficientnet_lite0`` (installed with the package) or ``auto`` (VGG19
        when the weights hold its classifier, else EfficientNet-Lite0); see ``classifier``.
      top_k: classes combined in each input's Grad-CAM (1 = the top class).
      target_class: if set, the Grad-CAM class for every input (overrides ``top_k``).
      cam_layers: layers whose Grad-CAM maps are multiplied (FM2, FM3); empty: the
        classifier's default (:data:`semfuse_jax.classifier.CAM_LAYERS`).
      fm2_weighted_target: FM2 target values are the CAM-weighted features (else the originals).
      init_noise: std of Gaussian noise (grey levels) added to the initial image.
      compute_dtype: the network's dtype inside the optimisation: ``float32`` or ``bfloat16``.
      gradient: ``auto`` (the exact quadratic form when the only loss layer is ``conv1_1`` and
        the dtype float32, else autodiff through the network), ``quadratic`` or ``network``.
      batching: ``auto``, ``vmap`` or ``map``: how the sets of a batch share an epoch
        (``semfuse_jax.optimise.sets_per_chunk``).
      seed: PRNG seed for ``init_noise``.
    """

    method: str = "fm0"
    layers: tuple[str, ...] = ("conv1_1",)
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    classifier: str = "auto"
    top_k: int = 1
    target_class: int | None = None
    cam_layers: tuple[str, ...] = ()
    fm2_weighted_target: bool = False
    init_noise: float = 0.0
    seed: int = 0
    compute_dtype: str = "float32"
    gradient: str = "auto"
    batching: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in ALL_METHODS:
            known = ", ".join(ALL_METHODS)
            raise SemfuseError(f"unknown method {self.method!r}; choose from {known}")
        if not self.layers:
            raise SemfuseError("at least one loss layer is needed")
        if not 1 <= self.top_k <= 1000:
            raise SemfuseError("top_k must be between 1 and 1000")
        if not 0 <= self.init_noise <= 255:
            raise SemfuseError("init_noise must be between 0 and 255 grey levels")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise SemfuseError("compute_dtype must be float32 or bfloat16")
        if self.target_class is not None and not 0 <= self.target_class < 1000:
            raise SemfuseError("target_class must be an ImageNet class index 0..999")
        classifier.resolve(self.classifier, None)  # a known name
        if self.gradient not in GRADIENTS or self.batching not in BATCHING:
            raise SemfuseError(
                f"gradient must be one of {', '.join(GRADIENTS)}; "
                f"batching one of {', '.join(BATCHING)}"
            )

    def to_dict(self) -> dict:
        """Every setting as plain JSON values (the schedule as a nested dict)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FusionConfig:
        """The inverse of :meth:`to_dict`; unknown or malformed entries are refused."""
        try:
            fields = dict(data)
            schedule = Schedule(**fields.pop("schedule", {}))
            for key in ("layers", "cam_layers"):
                if key in fields:
                    fields[key] = tuple(fields[key])
            return cls(**fields, schedule=schedule)
        except (TypeError, ValueError) as exc:
            raise SemfuseError(f"not a fusion configuration ({exc})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def uses_cam(self) -> bool:
        return self.method in ("fm2", "fm3", "fm5")

    @property
    def required_outputs(self) -> tuple[str, ...]:
        """VGG19 outputs this configuration's feature loss needs (for an early check); the
        classifier of FM2/FM3 is loaded and checked separately (``classifier.load``)."""
        if self.method in BASELINES or self.method in ("fm3", "fm5"):
            return ()
        return self.layers


@dataclasses.dataclass
class FusionResult:
    """Fused images and what a report or figure needs.

    Attributes:
      fused: ``[B, H, W, C]`` in ``[0, 1]``.
      average: ``[B, H, W, C]`` mean of the inputs (the initial image).
      loss_history: ``[E + 1, B]`` (None for FM3).
      steps: Adam steps per set (0 for FM3).
      compile_seconds, optimise_seconds: timings of the optimisation (0 for FM3).
      probabilities: ``[B, N, H, W]`` CAM probability maps (FM2/FM3), else None.
      mixing: ``[B, N, H, W]`` mixing weights (FM3), else None.
      quality_history: ``[E + 1, B, 2]`` FM4's Q_E and Petrovic Q^{AB/F} per epoch, else None.
      best_epoch: ``[B]`` epoch each FM4 result comes from (0: the pyramid start), else None.
    """

    fused: np.ndarray
    average: np.ndarray
    loss_history: np.ndarray | None = None
    steps: int = 0
    compile_seconds: float = 0.0
    optimise_seconds: float = 0.0
    probabilities: np.ndarray | None = None
    mixing: np.ndarray | None = None
    quality_history: np.ndarray | None = None
    best_epoch: np.ndarray | None = None


def check_same_size(sizes: Sequence[tuple[int, int]]) -> None:
    """Refuse a set whose ``(height, width)`` sizes differ."""
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{w}x{h}" for h, w in sizes)
        raise SemfuseError(f"input images differ in size ({listed}); register/resize them first")


def stack_set(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack one set of ``[H, W, 1|3]`` images to ``[N, H, W, C]``.

    All grey → C = 1. Any colour → C = 3, with grey inputs replicated.

    Raises:
      SemfuseError: fewer than two images, or sizes that differ.
    """
    if len(images) < 2:
        raise SemfuseError("fusion needs at least two input images")
    check_same_size([image.shape[:2] for image in images])
    channels = max(image.shape[-1] for image in images)
    return np.stack([np.broadcast_to(image, (*image.shape[:2], channels)) for image in images])


def memory_estimate(sets: int, inputs: int, height: int, width: int, config: FusionConfig) -> int:
    """Rough peak bytes of fusing ``sets`` sets of ``inputs`` images of ``height × width``.

    Counts float32 feature maps: the inputs' and the target's maps at the loss layers, the
    optimiser's forward/backward maps (about six per layer), and for FM2/FM3 a forward and backward
    pass through the whole network per input.
    """
    pixels = height * width
    per_pixel = 4 * 3 * (inputs + 4)  # images, Adam moments, gradients
    if config.method in METHODS:
        channels = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
        for layer in config.layers:
            block = int(layer[4]) if layer[4:5].isdigit() else 1
            per_pixel += 4 * (inputs + 7) * channels.get(block, 64) / 4 ** (block - 1)
    if config.uses_cam:
        per_pixel += 2 * 4 * inputs * (2 * 64 + 2 * 128 / 4 + 4 * 256 / 16 + 4 * 512 / 64 + 4 * 2)
    return int(sets * pixels * per_pixel)


def group_batches(shapes: Sequence[tuple[int, ...]], batch_size: int) -> list[list[int]]:
    """Indices of same-shape sets in chunks of at most ``batch_size``, in first-seen order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    size = max(1, batch_size)
    return [ids[k : k + size] for ids in groups.values() for k in range(0, len(ids), size)]


def _flat_features(weights: Weights, images: jax.Array, layers: tuple[str, ...]) -> dict:
    """VGG19 features of ``[B, N, H, W, C]`` images as ``{layer: [N, B, h, w, c]}``."""
    b, n = images.shape[:2]
    feats = weights.features(images.reshape(b * n, *images.shape[2:]), layers)
    return {k: jnp.swapaxes(v.reshape(b, n, *v.shape[1:]), 0, 1) for k, v in feats.items()}


@partial(jax.jit, static_argnames=("top_k", "target_class", "cam_layers", "semantic"))
def cam_probabilities(
    network: classifier.Network,
    images: jax.Array,
    top_k: int = 1,
    target_class: int | None = None,
    cam_layers: tuple[str, ...] = cam.CAM_LAYERS,
    semantic: bool = False,
) -> jax.Array:
    """CAM probability map of every input: ``[B, N, H, W, C]`` → ``[B, N, H, W]``; the paper's
    product map, or with ``semantic`` FM5's mean map (:func:`semfuse_jax.cam.semantic_map`).

    The maps are made at the classifier's input size (``classifier.resize_for``) and upsampled.
    """
    b, n, h, w, c = images.shape
    flat = classifier.resize_for(network, images.reshape(b * n, h, w, c))
    if semantic:
        probs = cam.semantic_map(network, flat, top_k, target_class, cam_layers)
    else:
        probs, _, _ = cam.probability_map(network, flat, top_k, target_class, cam_layers)
    return jax.image.resize(probs, (b * n, h, w), "bilinear").reshape(b, n, h, w)


@partial(jax.jit, static_argnames=("method", "layers", "weighted_target"))
def fusion_targets(
    weights: Weights,
    images: jax.Array,
    method: str,
    layers: tuple[str, ...],
    probabilities: jax.Array | None = None,
    weighted_target: bool = False,
) -> dict[str, jax.Array]:
    """Fused target feature maps ``{layer: [B, h, w, c]}`` of ``[B, N, H, W, C]`` images.

    ``probabilities`` ``[B, N, H, W]`` are the CAM maps (FM2) or the activity weights (FM4).
    """
    feats = _flat_features(weights, images, layers)
    targets = {}
    for layer, f in feats.items():  # f: [N, B, h, w, c]
        if method == "fm0":
            targets[layer] = rules.choose_max(f)
        elif method == "fm1":
            targets[layer] = rules.majority_filter(f)
        else:
            p = jnp.swapaxes(probabilities, 0, 1)  # [N, B, H, W]
            if p.shape[-2:] != f.shape[-3:-1]:
                p = jax.image.resize(p, (*p.shape[:2], *f.shape[-3:-1]), "bilinear")
            if method == "fm4":
                targets[layer] = rules.blend(f, p)
            else:
                targets[layer] = rules.cam_weighted_choose_max(f, p, weighted_target)
    return targets


@jax.jit
def cam_mix(images: jax.Array, probabilities: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FM3: images ``[B, N, H, W, C]``, maps ``[B, N, H, W]`` → (``[B, H, W, C]``, weights)."""
    weights = jnp.swapaxes(cam.mixing_weights(jnp.swapaxes(probabilities, 0, 1)), 0, 1)
    return jnp.sum(weights[..., None] * images, axis=1), weights


@jax.jit
def semantic_blend(images: jax.Array, maps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """FM5: each pixel goes to the input whose semantic map is highest (ties: the first), the
    choice blended over :data:`FM5_LEVELS` pyramid levels so seams are soft.

    ``images`` ``[B, N, H, W, C]``, ``maps`` ``[B, N, H, W]`` → (``[B, H, W, C]``, the choice
    ``[B, N, H, W]``).
    """
    choice = jax.nn.one_hot(jnp.argmax(maps, axis=1), images.shape[1], axis=1)
    fused = pyramid.blend(jnp.moveaxis(images, 1, 0), jnp.moveaxis(choice, 1, 0), FM5_LEVELS)
    return jnp.clip(fused, 0.0, 1.0), choice


def fuse(
    weights: Weights | None,
    images: np.ndarray,
    config: FusionConfig,
    progress: Callable[[int, int, np.ndarray, float], None] | None = None,
    network: classifier.Network | None = None,
) -> FusionResult:
    """Fuse a batch of image sets with ``config.method``.

    Args:
      weights: VGG19 weights holding the layers ``config.required_outputs`` need; None loads
        the default ones (``weights.load_weights()``: ``$SEMFUSE_WEIGHTS``, the cache's file,
        else the built-in ``conv1_1``). Unused by the baselines, FM3 and FM5.
      images: ``[B, N, H, W, C]`` in ``[0, 1]`` (N ≥ 2; C = 1 grey or 3 RGB).
      config: see :class:`FusionConfig`.
      progress: per-epoch callback, see :func:`semfuse_jax.optimise.optimise`.
      network: the classifier of FM2/FM3; None loads ``config.classifier``.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 5 or images.shape[1] < 2 or images.shape[-1] not in (1, 3):
        raise SemfuseError(f"expected [B, N>=2, H, W, 1|3] images, got shape {images.shape}")
    average = jnp.mean(images, axis=1)
    if config.method in BASELINES:
        fused = fuse_baseline(config.method, np.asarray(images))
        return FusionResult(fused=fused, average=np.asarray(average))
    if config.required_outputs:
        if weights is None:  # $SEMFUSE_WEIGHTS, the cache's file, else the built-in conv1_1
            weights = load_weights(outputs=config.required_outputs)
        weights.require(config.required_outputs)
    probabilities = mixing = None
    if config.uses_cam:
        network = network if network is not None else classifier.load(config.classifier, weights)
        layers = classifier.cam_layers_for(network, config.cam_layers)
        probabilities = cam_probabilities(
            network, images, config.top_k, config.target_class, layers, config.method == "fm5"
        )
    if config.method in ("fm3", "fm5"):  # no optimisation: a mix or blend of the inputs
        mix = semantic_blend if config.method == "fm5" else cam_mix
        fused, mixing = mix(images, probabilities)
        return FusionResult(
            fused=np.asarray(fused),
            average=np.asarray(average),
            probabilities=np.asarray(probabilities),
            mixing=np.asarray(mixing),
        )
    init, quality, choice = average, None, probabilities
    if config.method == "fm4":
        init, activity = activity_pyramid(images)  # activity: [B, N, H, W]
        choice = jax.vmap(rules.activity_weights, in_axes=(0, None, None))(activity, 1, 0)
        quality = fm4_quality(np.asarray(images))
    targets = fusion_targets(
        weights, images, config.method, config.layers, choice, config.fm2_weighted_target
    )
    if config.init_noise > 0:
        noise = set_noise(config.seed, np.asarray(images), init.shape[1:]) * config.init_noise
        init = jnp.clip(init + noise / 255.0, 0.0, 1.0)
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else None
    result = optimise(
        weights,
        init,
        targets,
        config.schedule,
        progress,
        dtype,
        quality,
        config.gradient,
        config.batching,
    )
    return FusionResult(
        fused=result.images,
        average=np.asarray(average),
        loss_history=result.loss_history,
        steps=result.steps,
        compile_seconds=result.compile_seconds,
        optimise_seconds=result.optimise_seconds,
        probabilities=None if probabilities is None else np.asarray(probabilities),
        quality_history=result.quality_history,
        best_epoch=result.best_epoch,
    )


def set_noise(seed: int, images: np.ndarray, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal noise ``[B, *shape]``, one draw per set from ``fold_in(key(seed), set)``
    where a set is identified by a hash of its pixels: a set gets the same noise alone, in any
    batch, at any position, and when resumed."""
    keys = [
        jax.random.fold_in(
            jax.random.key(seed),
            int.from_bytes(hashlib.sha256(np.ascontiguousarray(s).tobytes()).digest()[:4], "little")
            & 0x7FFFFFFF,
        )
        for s in images
    ]
    return jnp.stack([jax.random.normal(k, shape) for k in keys])


def fm4_quality(images: np.ndarray) -> Callable[[np.ndarray], np.ndarray] | None:
    """FM4's stopping signal for a batch of sets ``[B, N, H, W, C]``: a function scoring
    candidates ``[B, H, W, C] → [B, 2]`` by Q_E and Petrovic Q^{AB/F} against the inputs
    (luminance, float64); both use only the inputs, no reference image. None for images
    smaller than the metrics' 11×11 minimum (FM4 then runs its whole schedule)."""
    if min(images.shape[2:4]) < 11:
        return None
    sources = metrics.luminance_255(images)

    def score(fused: np.ndarray) -> np.ndarray:
        candidate = metrics.luminance_255(fused)
        return np.stack(
            [metrics.qe(sources, candidate), metrics.qabf_petrovic(sources, candidate)], axis=-1
        )

    return score
