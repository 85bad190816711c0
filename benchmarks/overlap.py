"""What overlapping reads and writes with fusion gains: ``semfuse-fuse --pairs`` over every
shared set, run by this checkout and by earlier revisions, in one run.

Each code path fuses the same manifest (every set under ``--data``) into its own folder, in
alternating subprocesses (``--rounds`` of each after one untimed round, so machine noise falls on
all alike); a round is the whole command, model loading and compilation included. Reports the
median seconds of each and whether every written file is byte-identical across code paths.

  python benchmarks/overlap.py --revisions=2967405^,2967405 --method=laplacian

Writes overlap.json / .md into ``--out``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags
from revisions import HERE, label, run_in, worktree
from tables import save

from semfuse_jax import tables

_REVISIONS = flags.DEFINE_list(
    "revisions",
    ["2967405^", "2967405"],
    "Earlier revisions to compare with (defaults: before any overlap; reads overlapped only).",
)
_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed commands per code path.")
_METHOD = flags.DEFINE_string("method", "laplacian", "Fusion method.")
_JUDGE = flags.DEFINE_string("judge", None, "Also judge every written file with this network.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Sets per batch.")


def manifest(data: Path, path: Path) -> None:
    """Write a manifest of every set under ``data`` to ``path``."""
    rows = [",".join([f"{d}__{s}", *map(str, p)]) for d, s, p in tables.find_sets(data, None)]
    path.write_text("\n".join(rows) + "\n")


def timed(tree: Path, pairs: Path, out: Path) -> dict:
    """One run of ``semfuse-fuse --pairs`` by the code in ``tree``: seconds and file digests."""
    args = ["-m", "semfuse_jax.cli.fuse", f"--pairs={pairs}", f"--output_dir={out}",
            f"--method={_METHOD.value}", f"--batch_size={_BATCH.value}", "--overwrite",
            *([f"--judge={_JUDGE.value}"] if _JUDGE.value else [])]  # fmt: skip
    start = time.perf_counter()
    run_in(tree, args)
    seconds = time.perf_counter() - start
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.png")}
    return {"seconds": seconds, "files": len(digests), "digests": digests}


def main(argv: Sequence[str]) -> None:
    del argv
    data = Path(_DATA.value).resolve()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        pairs = Path(tmp) / "all.csv"
        manifest(data, pairs)
        trees = {r: stack.enter_context(worktree(r)) for r in _REVISIONS.value}
        trees[label()] = HERE
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for k, tree in enumerate(trees.values()):  # warms the file and compilation caches
            timed(tree, pairs, Path(tmp) / f"out{k}")
        for _ in range(_ROUNDS.value):
            for k, (name, tree) in enumerate(trees.items()):
                runs[name].append(timed(tree, pairs, Path(tmp) / f"out{k}"))
    digests = {name: r[0]["digests"] for name, r in runs.items()}
    reference = next(iter(digests.values()))
    same = {name: d == reference for name, d in digests.items()}
    seconds = {name: statistics.median(r["seconds"] for r in v) for name, v in runs.items()}
    first = next(iter(seconds.values()))
    judged = f", judged by {_JUDGE.value}" if _JUDGE.value else ""
    lines = [
        f"`semfuse-fuse --pairs` over all {len(reference)} shared sets, "
        f"--method={_METHOD.value}{judged}, batch {_BATCH.value}; median of {_ROUNDS.value} "
        f"alternating runs each, {platform.processor() or 'cpu'} ({os.cpu_count()} cores):",
        "",
        "| code path | seconds (whole command) | each run | against the first | same files |",
        "|---|---|---|---|---|",
    ]
    for name, runs_of in runs.items():
        each = ", ".join(f"{r['seconds']:.1f}" for r in runs_of)
        ratio = seconds[name] / first
        lines.append(f"| {name} | {seconds[name]:.1f} | {each} | {ratio:.3f} | {same[name]} |")
    kept = {n: [{k: r[k] for k in ("seconds", "files")} for r in v] for n, v in runs.items()}
    save(_OUT.value, "overlap", {"runs": kept, "median_seconds": seconds, "same": same}, lines)


if __name__ == "__main__":
    app.run(main)
