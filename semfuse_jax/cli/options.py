"""Flags shared by the tools that fuse: weights and every fusion setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from absl import flags

from semfuse_jax import cam, classifier, colour, fusion, optimise, runs
from semfuse_jax.errors import SemfuseError
from semfuse_jax.optimise import Schedule

BATCH = flags.DEFINE_integer("batch_size", 8, "Batch mode: sets fused together (same size).")
WEIGHTS = flags.DEFINE_string(
    "weights", None, "VGG19 weights file (default: $SEMFUSE_WEIGHTS/cache)."
)
SOLVER = flags.DEFINE_enum(
    "solver", "adam", optimise.SOLVERS, "adam: the schedule below; fast: short converging Adam."
)
EPOCHS = flags.DEFINE_integer("epochs", 100, "Adam epochs (learning rate changes per epoch).")
ITERS = flags.DEFINE_integer("iters", 100, "Adam steps per epoch.")
LR = flags.DEFINE_float("lr", 1.0, "Initial Adam learning rate, grey levels (of 255) per step.")
LR_DECAY = flags.DEFINE_float("lr_decay", 0.95, "Learning-rate multiplier after each epoch.")
TOL = flags.DEFINE_float("tol", 0.0, "Stop when an epoch improves the loss by < tol (0: never).")
LAYERS = flags.DEFINE_list("layers", ["conv1_1"], "VGG19 conv outputs in the feature loss.")
SEED = flags.DEFINE_integer("seed", 0, "PRNG seed (used by --init_noise).")
INIT_NOISE = flags.DEFINE_float("init_noise", 0.0, "Std of noise added to the initial mean image.")
TOP_K = flags.DEFINE_integer("top_k", 1, "Classes combined in each Grad-CAM (FM2/FM3).")
CLASS = flags.DEFINE_integer("target_class", None, "ImageNet class for every Grad-CAM.")
CLASSIFIER = flags.DEFINE_enum(
    "classifier",
    "auto",
    classifier.CLASSIFIERS,
    "ImageNet classifier of the CAMs (FM2/FM3/FM5) and, without --judge, of the class report; "
    "auto: vgg19 when the --weights file holds its classifier, else efficientnet_lite0 "
    "(installed with the package).",
)
JUDGE = flags.DEFINE_enum(
    "judge",
    None,
    classifier.NAMES,
    "An independent classifier that judges semantic retention (for each input, whether its "
    "top-1 class is in the fused image's top-5): adds semantic_kept and semantic_ratio to "
    "scores, tables and reports; must not be the fusion's CAM classifier (efficientnet_lite1 "
    "judges the default efficientnet_lite0).",
)
ALLOW_SAME_JUDGE = flags.DEFINE_bool(
    "allow_same_judge", False, "Let --judge be the classifier whose CAMs made the fusion."
)
CAM = flags.DEFINE_enum(
    "cam",
    "gradcam",
    cam.NAMES,
    "Class activation mapping of FM2/FM3/FM5: gradcam (the paper's), gradcam++, xgradcam, "
    "layercam, hirescam, eigencam (no gradients) or scorecam (forward passes only).",
)
CAM_LAYERS = flags.DEFINE_list(
    "cam_layers",
    [],
    "Grad-CAM layers whose maps are multiplied (default: conv3_4,conv4_4,conv5_4 for vgg19; "
    "stage6,stage7,head for efficientnet_lite0).",
)
COMPUTE_DTYPE = flags.DEFINE_enum(
    "compute_dtype", "float32", ["float32", "bfloat16"], "Network dtype in the Adam steps."
)
GRADIENT = flags.DEFINE_enum(
    "gradient",
    "auto",
    optimise.GRADIENTS,
    "auto: the exact quadratic form when the only loss layer is conv1_1 (float32), else autodiff "
    "through the network; quadratic or network to force one (same result to rounding).",
)
BATCHING = flags.DEFINE_enum(
    "batching",
    "auto",
    optimise.BATCHING,
    "How the sets of a batch share an epoch: vmap, or map (one after another); auto: map on one "
    "CPU device, vmap elsewhere.",
)
MAX_MEMORY = flags.DEFINE_float(
    "max_memory_gb", None, "Refuse sets estimated to need more (default: 80% of physical memory)."
)
COLOUR = flags.DEFINE_enum(
    "colour",
    None,
    list(colour.COLOUR_MODES),
    "Colour sets: rgb (fuse R, G, B), luminance (fuse the luminance, keep the chroma of the most "
    "colourful input), auto (luminance when a set mixes grey and colour inputs); default: the "
    "method's own (auto for fm4/fm5/ycbcr-style colour-true methods, else rgb).",
)
REFINE_EDGES = flags.DEFINE_bool(
    "refine_edges",
    True,
    "FM4: refine its result in the gradient domain towards the strongest input's edges, kept "
    "only when its quality gains far outweigh any loss (--norefine_edges: without it).",
)
FM2_TARGET = flags.DEFINE_enum(
    "fm2_target", "original", ["original", "weighted"], "FM2 target values."
)


CONFIG = flags.DEFINE_string(
    "config",
    None,
    "Re-run with the fusion settings of a past run: a report (its 'config') or a configuration "
    "JSON file; the method and every fusion flag then come from it.",
)
SCHEDULE_FLAGS = ("epochs", "iters", "lr", "lr_decay", "tol")


def read_config(path: str) -> fusion.FusionConfig:
    """The ``config`` of a report (or a bare configuration) written by a past run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SemfuseError(f"cannot read the configuration {path} ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise SemfuseError(f"{path} holds no fusion configuration")
    return fusion.FusionConfig.from_dict(data)


def config_from_flags(method: str | None) -> fusion.FusionConfig:
    """The fusion settings the flags describe, for ``method``; with ``--config``, the settings
    of that run (for ``method`` if one is given, else for the run's own method)."""
    if CONFIG.value:
        config = read_config(CONFIG.value)
        if method is None or method == config.method:
            return config
        return dataclasses.replace(config, method=method, method_params=None)  # its defaults
    given = [name for name in SCHEDULE_FLAGS if flags.FLAGS[name].present]
    if SOLVER.value == "fast" and given:
        raise SemfuseError(
            f"--solver=fast sets its own schedule; drop --{', --'.join(given)} or use --solver=adam"
        )
    schedule = Schedule(
        epochs=EPOCHS.value,
        iters=ITERS.value,
        lr=LR.value,
        lr_decay=LR_DECAY.value,
        tol=TOL.value,
    )
    return fusion.FusionConfig(
        method=method,
        layers=tuple(LAYERS.value),
        schedule=schedule,
        solver=SOLVER.value,
        top_k=TOP_K.value,
        target_class=CLASS.value,
        classifier=CLASSIFIER.value,
        cam=CAM.value,
        cam_layers=tuple(CAM_LAYERS.value),
        fm2_weighted_target=FM2_TARGET.value == "weighted",
        init_noise=INIT_NOISE.value,
        seed=SEED.value,
        compute_dtype=COMPUTE_DTYPE.value,
        gradient=GRADIENT.value,
        batching=BATCHING.value,
        colour=COLOUR.value,
        refine_edges=REFINE_EDGES.value,
    )


def memory_limit_bytes() -> int:
    """``--max_memory_gb`` in bytes, else 80% of the machine's physical memory."""
    if MAX_MEMORY.value is not None:
        if not 0 < MAX_MEMORY.value < 2**20:  # also refuses NaN and infinity
            raise SemfuseError("--max_memory_gb must be a positive number of GiB")
        return int(MAX_MEMORY.value * 2**30)
    return runs.default_memory_limit()
