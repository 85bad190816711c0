"""The fast solver against the paper's 10,000-step Adam schedule on real pairs.

For each pair (default: the Bristol head CT/MR pair, 256², and the clock pair, 512²): FM0 with
``--solver=adam`` (100 × 100 steps) and ``--solver=fast``; reports final losses, their ratio, the
wall-time ratio and the PSNR between the two fused images.

  python benchmarks/solver.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Writes solver.json / solver.md into ``--out``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from tables import save

from semfuse_jax import files, fusion
from semfuse_jax.models import vgg19

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights (conv1_1 is enough).")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_SETS = flags.DEFINE_list(
    "sets", ["medical/head_bristol", "multifocus_grey/clock"], "DOMAIN/SET folders."
)


def main(argv: Sequence[str]) -> None:
    del argv
    w = vgg19.load_weights(_WEIGHTS.value)
    rows = []
    for name in _SETS.value:
        folder = Path(_DATA.value) / name
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".bmp"))
        images = fusion.stack_set([files.load_image(p) for p in paths])[None]
        results = {}
        for solver in ("adam", "fast"):
            config = fusion.FusionConfig(solver=solver)
            results[solver] = fusion.fuse(w, images, config)
        adam, fast = results["adam"], results["fast"]
        mse = float(np.mean((adam.fused.astype(np.float64) - fast.fused) ** 2))
        rows.append(
            {
                "set": name,
                "size": list(images.shape[2:4]),
                "adam_steps": adam.steps,
                "fast_steps": fast.steps,
                "adam_final_loss": float(adam.loss_history[-1, 0]),
                "fast_final_loss": float(fast.loss_history[-1, 0]),
                "loss_ratio": float(fast.loss_history[-1, 0] / adam.loss_history[-1, 0]),
                "adam_seconds": adam.optimise_seconds,
                "fast_seconds": fast.optimise_seconds,
                "time_ratio": fast.optimise_seconds / adam.optimise_seconds,
                "psnr_fast_vs_adam_db": float(10 * np.log10(1.0 / max(mse, 1e-20))),
            }
        )
        print(rows[-1], flush=True)
    lines = [
        "| set | size | adam steps / s | fast steps / s | loss fast / adam | time fast / adam "
        "| PSNR fast vs adam |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['set']} | {r['size'][0]}×{r['size'][1]} | {r['adam_steps']} / "
            f"{r['adam_seconds']:.0f} | {r['fast_steps']} / {r['fast_seconds']:.1f} | "
            f"{r['loss_ratio']:.4f} | {r['time_ratio']:.3f} | {r['psnr_fast_vs_adam_db']:.1f} dB |"
        )
    save(_OUT.value, "solver", rows, lines)


if __name__ == "__main__":
    app.run(main)
