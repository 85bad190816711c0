"""Peak memory and end-to-end time of `semfuse-fuse` (FM0, colour) against image area.

Each size runs as its own process (a colour pair made by resizing a Lytro pair), in ascending
order, so the children's peak RSS read after each run is that run's peak.

  python benchmarks/memory.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

Writes memory.json / memory.md into ``--out``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags
from PIL import Image
from tables import save

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights.")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_SIZES = flags.DEFINE_list("sizes", ["256", "512", "1024"], "Image sides, ascending.")
_STEPS = flags.DEFINE_integer("steps", 20, "Adam steps per run (one epoch).")


def main(argv: Sequence[str]) -> None:
    del argv
    folder = Path(_DATA.value) / "multifocus_colour_lytro" / "lytro-01"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in map(int, _SIZES.value):
            inputs = []
            for s in "AB":
                path = Path(tmp) / f"{s}{size}.png"
                Image.open(folder / f"lytro-01-{s}.jpg").resize((size, size)).save(path)
                inputs.append(str(path))
            report = Path(tmp) / f"r{size}.json"
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "semfuse_jax.cli.fuse",
                    f"--inputs={','.join(inputs)}",
                    f"--output={tmp}/f{size}.png",
                    f"--weights={_WEIGHTS.value}",
                    "--epochs=1",
                    f"--iters={_STEPS.value}",
                    f"--report={report}",
                    "--verbosity=-1",
                ],
                check=True,
            )
            wall = time.perf_counter() - start
            record = json.loads(report.read_text())
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            rows.append(
                {
                    "size": size,
                    "megapixels": size * size / 1e6,
                    "peak_rss_mb": peak_mb,
                    "end_to_end_seconds": wall,
                    "compile_seconds": record["compile_seconds"],
                    "seconds_per_step": record["optimise_seconds"] / record["steps"],
                }
            )
            print(rows[-1], flush=True)
    lines = [
        f"| size | MP | peak RSS MB | end-to-end s ({_STEPS.value} steps) | compile s | ms/step |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']}² | {r['megapixels']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['end_to_end_seconds']:.1f} | {r['compile_seconds']:.1f} | "
            f"{1000 * r['seconds_per_step']:.0f} |"
        )
    save(_OUT.value, "memory", rows, lines)


if __name__ == "__main__":
    app.run(main)
