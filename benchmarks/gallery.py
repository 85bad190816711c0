"""A gallery of full-resolution crops per domain and a "which method for which images" table,
both from the files and numbers of a ``quality.py`` run.

For one set per domain, a crop (``--crop`` pixels, shown 1:1) where the inputs differ most is cut
from each input, the average, the best classical baseline of that domain (by mean Q_E), FM0 and
FM4; each caption carries the method and the Q_E of the whole fused file. The table names, per
domain, the best method by mean Q_E, Q_W, Petrovic Q^{AB/F}, SSIM and (where they apply) chroma
error and MEF-SSIM.

  python benchmarks/quality.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5
  python benchmarks/gallery.py

Writes ``figures/gallery_DOMAIN.png`` and ``--out/recommend.md`` / ``.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image
from tables import save

from semfuse_jax import files, fusion, methods, metrics, tables
from semfuse_jax.figure import LABEL_HEIGHT, panel

_DATA = flags.DEFINE_string("data", "../shared/data", "Root of DOMAIN/SET folders.")
_QUALITY = flags.DEFINE_string("quality", "benchmarks/out/quality", "A quality.py output folder.")
_FIGURES = flags.DEFINE_string("figures", "benchmarks/figures", "Where the gallery goes.")
_OUT = flags.DEFINE_string("out", "benchmarks/out/quality", "Where the table goes.")
_CROP = flags.DEFINE_integer("crop", 176, "Crop size in pixels (shown 1:1).")
_SETS = flags.DEFINE_list(
    "sets",
    [
        "multifocus_grey/clock",
        "multifocus_colour_lytro/lytro-05",
        "medical/c01",
        "medical_colour/mri_spect_30",
        "ir_visible/TNO_Kayak",
        "multi_exposure/chair",
    ],
    "One DOMAIN/SET per gallery.",
)
BASELINES = ("max", "dwt", "laplacian", "ycbcr", "mertens")


def crop_box(images: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size``² window where the inputs differ most from their mean."""
    spread = np.abs(images - images.mean(axis=0)).mean(axis=(0, -1))
    h, w = spread.shape
    size = min(size, h, w)
    step = max(1, size // 4)
    best, corner = -1.0, (0, 0)
    for y in range(0, h - size + 1, step):
        for x in range(0, w - size + 1, step):
            value = spread[y : y + size, x : x + size].mean()
            if value > best:
                best, corner = value, (y, x)
    return corner


def domain_means(rows: list[dict], domain: str) -> dict[str, dict[str, float]]:
    """``{method: {column: mean}}`` of one domain (columns without a value left out)."""
    return {
        r["method"]: {k: v for k, v in r.items() if k in tables.COLUMNS and v is not None}
        for r in tables.summarise(rows)
        if r["domain"] == domain
    }


def gallery(domain: str, name: str, rows: list[dict], means: dict) -> Image.Image:
    folder = Path(_DATA.value) / domain / name
    paths = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in tables.IMAGE_SUFFIXES]
    images = fusion.stack_set([files.load_image(p) for p in paths])
    baseline = max((m for m in BASELINES if m in means), key=lambda m: means[m]["qe"])
    y, x = crop_box(images, _CROP.value)
    size = min(_CROP.value, *images.shape[1:3])
    tiles = [
        panel(images[i, y : y + size, x : x + size], p.stem[:24], (size, size))
        for i, p in enumerate(paths)
    ]
    qe = {r["method"]: r["qe"] for r in rows if r["domain"] == domain and r["set"] == name}
    for label in ("average", baseline, "fm0", "fm4"):
        path = Path(_QUALITY.value) / "methods" / label / "fused" / label / f"{domain}__{name}.png"
        fused = files.load_image(path)
        caption = f"{label} Q_E {qe[label]:.3f}"
        tiles.append(panel(fused[y : y + size, x : x + size], caption, (size, size)))
    sheet = Image.new("RGB", (len(tiles) * size, size + LABEL_HEIGHT), "white")
    for k, tile in enumerate(tiles):
        sheet.paste(tile, (k * size, 0))
    return sheet


def recommend(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Per domain, the best registered method by each key column (variants such as ``fm4:rgb``
    and the ablations of ``quality.py --ablations`` are left out)."""
    keys = ["qe", "qw", "qabf_petrovic", "ssim", "chroma_error", "mef_ssim"]
    result, lines = [], ["| domain | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for domain in dict.fromkeys(r["domain"] for r in rows):
        means = {m: v for m, v in domain_means(rows, domain).items() if m in methods.NAMES}
        best = {}
        for key in keys:
            scored = {m: v[key] for m, v in means.items() if key in v}
            if not scored or (key == "mef_ssim" and domain != "multi_exposure"):
                continue
            pick = min if metrics.REGISTRY[key].lower_is_better else max
            winner = pick(scored, key=scored.get)
            best[key] = {"method": winner, "value": scored[winner]}
        result.append({"domain": domain, "best": best})
        cells = [
            f"{best[k]['method']} ({best[k]['value']:.3f})" if k in best else "–" for k in keys
        ]
        lines.append(f"| {domain} | " + " | ".join(cells) + " |")
    return result, lines


def main(argv: Sequence[str]) -> None:
    del argv
    rows = json.loads((Path(_QUALITY.value) / "table.json").read_text())["rows"]
    figures = Path(_FIGURES.value)
    figures.mkdir(parents=True, exist_ok=True)
    for entry in _SETS.value:
        domain, name = entry.split("/")
        sheet = gallery(domain, name, rows, domain_means(rows, domain))
        files.write_pil(figures / f"gallery_{domain}.png", sheet)
        print(f"wrote {figures / f'gallery_{domain}.png'}")
    result, lines = recommend(rows)
    save(_OUT.value, "recommend", result, lines)


if __name__ == "__main__":
    app.run(main)
