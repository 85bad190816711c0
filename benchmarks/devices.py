"""Every method on 1, 2, 4 and 8 devices: sets/s against device count, and whether the files
each device count writes are bit-identical to one device's.

On a CPU the devices are XLA's host-platform devices (``--xla_force_host_platform_device_count``,
one subprocess per count, so they share the same cores: the rates show the cost of sharding, not
a speed-up); on a machine with several accelerators, pass the counts it has. A batch of
``--batch`` real sets (crops of the shared grey sets, each domain in turn; ``--size``²) is fused
by every method of the registry with a short schedule (``--epochs`` × ``--iters``), stored as
8-bit files (``files.quantise``), and hashed.

  python benchmarks/devices.py                    # or through accelerator.py --device_counts

Writes devices.json / .md into ``--out``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from absl import app, flags
from tables import save

from semfuse_jax import files, fusion, methods, models, tables
from semfuse_jax.optimise import Schedule

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_COUNTS = flags.DEFINE_list("counts", ["1", "2", "4", "8"], "Device counts.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sets per batch.")
_SIZE = flags.DEFINE_integer("size", 64, "Image side.")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs of the optimising methods.")
_ITERS = flags.DEFINE_integer("iters", 20, "Adam steps per epoch.")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: measure on this process's devices.")


def real_sets(data: Path, batch: int, size: int) -> np.ndarray:
    """``[batch, 2, size, size, 1]``: centre crops (tiled where smaller) of the shared grey
    sets, each domain in turn."""
    grey: dict[str, list[list[Path]]] = {}
    for domain, _, paths in tables.find_sets(data, None):
        if files.load_image(paths[0]).shape[-1] == 1:
            grey.setdefault(domain, []).append(paths)
    turns = itertools.zip_longest(*grey.values())
    chosen = [s for s in itertools.chain(*turns) if s is not None][:batch]
    sets = []
    for paths in chosen:
        images = [files.load_image(p)[..., :1] for p in paths[:2]]
        reps = -(-size // min(images[0].shape[:2]))
        tiled = [np.tile(x, (reps, reps, 1)) for x in images]
        top, left = ((s - size) // 2 for s in tiled[0].shape[:2])
        sets.append(np.stack([x[top : top + size, left : left + size] for x in tiled]))
    return np.stack(sets)


def measure() -> dict:
    """Every method on this process's devices: ``{method: {sha256, sets_per_second}}``."""
    sets = real_sets(Path(_DATA.value), _BATCH.value, _SIZE.value)
    schedule = Schedule(epochs=_EPOCHS.value, iters=_ITERS.value)
    out: dict = {"devices": jax.device_count()}
    for name in methods.NAMES:
        config = fusion.FusionConfig(method=name, schedule=schedule)
        loaded, config = models.load_models(config, None)

        bits = [8] * len(sets)
        fusion.fuse(loaded.vgg, sets, config, network=loaded.network, bits=bits)  # compiles
        start = time.perf_counter()
        result = fusion.fuse(loaded.vgg, sets, config, network=loaded.network, bits=bits)
        seconds = time.perf_counter() - start
        stored = np.stack([files.quantise(x, 8) for x in result.fused])
        out[name] = {
            "sha256": hashlib.sha256(stored.tobytes()).hexdigest(),
            "sets_per_second": len(sets) / seconds,
        }
    return out


def sweep(counts: Sequence[int]) -> tuple[list[dict], list[str]]:
    """Run :func:`measure` in one subprocess per device count: rows and Markdown lines."""
    runs = {}
    for count in counts:
        flag = f"--xla_force_host_platform_device_count={count}"
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()}
        args = [
            sys.executable, __file__, "--worker", f"--data={_DATA.value}",
            f"--batch={_BATCH.value}", f"--size={_SIZE.value}", f"--epochs={_EPOCHS.value}",
            f"--iters={_ITERS.value}",
        ]  # fmt: skip
        done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{count} devices failed:\n{done.stderr[-2000:]}")
        runs[count] = json.loads(done.stdout.strip().splitlines()[-1])
    names = [k for k in runs[counts[0]] if k != "devices"]
    header = " | ".join(f"{runs[c]['devices']} dev sets/s" for c in counts)
    lines = [
        f"Every method, a batch of {_BATCH.value} grey {_SIZE.value}² sets "
        f"({_EPOCHS.value} × {_ITERS.value} steps where it optimises), 8-bit files:",
        "",
        f"| method | {header} | files equal to 1 device's at every count |",
        "|---|" + "---|" * len(counts) + "---|",
    ]
    rows = []
    for name in names:
        same = all(runs[c][name]["sha256"] == runs[counts[0]][name]["sha256"] for c in counts)
        rates = [runs[c][name]["sets_per_second"] for c in counts]
        per_count = dict(zip(counts, rates, strict=True))
        rows.append({"method": name, "sets_per_second": per_count, "same": same})
        cells = " | ".join(f"{r:.2f}" for r in rates)
        lines.append(f"| {name} | {cells} | {'yes' if same else 'NO'} |")
    return rows, lines


def main(argv: Sequence[str]) -> None:
    del argv
    if _WORKER.value:
        print(json.dumps(measure()))
        return
    rows, lines = sweep([int(c) for c in _COUNTS.value])
    save(_OUT.value, "devices", rows, lines)


if __name__ == "__main__":
    app.run(main)
