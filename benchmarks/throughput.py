"""Throughput of the paper's objective: the exact quadratic-form gradient against autodiff through
the network and against the PyTorch loop of the paper's algorithm, in one run.

Cases (``--sizes``, grey and colour): steps/s of FM0 with ``--gradient=quadratic`` and
``--gradient=network`` (timed on a second, compiled call), and of the PyTorch loop
(``benchmarks/fm0_speed.py``'s ``TorchFM0``: ``torch.optim.Adam`` on the pixels, eager and
``torch.compile``; grey pairs are given to it as three equal channels, as such a loop is usually
written). Then: the paper's full schedule (100 × 100 steps) and ``--solver=fast`` on the
256² grey clock pair; the compile seconds of a first and a second ``fuse`` call; sets/s against
batch size; and the end-to-end wall time of ``semfuse-fuse`` on the 512² clock pair with the
paper's schedule, run twice (the second finds JAX's persistent compilation cache filled).

  python benchmarks/throughput.py

Parts (``--parts``): ``steps`` (the per-step table), ``schedule`` (paper schedule, fast solver,
compile seconds), ``batching`` (sets/s against batch size, ``vmap`` and ``map``), ``cli``
(start-up and end-to-end wall times). Writes throughput_<part>.json / .md into ``--out``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from tables import save
from torch_fm0 import TorchFM0

from semfuse_jax import files, fusion
from semfuse_jax.models import vgg19
from semfuse_jax.optimise import FAST, Schedule

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights (default: the built-in conv1_1).")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_SIZES = flags.DEFINE_list("sizes", ["256", "512", "1024"], "Image sides.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch loop (needs torch).")
_BATCHES = flags.DEFINE_list("batches", ["1", "2", "4", "8"], "Batch sizes for sets/s.")
_PARTS = flags.DEFINE_list(
    "parts", ["steps", "schedule", "batching", "cli"], "Parts to run (see the docstring)."
)


def pair(size: int, colour: bool) -> np.ndarray:
    """A real multi-focus pair cropped or tiled to ``size²``: ``[2, size, size, 1|3]``."""
    if colour:
        folder = Path(_DATA.value) / "multifocus_colour_lytro" / "lytro-01"
        images = [files.load_image(folder / f"lytro-01-{s}.jpg") for s in "AB"]
    else:
        folder = Path(_DATA.value) / "multifocus_grey" / "clock"
        images = [files.load_image(folder / f"clock{s}.jpg") for s in "AB"]
    reps = -(-size // images[0].shape[0])
    return np.stack([np.tile(x, (reps, reps, 1))[:size, :size] for x in images])


def steps_per_second(w, images: np.ndarray, gradient: str, steps: int) -> dict:
    config = fusion.FusionConfig(schedule=Schedule(epochs=1, iters=steps), gradient=gradient)
    first = fusion.fuse(w, images[None], config)
    second = fusion.fuse(w, images[None], config)
    return {"steps_per_second": steps / second.optimise_seconds, "compile": first.compile_seconds}


def torch_steps_per_second(w, images: np.ndarray, compiled: bool, steps: int) -> float:
    rgb = np.broadcast_to(images, (*images.shape[:3], 3)).copy()
    loop = TorchFM0(w, rgb, compiled)
    loop.run(1, 5)  # warm-up (and compilation)
    _, seconds = loop.run(1, steps)
    return steps / seconds


def cli_wall_seconds(clock: list[Path], cache: Path, *extra: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "semfuse_jax.cli.fuse",
                f"--inputs={clock[0]},{clock[1]}",
                f"--output={out}/clock.png",
                "--verbosity=-1",
                *extra,
            ],
            check=True,
            env={**os.environ, "SEMFUSE_CACHE": str(cache), "SEMFUSE_WEIGHTS": ""},
        )
        return time.perf_counter() - start


def part_steps(w) -> None:
    rows, lines = (
        [],
        [
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"jax {jax.__version__} on {jax.default_backend()}.",
            "",
            "| size | image | quadratic steps/s | network steps/s | torch eager steps/s | "
            "torch.compile steps/s | quadratic / best torch |",
            "|---|---|---|---|---|---|---|",
        ],
    )
    for size in (int(s) for s in _SIZES.value):
        for colour in (False, True):
            images = pair(size, colour)
            quad_steps = max(50, int(2e8 / size**2 / (9 if colour else 1)))
            net_steps = max(3, int(3e6 / size**2))
            row = {
                "size": size,
                "image": "colour" if colour else "grey",
                "quadratic": steps_per_second(w, images, "quadratic", quad_steps),
                "network": steps_per_second(w, images, "network", net_steps),
            }
            if _TORCH.value:
                row["torch_eager"] = torch_steps_per_second(w, images, False, net_steps)
                row["torch_compile"] = torch_steps_per_second(w, images, True, net_steps)
                best = max(row["torch_eager"], row["torch_compile"])
                row["speedup_vs_best_torch"] = row["quadratic"]["steps_per_second"] / best
            rows.append(row)
            cells = [
                f"{row['quadratic']['steps_per_second']:.0f}",
                f"{row['network']['steps_per_second']:.1f}",
                f"{row.get('torch_eager', float('nan')):.1f}",
                f"{row.get('torch_compile', float('nan')):.1f}",
                f"{row.get('speedup_vs_best_torch', float('nan')):.0f}×",
            ]
            lines.append(f"| {size}² | {row['image']} | " + " | ".join(cells) + " |")
    save(_OUT.value, "throughput_steps", rows, lines)


def part_schedule(w) -> None:
    clock256 = pair(256, False)
    paper = fusion.FusionConfig()  # 100 × 100 steps, quadratic
    first = fusion.fuse(w, clock256[None], paper)
    start = time.perf_counter()
    second = fusion.fuse(w, clock256[None], paper)
    paper_seconds = time.perf_counter() - start
    fast = fusion.fuse(w, clock256[None], fusion.FusionConfig(schedule=FAST))
    lines = [
        "| 256² grey clock pair | steps | seconds | final loss |",
        "|---|---|---|---|",
        f"| paper schedule, second call | {second.steps} | {paper_seconds:.2f} | "
        f"{second.loss_history[-1, 0]:.6g} |",
        f"| --solver=fast | {fast.steps} | {fast.optimise_seconds:.2f} | "
        f"{fast.loss_history[-1, 0]:.6g} |",
        "",
        f"Compile seconds of the optimisation: first call {first.compile_seconds:.2f}, "
        f"second call {second.compile_seconds:.2f}.",
    ]
    summary = {
        "paper_schedule_seconds": paper_seconds,
        "paper_schedule_steps": second.steps,
        "fast_seconds": fast.optimise_seconds,
        "fast_steps": fast.steps,
        "first_compile_seconds": first.compile_seconds,
        "second_compile_seconds": second.compile_seconds,
    }
    save(_OUT.value, "throughput_schedule", summary, lines)


def part_batching(w) -> None:
    lines = [
        "sets/s with the paper's schedule (10,000 steps), 256² sets, quadratic gradient:",
        "",
        "| batch | image | vmap | map (one after another) |",
        "|---|---|---|---|",
    ]
    rows = []
    for colour in (False, True):
        one = pair(256, colour)
        for b in (int(x) for x in _BATCHES.value):
            sets = np.repeat(one[None], b, axis=0)
            rates = {}
            for mode in ("vmap", "map"):
                config = fusion.FusionConfig(schedule=Schedule(epochs=2, iters=100), batching=mode)
                fusion.fuse(w, sets, config)
                result = fusion.fuse(w, sets, config)
                rates[mode] = b / (result.optimise_seconds * 50)  # ×50: 10,000 steps
            rows.append({"batch": b, "image": "colour" if colour else "grey", **rates})
            image = "colour" if colour else "grey"
            lines.append(f"| {b} | {image} | {rates['vmap']:.2f} | {rates['map']:.2f} |")
    save(_OUT.value, "throughput_batching", rows, lines)


def part_cli() -> None:
    folder = Path(_DATA.value) / "multifocus_grey" / "clock"
    clock = [folder / "clockA.jpg", folder / "clockB.jpg"]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import semfuse_jax.cli.fuse"], check=True)
    import_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as cache:
        walls = [cli_wall_seconds(clock, Path(cache)) for _ in range(2)]
        baseline = cli_wall_seconds(clock, Path(cache), "--method=average")
    lines = [
        "| `semfuse-fuse`, 512² clock pair | wall seconds |",
        "|---|---|",
        f"| Python start-up and imports only | {import_seconds:.1f} |",
        f"| `--method=average` (no network) | {baseline:.1f} |",
        f"| FM0, paper schedule, built-in weights, first run | {walls[0]:.1f} |",
        f"| the same again (persistent compilation cache filled) | {walls[1]:.1f} |",
    ]
    data = {"import_seconds": import_seconds, "average_seconds": baseline, "fm0_seconds": walls}
    save(_OUT.value, "throughput_cli", data, lines)


def main(argv: Sequence[str]) -> None:
    del argv
    w = vgg19.load_weights(_WEIGHTS.value)
    parts = set(_PARTS.value)
    if "steps" in parts:
        part_steps(w)
    if "schedule" in parts:
        part_schedule(w)
    if "batching" in parts:
        part_batching(w)
    if "cli" in parts:
        part_cli()


if __name__ == "__main__":
    app.run(main)
