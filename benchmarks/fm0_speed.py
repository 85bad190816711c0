"""FM0/FM1 optimisation speed: semfuse_jax against a plain PyTorch loop, with a roofline.

For each image size and batch size, semfuse_jax runs FM0 (and FM1 at batch 1) through
``fusion.fuse``; compile time is reported apart from the per-step time. The PyTorch reference is
the loop a researcher would write (``torch.optim.Adam`` on the pixels in a Python loop, the same
conv1_1 weights, preprocessing, projection and schedule), run eagerly and under ``torch.compile``.
Before any speed is compared, both implementations run the same short schedule and their
per-epoch losses must agree within 1 %.

Roofline per case: FLOPs per step from the shapes (conv1_1 forward plus its input gradient:
2 × 2·27·64 FLOPs per pixel), minimum bytes per step (target read once, image and two Adam moments
read and written), achieved GFLOP/s, and the machine's measured peak (a 2048² float32 matmul).

  python benchmarks/fm0_speed.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Writes fm0_speed.json / fm0_speed.md into ``--out``. torch is optional (skipped if missing).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from tables import save
from torch_fm0 import TorchFM0

from semfuse_jax import files, fusion
from semfuse_jax.models import vgg19
from semfuse_jax.optimise import Schedule

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights (conv1_1 is enough).")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_SIZES = flags.DEFINE_list("sizes", ["128", "256", "512"], "Image sides.")
_BATCHES = flags.DEFINE_list("batches", ["1", "2", "4", "8"], "Batch sizes (sets).")
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per case.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch loop.")

FLOPS_PER_PIXEL = 2 * (2 * 27 * 64)


def colour_pair(size: int) -> np.ndarray:
    """A real colour multi-focus pair (Lytro) cropped to ``size²``: ``[2, size, size, 3]``."""
    folder = Path(_DATA.value) / "multifocus_colour_lytro" / "lytro-01"
    a, b = (files.load_image(folder / f"lytro-01-{s}.jpg") for s in "AB")
    return np.stack([a[:size, :size], b[:size, :size]])


def peak_gflops() -> float:
    x = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        f(x).block_until_ready()
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def roofline(pixels: int, channels: int, seconds_per_step: float, peak: float) -> dict:
    flops = FLOPS_PER_PIXEL * pixels
    min_bytes = pixels * 4 * (64 + 6 * channels)
    achieved = flops / seconds_per_step / 1e9
    return {
        "gflop_per_step": flops / 1e9,
        "min_mb_per_step": min_bytes / 1e6,
        "achieved_gflops": achieved,
        "percent_of_peak": 100 * achieved / peak,
    }


def jax_case(w, images: np.ndarray, method: str, steps: int, unroll: int = 1) -> dict:
    schedule = Schedule(epochs=1, iters=steps, unroll=unroll)
    config = fusion.FusionConfig(method=method, schedule=schedule)
    result = fusion.fuse(w, images, config)
    return {
        "compile_seconds": result.compile_seconds,
        "seconds_per_step": result.optimise_seconds / steps,
        "seconds_per_set_paper_schedule": result.optimise_seconds / steps * 10_000 / len(images),
    }


def main(argv: Sequence[str]) -> None:
    del argv
    w = vgg19.load_weights(_WEIGHTS.value)
    peak = peak_gflops()
    rows: list[dict] = []
    torch_available = _TORCH.value
    if torch_available:
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            torch_available = False

    # Agreement first: the same 3 x 20 schedule on a 128² pair, loss after each epoch.
    check = {}
    if torch_available:
        pair = colour_pair(128)
        ours = fusion.fuse(
            w, pair[None], fusion.FusionConfig(schedule=Schedule(epochs=3, iters=20))
        ).loss_history[1:, 0]
        theirs, _ = TorchFM0(w, pair, compiled=False).run(3, 20)
        rel = float(np.max(np.abs(np.array(theirs) - ours) / ours))
        check = {"jax_losses": ours.tolist(), "torch_losses": theirs, "max_rel_diff": rel}
        print(f"loss agreement (3 epochs x 20 steps, 128²): max rel diff {rel:.2e}", flush=True)
        if rel > 0.01:
            raise SystemExit("PyTorch and semfuse_jax disagree; not comparing speed")

    for size in map(int, _SIZES.value):
        pair = colour_pair(size)
        steps = max(10, _STEPS.value * 256 * 256 // (size * size)) if size > 256 else _STEPS.value
        for batch in map(int, _BATCHES.value):
            images = np.broadcast_to(pair, (batch, *pair.shape)).copy()
            for method in ("fm0", "fm1") if batch == 1 else ("fm0",):
                case = jax_case(w, images, method, steps)
                per_set = case["seconds_per_step"] / batch
                rows.append(
                    {
                        "impl": f"semfuse_jax {method}",
                        "size": size,
                        "batch": batch,
                        **case,
                        "sets_per_second_paper_schedule": 1
                        / case["seconds_per_set_paper_schedule"],
                        **roofline(size * size * batch, 3, case["seconds_per_step"], peak),
                        "steps_per_second_per_set": 1 / per_set,
                    }
                )
                print(rows[-1], flush=True)
        for unroll in (2, 4):  # what unrolling the scan buys, batch 1
            case = jax_case(w, pair[None], "fm0", steps, unroll)
            rows.append(
                {
                    "impl": f"semfuse_jax fm0 unroll={unroll}",
                    "size": size,
                    "batch": 1,
                    **case,
                    "sets_per_second_paper_schedule": 1 / case["seconds_per_set_paper_schedule"],
                    **roofline(size * size, 3, case["seconds_per_step"], peak),
                    "steps_per_second_per_set": 1 / case["seconds_per_step"],
                }
            )
            print(rows[-1], flush=True)
        if torch_available:
            for compiled in (False, True):
                runner = TorchFM0(w, pair, compiled)
                start = time.perf_counter()
                runner.run(1, 3)  # warm-up (and compilation)
                warm = time.perf_counter() - start
                _, seconds = runner.run(1, steps)
                rows.append(
                    {
                        "impl": "torch compile" if compiled else "torch eager",
                        "size": size,
                        "batch": 1,
                        "compile_seconds": warm,
                        "seconds_per_step": seconds / steps,
                        "seconds_per_set_paper_schedule": seconds / steps * 10_000,
                        "sets_per_second_paper_schedule": steps / seconds / 10_000,
                        **roofline(size * size, 3, seconds / steps, peak),
                        "steps_per_second_per_set": steps / seconds,
                    }
                )
                print(rows[-1], flush=True)

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": str(jax.devices()[0]),
        "peak_gflops_matmul_2048": peak,
        "jax": jax.__version__,
    }
    lines = [
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, {machine['device']}; "
        f"measured peak {peak:.1f} GFLOP/s (2048² float32 matmul).",
        "",
        "| impl | size | batch | compile s | ms/step | steps/s per set | GFLOP/step | "
        "min MB/step | GFLOP/s | % peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['impl']} | {r['size']}² | {r['batch']} | {r['compile_seconds']:.1f} | "
            f"{1000 * r['seconds_per_step']:.1f} | {r['steps_per_second_per_set']:.1f} | "
            f"{r['gflop_per_step']:.2f} | {r['min_mb_per_step']:.1f} | "
            f"{r['achieved_gflops']:.1f} | {r['percent_of_peak']:.0f} |"
        )
    save(_OUT.value, "fm0_speed", {"machine": machine, "agreement": check, "rows": rows}, lines)


if __name__ == "__main__":
    app.run(main)
