"""Contact sheets in the style of the paper's Figure 3: inputs, CAMs, mixtures, average, fusion."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 14


def panel(image: np.ndarray, title: str, size: tuple[int, int]) -> Image.Image:
    """``[H, W]`` or ``[H, W, 1|3]`` in ``[0, 1]`` → an RGB tile with a caption strip."""
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    rgb = np.broadcast_to(image, (*image.shape[:2], 3))
    tile = Image.fromarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize(size)
    canvas = Image.new("RGB", (size[0], size[1] + LABEL_HEIGHT), "white")
    canvas.paste(tile, (0, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((2, 1), title, fill="black")
    return canvas


def contact_sheet(
    inputs: np.ndarray,
    fused: np.ndarray,
    average: np.ndarray,
    probabilities: np.ndarray | None = None,
    mixing: np.ndarray | None = None,
    tile: int = 256,
    classes: dict | None = None,
) -> Image.Image:
    """Compose one set's sheet.

    Args:
      inputs: ``[N, H, W, C]``; fused, average: ``[H, W, C]``.
      probabilities: ``[N, H, W]`` CAM maps, shown under the inputs.
      mixing: ``[N, H, W]`` mixing weights; the mixtures ``P_Mi · I_i`` get a row of their own.
      tile: width of a panel in pixels (height follows the aspect ratio).
      classes: a class report (``classifier.class_report``); the top class and its probability
        then caption each input and the fused image.
    """
    n, h, w = inputs.shape[:3]
    size = (tile, max(1, round(tile * h / w)))

    def caption(title: str, top: list[dict] | None) -> str:
        return title if not top else f"{title}: {top[0]['label']} {top[0]['probability']:.2f}"

    tops = classes["inputs"] if classes else [None] * n
    rows = [
        [panel(inputs[i], caption(f"input {i}", tops[i]), size) for i in range(n)]
        + [
            panel(average, "average", size),
            panel(fused, caption("fused", classes["fused"] if classes else None), size),
        ]
    ]
    if probabilities is not None:
        rows.append([panel(probabilities[i], f"CAM P{i}", size) for i in range(n)])
    if mixing is not None:
        rows.append(
            [
                panel(mixing[i][..., None] * inputs[i], f"mixture P_M{i}·I{i}", size)
                for i in range(n)
            ]
            + [panel(mixing[0], "weight of input 0", size)]
        )
    cols = max(len(row) for row in rows)
    cell_w, cell_h = size[0], size[1] + LABEL_HEIGHT
    sheet = Image.new("RGB", (cols * cell_w, len(rows) * cell_h), "white")
    for r, row in enumerate(rows):
        for c, tile_image in enumerate(row):
            sheet.paste(tile_image, (c * cell_w, r * cell_h))
    return sheet
