"""Fusing batches of N-image sets with a registered method (:mod:`semfuse_jax.methods`).

``images`` are ``[B, N, H, W, C]`` float arrays in ``[0, 1]``: B sets of N registered inputs, all
grey (C = 1) or all RGB (C = 3; a set mixing grey and colour is fused in colour with the grey
inputs replicated, see :func:`stack_set`). :class:`FusionConfig` holds every setting of a run and
is the single source of its defaults; :func:`fuse` runs a method's parts over the batch (each part
takes one set and is vmapped).

Grey sets are optimised as a single grey plane replicated inside the network, so the result is
exactly grey.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from semfuse_jax import cam, classifier, colour, fm4, methods, models
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models.vgg19 import Weights
from semfuse_jax.optimise import (
    BATCHING,
    FAST,
    GRADIENTS,
    SOLVERS,
    Schedule,
    batch_loss,
    optimise,
    refine_edges,
)

# The version of the settings a report records (``FusionConfig.to_dict``): raised whenever a
# setting is added, removed or changes meaning, so an old report is never re-run silently
# with settings it did not run with.
CONFIG_VERSION = 3
# Version 2 did not record ``method_params``; every version-2 report ran with the settings that
# are today's defaults (:data:`semfuse_jax.fm4.DEFAULT`, FM5's ``BlendParams()``), so it is
# read with those.
READS_VERSIONS = (2, 3)
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    """Settings of one fusion run.

    Every field but ``method`` and ``method_params`` is also a flag of the tools, named as the
    field (the schedule's as its own fields), with the field's default and, as its help, the
    text below (:func:`semfuse_jax.cli.options.define_config_flags`); ``choices`` in a field's
    metadata make it an enum flag.

    Attributes are grouped by concern: the method and its settings; colour; the optimisation
    (loss layers, schedule, solver); class activation maps; devices.

    Attributes:
      method: a name in :data:`semfuse_jax.methods.REGISTRY` (FM0–FM6 or a baseline).
      method_params: the method's own settings (:attr:`semfuse_jax.methods.Method.params`:
        :class:`semfuse_jax.fm4.Params`, :class:`semfuse_jax.methods.BlendParams`); None: its
        defaults (settings equal to the defaults are stored as None). :attr:`params` is what
        runs, and what :meth:`to_dict` records.
      refine_edges: run the gradient-domain edge refinement of a method that has one (FM4;
        :attr:`semfuse_jax.methods.Method.edges`) after its optimisation; False is its ablation.
      colour: ``rgb`` (fuse R, G, B), ``luminance`` (fuse the luminance, keep the chroma of the
        most colourful input per pixel) or ``auto`` (luminance for sets that mix grey and colour
        inputs, else RGB); None: the method's default (:attr:`semfuse_jax.methods.Method.colour`;
        FM4 and FM5 ``auto``, the paper's methods and the classical baselines ``rgb``).
      layers: VGG19 conv outputs in the loss (the paper: ``conv1_1``).
      schedule: the Adam schedule the optimising methods run (FM4 may stop earlier on quality).
      solver: ``adam`` (runs ``schedule``; the paper's by default) or ``fast``: Adam with the
        short, steeply decayed :data:`semfuse_jax.optimise.FAST` schedule that stops on
        convergence (``schedule`` then must be left at the default or be ``FAST``, and is
        stored as ``FAST``, so the config always names the schedule that ran).
      gradient: ``auto`` (the exact quadratic form when the only loss layer is ``conv1_1`` and
        the dtype float32, else autodiff through the network), ``quadratic`` or ``network``.
      compute_dtype: the network's dtype inside the optimisation: ``float32`` or ``bfloat16``.
      init_noise: std of Gaussian noise (grey levels) added to the initial image.
      seed: PRNG seed for ``init_noise``.
      classifier: the network whose CAMs FM2, FM3, FM5 and FM6 use: ``vgg19`` (the paper's;
        needs full VGG19 weights), ``efficientnet_lite0`` (installed with the package) or
        ``auto`` (VGG19 when the weights hold its classifier, else EfficientNet-Lite0); see
        ``classifier``.
      cam: the class activation mapping method of FM2/FM3/FM5/FM6 (:data:`semfuse_jax.cam.METHODS`;
        ``gradcam``, the paper's, by default).
      cam_layers: layers whose CAM maps are multiplied (FM2, FM3) or averaged (FM5); empty: the
        classifier's default (``cam_layers`` of :data:`semfuse_jax.classifier.REGISTRY`).
      top_k: classes combined in each input's Grad-CAM (1 = the top class).
      target_class: if set, the Grad-CAM class for every input (overrides ``top_k``).
      fm2_weighted_target: FM2 target values are the CAM-weighted features (else the originals).
      batching: ``auto``, ``vmap`` or ``map``: how the sets of a batch share an epoch
        (``semfuse_jax.optimise.sets_per_chunk``).
    """

    # the method and its settings
    method: str = dataclasses.field(default="fm0", metadata={"flag": False})
    method_params: Any = dataclasses.field(default=None, metadata={"flag": False})
    refine_edges: bool = True
    # colour
    colour: str | None = dataclasses.field(default=None, metadata={"choices": colour.COLOUR_MODES})
    # the optimisation: loss, schedule, solver
    layers: tuple[str, ...] = ("conv1_1",)
    schedule: Schedule = dataclasses.field(default_factory=Schedule)
    solver: str = dataclasses.field(default="adam", metadata={"choices": SOLVERS})
    gradient: str = dataclasses.field(default="auto", metadata={"choices": GRADIENTS})
    compute_dtype: str = dataclasses.field(default="float32", metadata={"choices": COMPUTE_DTYPES})
    init_noise: float = 0.0
    seed: int = 0
    # class activation maps
    classifier: str = dataclasses.field(
        default="auto", metadata={"choices": classifier.CLASSIFIERS}
    )
    cam: str = dataclasses.field(default="gradcam", metadata={"choices": cam.NAMES})
    cam_layers: tuple[str, ...] = ()
    top_k: int = 1
    target_class: int | None = None
    fm2_weighted_target: bool = False
    # devices
    batching: str = dataclasses.field(default="auto", metadata={"choices": BATCHING})

    def __post_init__(self) -> None:
        spec = methods.get(self.method)  # a known name
        if self.method_params is not None and (
            spec.params is None or type(self.method_params) is not type(spec.params)
        ):
            wanted = "none" if spec.params is None else type(spec.params).__qualname__
            raise SemfuseError(f"method {self.method} takes {wanted} as its settings")
        if self.method_params is not None and self.method_params == spec.params:
            object.__setattr__(self, "method_params", None)  # its defaults: one form of each
        if self.solver not in SOLVERS:
            raise SemfuseError(f"unknown solver {self.solver!r}; choose from {', '.join(SOLVERS)}")
        if self.solver == "fast":
            if self.schedule not in (Schedule(), FAST):
                raise SemfuseError("solver 'fast' sets its own schedule; leave the schedule out")
            object.__setattr__(self, "schedule", FAST)
        if not self.layers:
            raise SemfuseError("at least one loss layer is needed")
        if not 1 <= self.top_k <= 1000:
            raise SemfuseError("top_k must be between 1 and 1000")
        if not 0 <= self.init_noise <= 255:
            raise SemfuseError("init_noise must be between 0 and 255 grey levels")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise SemfuseError("compute_dtype must be float32 or bfloat16")
        if self.target_class is not None and not 0 <= self.target_class < 1000:
            raise SemfuseError("target_class must be an ImageNet class index 0..999")
        classifier.resolve(self.classifier, None)  # a known name
        cam.get(self.cam)  # a known CAM method
        if self.colour is not None and self.colour not in colour.COLOUR_MODES:
            raise SemfuseError(f"colour must be one of {', '.join(colour.COLOUR_MODES)}")
        if self.gradient not in GRADIENTS or self.batching not in BATCHING:
            raise SemfuseError(
                f"gradient must be one of {', '.join(GRADIENTS)}; "
                f"batching one of {', '.join(BATCHING)}"
            )

    @property
    def params(self) -> Any:
        """The method's settings that run: ``method_params``, else the method's defaults."""
        return self.spec.params if self.method_params is None else self.method_params

    def to_dict(self) -> dict:
        """Every setting as plain JSON values (the schedule and the method's settings, resolved,
        as nested dicts), with the :data:`CONFIG_VERSION` they follow under ``version``."""
        values = dataclasses.asdict(self)
        values["method_params"] = None if self.params is None else dataclasses.asdict(self.params)
        return {"version": CONFIG_VERSION, **values}

    @classmethod
    def from_dict(cls, data: dict) -> FusionConfig:
        """The inverse of :meth:`to_dict`; unknown or malformed entries are refused.

        A configuration of a version read (:data:`READS_VERSIONS`) may leave settings out
        (they take their defaults; version 2's ``method_params``: what it ran with). One
        without a version was written before versions existed, when some settings were not
        recorded (``refine_edges``, ``colour``): a setting it lacks is not given today's
        default, which may not be what ran; it is refused, naming what is missing.
        """
        fields = dict(data)
        version = fields.pop("version", None)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise SemfuseError(f"not a fusion configuration (unknown {', '.join(unknown)})")
        if version is not None and version not in READS_VERSIONS:
            raise SemfuseError(
                f"configuration version {version!r} is not one this semfuse_jax reads "
                f"({', '.join(map(str, READS_VERSIONS))}); re-run it with the semfuse_jax that "
                "wrote it"
            )
        missing = [name for name in names if name not in fields and name != "method_params"]
        if version is None and missing:
            raise SemfuseError(
                "the configuration was written by an older semfuse_jax and does not record "
                f"{', '.join(missing)}; it may not have run with today's defaults, so add "
                "those settings to it to re-run"
            )
        try:
            schedule = Schedule(**fields.pop("schedule", {}))
            for key in ("layers", "cam_layers"):
                if key in fields:
                    fields[key] = tuple(fields[key])
            if fields.get("method_params") is not None:
                fields["method_params"] = _params_from_dict(
                    methods.get(fields.get("method", cls.method)), fields["method_params"]
                )
            return cls(**fields, schedule=schedule)
        except (TypeError, ValueError) as exc:
            raise SemfuseError(f"not a fusion configuration ({exc})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def spec(self) -> methods.Method:
        """The registered method this configuration runs."""
        return methods.get(self.method)

    @property
    def colour_mode(self) -> str:
        """``colour``, or the method's default when it is None."""
        return self.colour or self.spec.colour

    @property
    def uses_cam(self) -> bool:
        """Whether the method needs a classifier's Grad-CAM maps."""
        return self.spec.maps is not None

    @property
    def required_outputs(self) -> tuple[str, ...]:
        """VGG19 outputs this configuration's feature loss needs (for an early check); the
        classifier of FM2/FM3/FM5/FM6 is loaded and checked separately (``classifier.load``)."""
        return self.layers if self.spec.optimised else ()


def _params_from_dict(spec: methods.Method, values: dict) -> Any:
    """``spec``'s settings from their :meth:`FusionConfig.to_dict` form (lists back to tuples);
    a key that is not one of them is refused."""
    if spec.params is None:
        raise SemfuseError(f"method {spec.name} has no settings, but method_params gives some")
    if not isinstance(values, dict):
        raise SemfuseError("method_params must be a mapping of setting names to values")
    known = {f.name for f in dataclasses.fields(spec.params)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SemfuseError(f"{spec.name} has no setting {', '.join(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return dataclasses.replace(spec.params, **converted)


@dataclasses.dataclass
class FusionResult:
    """Fused images and what a report or figure needs.

    Attributes:
      fused: ``[B, H, W, C]`` in ``[0, 1]``.
      average: ``[B, H, W, C]`` mean of the inputs (the initial image).
      loss_history: ``[E + 1, B]`` (None for FM3).
      steps: Adam steps per set (0 for FM3; FM4's edge refinement included).
      compile_seconds, optimise_seconds: timings of the optimisation (0 for FM3).
      probabilities: ``[B, N, H, W]`` CAM probability maps (FM2/FM3), else None.
      mixing: ``[B, N, H, W]`` mixing weights (FM3), else None.
      quality_history: ``[E + 1, B, K]`` FM4's quality scores per epoch of its optimisation
        (``quality_names`` of :class:`semfuse_jax.fm4.Params`; of the images as stored when
        :func:`fuse` was given ``bits``), else None.
      best_epoch: ``[B]`` epoch of the optimisation each FM4 result comes from (0: the pyramid
        start), else None.
      final_loss: ``[B]`` the feature loss of the images returned (None for non-optimising
        methods).
      edge_quality: ``[2, B, K]`` FM4's quality scores before and after its edge refinement
        (``edge_quality_names`` of :class:`semfuse_jax.fm4.Params`; as stored, as above),
        else None.
      edge_kept: ``[B]`` whether each FM4 result is the edge refinement's (else the epoch
        ``best_epoch``), else None.
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
    final_loss: np.ndarray | None = None
    edge_quality: np.ndarray | None = None
    edge_kept: np.ndarray | None = None


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
    if config.spec.optimised:
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


def _features(weights: Weights, images: jax.Array, layers: tuple[str, ...]) -> dict:
    """VGG19 features of ``[B, N, H, W, C]`` images as ``{layer: [B, N, h, w, c]}``."""
    b, n = images.shape[:2]
    feats = weights.features(images.reshape(b * n, *images.shape[2:]), layers)
    return {k: v.reshape(b, n, *v.shape[1:]) for k, v in feats.items()}


@partial(jax.jit, static_argnames=("top_k", "target_class", "cam_layers", "kind", "method"))
def cam_maps(
    network: classifier.Network,
    images: jax.Array,
    top_k: int = 1,
    target_class: int | None = None,
    cam_layers: tuple[str, ...] = cam.CAM_LAYERS,
    kind: str = "product",
    method: str = "gradcam",
) -> jax.Array:
    """CAM map of every input: ``[B, N, H, W, C]`` → ``[B, N, H, W]``; ``kind`` ``product``
    is the paper's probability map, ``mean`` FM5's (:func:`semfuse_jax.cam.semantic_map`);
    ``method`` a CAM method of :data:`semfuse_jax.cam.METHODS`.

    The maps are made at the classifier's input size (``classifier.resize_for``) and upsampled.
    """
    b, n, h, w, c = images.shape
    flat = classifier.resize_for(network, images.reshape(b * n, h, w, c))
    if kind == "mean":
        maps = cam.semantic_map(network, flat, top_k, target_class, cam_layers, method)
    else:
        maps, _, _ = cam.probability_map(network, flat, top_k, target_class, cam_layers, method)
    return jax.image.resize(maps, (b * n, h, w), "bilinear").reshape(b, n, h, w)


@partial(jax.jit, static_argnames=("target", "layers", "weighted_target"))
def fusion_targets(
    weights: Weights,
    images: jax.Array,
    target: methods.Target,
    layers: tuple[str, ...],
    choice: jax.Array | None = None,
    weighted_target: bool = False,
) -> dict[str, jax.Array]:
    """Fused target feature maps ``{layer: [B, h, w, c]}`` of ``[B, N, H, W, C]`` images.

    ``target`` is a method's feature rule (:attr:`semfuse_jax.methods.Method.target`);
    ``choice`` ``[B, N, H, W]`` its weights (CAM maps for FM2, the start's choice for FM4),
    resized to each layer's size.
    """
    targets = {}
    for layer, f in _features(weights, images, layers).items():  # f: [B, N, h, w, c]
        p = choice
        if p is not None and p.shape[-2:] != f.shape[-3:-1]:
            p = jax.image.resize(p, (*p.shape[:2], *f.shape[-3:-1]), "bilinear")
        rule = partial(target, weighted=weighted_target)
        targets[layer] = jax.vmap(rule)(f, p)
    return targets


@partial(jax.jit, static_argnames=("part", "params"))
def per_set(part: Callable, *arrays: jax.Array, params: Any = None) -> Any:
    """``part`` (a method's function of one set) vmapped over the batch axis of ``arrays``, with
    the method's settings ``params`` when given (a frozen, hashable dataclass: a static argument,
    so equal settings reuse one compilation), else with ``part``'s own defaults."""
    return jax.vmap(part if params is None else partial(part, params=params))(*arrays)


def fuse(
    weights: Weights | None,
    images: np.ndarray | jax.Array,
    config: FusionConfig,
    *,
    progress: Callable[[int, int, np.ndarray, float], None] | None = None,
    network: classifier.Network | None = None,
    bits: Sequence[int] | None = None,
) -> FusionResult:
    """Fuse a batch of image sets with ``config.method``.

    Colour sets are fused in RGB or, per ``config.colour_mode`` (:mod:`semfuse_jax.colour`), as
    luminance with the chroma kept; a batch holding both kinds is fused as two batches.

    Args: see :func:`fuse_planes`; ``images`` may be on the host or already on the device (a
      ``jax.Array``: the batch runs place the next batch while this one runs). ``bits``
      ``[B]``: the bit depth each result will be stored at
      (:func:`semfuse_jax.files.save_image`), or None to keep it float. FM4's quality stop
      and edge refinement then score every candidate as it will be stored, so their decisions
      and the scores in ``quality_history`` and ``edge_quality`` are those of the file.
    """
    if isinstance(images, jax.Array):
        images = images.astype(jnp.float32)
    else:
        images = np.asarray(images, np.float32)
    if images.ndim != 5 or images.shape[1] < 2 or images.shape[-1] not in (1, 3):
        raise SemfuseError(f"expected [B, N>=2, H, W, 1|3] images, got shape {images.shape}")
    if bits is not None and (len(bits) != len(images) or not set(bits) <= {8, 16}):
        raise SemfuseError(f"bits must give 8 or 16 for each of the {len(images)} sets")
    luminance = colour.use_luminance(config.colour_mode, images)
    if not luminance.any():
        return fuse_planes(weights, images, config, progress=progress, network=network, bits=bits)
    if not luminance.all():
        parts = [
            (np.flatnonzero(~luminance), dataclasses.replace(config, colour="rgb")),
            (np.flatnonzero(luminance), dataclasses.replace(config, colour="luminance")),
        ]
        results = [
            fuse(weights, images[i], c, progress=progress, network=network, bits=_take(bits, i))
            for i, c in parts
        ]
        return _merge([i for i, _ in parts], results)
    ycbcr = colour.to_ycbcr(jnp.asarray(images))
    chroma = colour.chroma_of_strongest(ycbcr[..., 1:])
    planes = ycbcr[..., :1]
    result = fuse_planes(
        weights, planes, config, progress=progress, network=network, chroma=chroma, bits=bits
    )
    return dataclasses.replace(
        result,
        fused=np.asarray(colour.combine(jnp.asarray(result.fused), chroma)),
        average=average_of(jnp.asarray(images)),
    )


def average_of(images: jax.Array) -> np.ndarray:
    """The mean of each set's inputs, ``[B, N, H, W, C]`` → ``[B, H, W, C]`` on the host."""
    return np.asarray(jnp.mean(images, axis=1))


def _take(bits: Sequence[int] | None, indices: np.ndarray) -> list[int] | None:
    """The bit depths of the sets ``indices`` (None stays None)."""
    return None if bits is None else [int(bits[i]) for i in indices]


def _merge(indices: Sequence[np.ndarray], results: Sequence[FusionResult]) -> FusionResult:
    """One result from results of disjoint parts of a batch (``indices``: each part's sets)."""
    order = np.argsort(np.concatenate(indices))

    def join(name: str, axis: int) -> np.ndarray | None:
        values = [getattr(r, name) for r in results]
        if any(v is None for v in values):
            return None
        if axis == 1:  # histories may differ in length (early stops): repeat the last epoch
            length = max(len(v) for v in values)
            values = [np.concatenate([v, np.repeat(v[-1:], length - len(v), 0)]) for v in values]
        return np.take(np.concatenate(values, axis=axis), order, axis=axis)

    return FusionResult(
        fused=join("fused", 0),
        average=join("average", 0),
        loss_history=join("loss_history", 1),
        steps=max(r.steps for r in results),
        compile_seconds=sum(r.compile_seconds for r in results),
        optimise_seconds=sum(r.optimise_seconds for r in results),
        probabilities=join("probabilities", 0),
        mixing=join("mixing", 0),
        quality_history=join("quality_history", 1),
        best_epoch=join("best_epoch", 0),
        final_loss=join("final_loss", 0),
        edge_quality=join("edge_quality", 1),
        edge_kept=join("edge_kept", 0),
    )


def fuse_planes(
    weights: Weights | None,
    images: np.ndarray | jax.Array,
    config: FusionConfig,
    *,
    progress: Callable[[int, int, np.ndarray, float], None] | None = None,
    network: classifier.Network | None = None,
    chroma: jax.Array | None = None,
    bits: Sequence[int] | None = None,
) -> FusionResult:
    """Fuse a batch of image sets with ``config.method`` on the planes given (grey, RGB, or the
    luminance of a colour-true fusion), with no colour handling.

    Args:
      weights: VGG19 weights holding the layers ``config.required_outputs`` need (and, for
        ``classifier="vgg19"``, its classifier); None loads what
        :func:`semfuse_jax.models.load_models` loads for ``config`` (``$SEMFUSE_WEIGHTS``, the
        cache's file, else the built-in ``conv1_1``), as the tools do. Unused by the methods
        that neither optimise nor make CAMs.
      images: ``[B, N, H, W, C]`` in ``[0, 1]`` (N ≥ 2; C = 1 grey or 3 RGB).
      config: see :class:`FusionConfig`.
      progress: per-epoch callback, see :func:`semfuse_jax.optimise.optimise`.
      network: the classifier of the methods that need CAM maps; None loads
        ``config.classifier`` (``auto`` resolved against ``weights``, or as above).
      chroma: for a colour-true fusion, the chroma ``[B, H, W, 2]`` the fused luminance will be
        combined with: a method with bounds (FM4) then also keeps its steps from taking the
        luminance further out of that chroma's gamut than its start
        (:func:`semfuse_jax.colour.keep_chroma`).
      bits: ``[B]`` bit depths the results will be stored at: FM4 scores its candidates as
        stored (:func:`semfuse_jax.fm4.quality`, with ``chroma``); None: as they are.
    """
    spec = config.spec
    images = jnp.asarray(images, jnp.float32)
    average = average_of(images)
    if spec.combine is not None:
        return FusionResult(fused=np.asarray(spec.combine(images), np.float32), average=average)
    if weights is None and (spec.optimised or (spec.maps is not None and network is None)):
        loaded, _ = models.load_models(config, None)
        weights, network = loaded.vgg, network if network is not None else loaded.network
    maps = None
    if spec.maps is not None:
        network = network if network is not None else classifier.load(config.classifier, weights)
        layers = classifier.cam_layers_for(network, config.cam_layers)
        maps = cam_maps(
            network, images, config.top_k, config.target_class, layers, spec.maps, config.cam
        )
    if spec.select is not None:  # no optimisation: the classifier's choice of candidates
        fused, mixing = spec.select(network, images, maps, params=config.params)
    elif spec.mix is not None:  # no optimisation: a mix or blend of the inputs
        fused, mixing = per_set(spec.mix, images, maps, params=config.params)
    if spec.select is not None or spec.mix is not None:
        return FusionResult(
            fused=np.asarray(fused),
            average=average,
            probabilities=np.asarray(maps),
            mixing=np.asarray(mixing),
        )
    weights.require(config.required_outputs)
    params = config.params
    init, choice = per_set(spec.start, images, params=params)
    targets = fusion_targets(
        weights,
        images,
        spec.target,
        config.layers,
        maps if choice is None else choice,
        config.fm2_weighted_target,
    )
    if config.init_noise > 0:
        noise = set_noise(config.seed, np.asarray(images), init.shape[1:]) * config.init_noise
        init = init + noise / 255.0
    bounds = None if spec.bounds is None else per_set(spec.bounds, images, params=params)
    init = jnp.clip(init, *(bounds or (0.0, 1.0)))
    if bounds is not None and chroma is not None:
        bounds = colour.keep_chroma(bounds, jnp.asarray(chroma), init)
    sources = np.asarray(images) if spec.quality_stop else None
    quality = (
        fm4.quality(sources, params.quality_names, bits, chroma) if spec.quality_stop else None
    )
    boxes = None if bounds is None else tuple(np.asarray(b) for b in bounds)
    result = optimise(
        weights,
        init,
        targets,
        config.schedule,
        progress=progress,
        dtype=jnp.bfloat16 if config.compute_dtype == "bfloat16" else None,
        quality=quality,
        gradient=config.gradient,
        batching=config.batching,
        bounds=boxes,
    )
    kept = -1 if result.best_epoch is None else result.best_epoch
    final_loss = result.loss_history[kept, np.arange(len(init))]
    fused, edge = result.images, None
    if spec.edges is not None and config.refine_edges:
        field, strength = per_set(spec.edges, images, params=params)
        names = params.edge_quality_names
        judge = None if sources is None else fm4.quality(sources, names, bits, chroma)
        edge = refine_edges(
            fused, field, strength, params.edge_schedule, fidelity=params.edge_fidelity,
            quality=judge, batching=config.batching, bounds=boxes, trade=params.edge_trade,
        )  # fmt: skip
        refined = edge.best_epoch > 0 if edge.best_epoch is not None else np.ones(len(init), bool)
        fused = edge.images
        if refined.any():  # the feature loss of the images returned
            final_loss = np.where(
                refined, np.asarray(batch_loss(weights, fused, targets)), final_loss
            )
    return FusionResult(
        fused=fused,
        average=average,
        loss_history=result.loss_history,
        steps=result.steps + (0 if edge is None else edge.steps),
        compile_seconds=result.compile_seconds + (0 if edge is None else edge.compile_seconds),
        optimise_seconds=result.optimise_seconds + (0 if edge is None else edge.optimise_seconds),
        probabilities=None if maps is None else np.asarray(maps),
        quality_history=result.quality_history,
        best_epoch=result.best_epoch,
        final_loss=final_loss,
        edge_quality=None if edge is None else edge.quality_history,
        edge_kept=None if edge is None else refined,
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
