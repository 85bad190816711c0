"""FM4 batch throughput of this checkout beside another revision's, in one run.

A batch of eight real 256² sets (shared grey sets, each domain in turn, centre crops; tiled where
smaller) is fused with FM4's defaults (the paper's schedule with FM4's quality stop and edge
refinement, scored as 8-bit files) by this checkout and by ``--baseline`` (a git revision,
checked out into a temporary worktree), in alternating subprocesses (``--rounds`` of each, so
machine noise falls on both alike). Each subprocess compiles on a first call and times a second
one. Reports the median sets/s of each and their ratio, and whether both wrote the same images.

  python benchmarks/device_loop.py --baseline=83bc067

Writes device_loop.json / .md into ``--out``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags
from revisions import HERE, label, run_in, worktree
from tables import save

_BASELINE = flags.DEFINE_string("baseline", "83bc067", "Git revision to compare with.")
_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed subprocesses per code path.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sets per batch.")
_SIZE = flags.DEFINE_integer("size", 256, "Image side.")

# Run inside a subprocess whose working directory is the tree under test: prints one JSON line.
_TIMING = """
import hashlib, itertools, json, sys, time
from pathlib import Path
import numpy as np
from semfuse_jax import files, fusion, models, tables
data, batch, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
grey = {}
for domain, _, paths in tables.find_sets(data, None):
    if files.load_image(paths[0]).shape[-1] == 1:
        grey.setdefault(domain, []).append(paths)
turns = itertools.zip_longest(*grey.values())  # every domain in turn
chosen = [s for s in itertools.chain(*turns) if s is not None]
sets = []
for paths in chosen[:batch]:
    images = [files.load_image(p)[..., :1] for p in paths[:2]]
    reps = -(-size // min(images[0].shape[:2]))
    tiled = [np.tile(x, (reps, reps, 1)) for x in images]
    top, left = ((s - size) // 2 for s in tiled[0].shape[:2])
    sets.append(np.stack([x[top : top + size, left : left + size] for x in tiled]))
sets = np.stack(sets)
config = fusion.FusionConfig(method="fm4")
loaded, _ = models.load_models(config, None)
run = lambda: fusion.fuse(loaded.vgg, sets, config, bits=[8] * len(sets))
run()
start = time.perf_counter()
result = run()
seconds = time.perf_counter() - start
stored = np.stack([files.quantise(x, 8) for x in result.fused])
print(json.dumps({
    "sets": len(sets), "seconds": seconds, "steps": int(result.steps),
    "best_epoch": [int(e) for e in result.best_epoch],
    "edge_kept": [bool(k) for k in result.edge_kept],
    "images_sha256": hashlib.sha256(stored.tobytes()).hexdigest(),
}))
"""


def timed(tree: Path, data: Path) -> dict:
    """One subprocess timing of the tree ``tree`` (its package first on the path)."""
    done = run_in(tree, ["-c", _TIMING, str(data), str(_BATCH.value), str(_SIZE.value)])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str]) -> None:
    del argv
    data = Path(_DATA.value).resolve()
    runs: dict[str, list[dict]] = {"baseline": [], "this checkout": []}
    with worktree(_BASELINE.value) as base:
        for _ in range(_ROUNDS.value):
            runs["baseline"].append(timed(base, data))
            runs["this checkout"].append(timed(HERE, data))
    rate = {k: statistics.median(r["sets"] / r["seconds"] for r in v) for k, v in runs.items()}
    first = {k: v[0] for k, v in runs.items()}
    same = {
        key: first["baseline"][key] == first["this checkout"][key]
        for key in ("best_epoch", "edge_kept", "images_sha256")
    }
    lines = [
        f"FM4 (defaults, 8-bit files), batch of {_BATCH.value} grey {_SIZE.value}² sets, "
        f"median of {_ROUNDS.value} alternating runs each, {platform.processor() or 'cpu'} "
        f"({os.cpu_count()} cores):",
        "",
        "| code path | sets/s | seconds per batch | steps |",
        "|---|---|---|---|",
    ]
    for key, name in (("baseline", _BASELINE.value), ("this checkout", label())):
        seconds = statistics.median(r["seconds"] for r in runs[key])
        steps = first[key]["steps"]
        lines.append(f"| {key} ({name}) | {rate[key]:.3f} | {seconds:.2f} | {steps} |")
    lines += [
        "",
        f"Ratio (this checkout / baseline): {rate['this checkout'] / rate['baseline']:.3f}. "
        f"Same kept epochs: {same['best_epoch']}; same edge decisions: {same['edge_kept']}; "
        f"byte-identical 8-bit images: {same['images_sha256']}.",
    ]
    save(_OUT.value, "device_loop", {"runs": runs, "sets_per_second": rate, "same": same}, lines)


if __name__ == "__main__":
    app.run(main)
