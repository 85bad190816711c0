"""What bfloat16 costs in quality, and what the activation layout buys, for the FM0 step.

1. FM0 with the network in float32 and in bfloat16 (10 × 100 steps) on real pairs: final loss
   (always evaluated in float32), PSNR between the two results, Q_E and Petrovic Q^{AB/F} of each,
   and time per step on this machine. bfloat16 is meant for accelerators; on a CPU it shows the
   quality cost, not the speed gain.
2. The conv1_1 step (forward + gradient with respect to the image) in NHWC against NCHW.

  python benchmarks/precision_layout.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Writes precision_layout.json / precision_layout.md into ``--out``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from tables import save

from semfuse_jax import files, fusion, metrics
from semfuse_jax.models import vgg19
from semfuse_jax.optimise import Schedule

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights (conv1_1 is enough).")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")

PAIRS = {
    "head (grey 256²)": ("medical/head_bristol", "medA.jpg", "medB.jpg"),
    "lytro-01 (colour 256² crop)": (
        "multifocus_colour_lytro/lytro-01",
        "lytro-01-A.jpg",
        "lytro-01-B.jpg",
    ),
}


def layout_step_seconds(layout: str, batch: int, size: int, repeats: int = 20) -> float:
    """Seconds per conv1_1 forward + image-gradient step in ``layout`` (NHWC or NCHW)."""
    rng = np.random.default_rng(0)
    if layout == "NHWC":
        x = jnp.asarray(rng.uniform(size=(batch, size, size, 3)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(3, 3, 3, 64)), jnp.float32)
        dims = ("NHWC", "HWIO", "NHWC")
    else:
        x = jnp.asarray(rng.uniform(size=(batch, 3, size, size)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(64, 3, 3, 3)), jnp.float32)
        dims = ("NCHW", "OIHW", "NCHW")

    def loss(image):
        y = jax.lax.conv_general_dilated(image, k, (1, 1), "SAME", dimension_numbers=dims)
        return jnp.sum(jnp.square(y))

    step = jax.jit(jax.grad(loss))
    step(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        step(x).block_until_ready()
    return (time.perf_counter() - start) / repeats


def main(argv: Sequence[str]) -> None:
    del argv
    w = vgg19.load_weights(_WEIGHTS.value)
    precision = []
    for label, (folder, a, b) in PAIRS.items():
        root = Path(_DATA.value) / folder
        images = fusion.stack_set([files.load_image(root / a), files.load_image(root / b)])
        images = images[None, :, :256, :256]
        results = {}
        for dtype in ("float32", "bfloat16"):
            config = fusion.FusionConfig(
                schedule=Schedule(epochs=10, iters=100), compute_dtype=dtype
            )
            results[dtype] = fusion.fuse(w, images, config)
        sources = metrics.luminance_255(images[0])
        row = {"pair": label}
        for dtype, r in results.items():
            scores = metrics.compute_all(sources, metrics.luminance_255(r.fused[0]))
            row[dtype] = {
                "final_loss": float(r.loss_history[-1, 0]),
                "ms_per_step": 1000 * r.optimise_seconds / r.steps,
                "qe": float(scores["qe"]),
                "qabf_petrovic": float(scores["qabf_petrovic"]),
            }
        mse = np.mean(
            (results["float32"].fused.astype(np.float64) - results["bfloat16"].fused) ** 2
        )
        row["psnr_bf16_vs_f32_db"] = float(10 * np.log10(1.0 / mse))
        row["loss_ratio_bf16_over_f32"] = (
            row["bfloat16"]["final_loss"] / row["float32"]["final_loss"]
        )
        precision.append(row)
        print(row, flush=True)
    layout = [
        {
            "layout": lay,
            "batch": batch,
            "size": 256,
            "ms_per_step": 1000 * layout_step_seconds(lay, batch, 256),
        }
        for batch in (1, 8)
        for lay in ("NHWC", "NCHW")
    ]
    print(layout, flush=True)
    lines = [
        "| pair | loss bf16/f32 | PSNR bf16 vs f32 | Q_E f32 / bf16 | Q^AB/F (Petrovic) f32 / bf16 "
        "| ms/step f32 / bf16 (CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for r in precision:
        f, h = r["float32"], r["bfloat16"]
        lines.append(
            f"| {r['pair']} | {r['loss_ratio_bf16_over_f32']:.4f} | "
            f"{r['psnr_bf16_vs_f32_db']:.1f} dB | {f['qe']:.4f} / {h['qe']:.4f} | "
            f"{f['qabf_petrovic']:.4f} / {h['qabf_petrovic']:.4f} | "
            f"{f['ms_per_step']:.1f} / {h['ms_per_step']:.1f} |"
        )
    lines += ["", "| layout | batch | ms per conv1_1 step (256²) |", "|---|---|---|"]
    lines += [f"| {r['layout']} | {r['batch']} | {r['ms_per_step']:.2f} |" for r in layout]
    save(_OUT.value, "precision_layout", {"precision": precision, "layout": layout}, lines)


if __name__ == "__main__":
    app.run(main)
