"""Time all fusion metrics on one set (default 512×512, two inputs) after compilation.

  python benchmarks/metrics_speed.py [--size=512] [--repeats=10] [--out=benchmarks/out]

Prints a Markdown table and writes metrics_speed.json / metrics_speed.md into ``--out``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from tables import save

from semfuse_jax import metrics

_SIZE = flags.DEFINE_integer("size", 512, "Image side.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed repetitions.")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")


def main(argv: Sequence[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    n = _SIZE.value
    sources = np.round(rng.uniform(0, 255, (2, n, n)))
    fused = np.round(sources.mean(axis=0))
    start = time.perf_counter()
    metrics.compute_all(sources, fused)
    first = time.perf_counter() - start
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        metrics.compute_all(sources, fused)
        times.append(time.perf_counter() - start)
    record = {
        "size": n,
        "inputs": 2,
        "metrics": list(metrics.NAMES),
        "first_call_seconds": first,
        "median_seconds": float(np.median(times)),
        "min_seconds": float(np.min(times)),
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    table = (
        "| image | metrics | first call (compile) s | median s | min s |\n|---|---|---|---|---|\n"
        f"| {n}×{n}, 2 inputs | all {len(metrics.NAMES)} | {first:.2f} | "
        f"{record['median_seconds']:.3f} | {record['min_seconds']:.3f} |"
    )
    save(_OUT.value, "metrics_speed", record, table.split("\n"))


if __name__ == "__main__":
    app.run(main)
