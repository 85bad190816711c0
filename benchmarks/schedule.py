"""Choose FM0's per-epoch learning-rate decay from measurements.

Synthetic multi-focus sets are made from real images (a sharp crop; copies with the left or the
right half blurred), fused with FM0 under the paper's 100 × 100 schedule for several decays, and
scored by the final loss and the PSNR of the result against the sharp original.

  python benchmarks/schedule.py --data=../shared/data \
      --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Writes ``schedule.json`` and ``schedule.md`` into ``--out``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from tables import save

from semfuse_jax import files, fusion
from semfuse_jax.models import vgg19
from semfuse_jax.optimise import Schedule
from semfuse_jax.synthetic import multifocus_set


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of images in [0, 1], in dB."""
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights (conv1_1 is enough).")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_DECAYS = flags.DEFINE_list("decays", ["1.0", "0.95", "0.9", "0.8"], "Per-epoch decays.")
_LRS = flags.DEFINE_list("lrs", ["1.0"], "Initial learning rates (grey levels per step).")
_EPOCHS = flags.DEFINE_integer("epochs", 100, "Epochs.")
_ITERS = flags.DEFINE_integer("iters", 100, "Iterations per epoch.")
_SIZE = flags.DEFINE_integer("size", 96, "Crop size.")

CROPS = [
    ("multifocus_colour_lytro/lytro-02/lytro-02-A.jpg", 200, 220),
    ("multifocus_colour_lytro/lytro-05/lytro-05-A.jpg", 100, 100),
    ("multifocus_colour_lytro/lytro-07/lytro-07-A.jpg", 200, 200),
    ("ir_visible/TNO_Kayak/Kayak_Vis.png", 200, 200),
]


def main(argv: Sequence[str]) -> None:
    del argv
    w = vgg19.load_weights(_WEIGHTS.value)
    n = _SIZE.value
    sharp = []
    for rel, top, left in CROPS:
        image = files.load_image(Path(_DATA.value) / rel)
        sharp.append((image @ files.LUMA)[..., None] if image.shape[-1] == 3 else image)
        sharp[-1] = sharp[-1][top : top + n, left : left + n]
    sets = np.stack([multifocus_set(s) for s in sharp])
    rows = []
    for lr in map(float, _LRS.value):
        for decay in map(float, _DECAYS.value):
            schedule = Schedule(epochs=_EPOCHS.value, iters=_ITERS.value, lr=lr, lr_decay=decay)
            result = fusion.fuse(w, sets, fusion.FusionConfig(schedule=schedule))
            gains = [
                psnr(result.fused[b], sharp[b]) - psnr(result.average[b], sharp[b])
                for b in range(len(sharp))
            ]
            start = result.loss_history[0]
            rows.append(
                {
                    "lr": lr,
                    "lr_decay": decay,
                    "final_loss_fraction": float(np.mean(result.loss_history[-1] / start)),
                    "loss_fraction_at_10_epochs": float(
                        np.mean(result.loss_history[min(10, len(result.loss_history) - 1)] / start)
                    ),
                    "psnr_gain_db": float(np.mean(gains)),
                    "psnr_gain_min_db": float(np.min(gains)),
                    "seconds": result.optimise_seconds,
                }
            )
            print(rows[-1], flush=True)
    lines = [
        f"FM0, {len(sharp)} grey synthetic multi-focus sets ({n}x{n}), "
        f"{_EPOCHS.value} x {_ITERS.value} steps",
        "",
        "| lr | decay | loss / start (10 epochs) | loss / start (end) | PSNR gain dB (mean, min) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lr']} | {r['lr_decay']} | {r['loss_fraction_at_10_epochs']:.6f} | "
            f"{r['final_loss_fraction']:.6f} | "
            f"{r['psnr_gain_db']:.2f}, {r['psnr_gain_min_db']:.2f} |"
        )
    save(_OUT.value, "schedule", rows, lines)


if __name__ == "__main__":
    app.run(main)
