"""semfuse-eval: score a fusion, or fuse and score many sets with many methods (Table 1 style).

Score one result (all metrics; JSON keys q0, qw, qe, qabf, qabf_petrovic, en, sd, sf, ag, mi, ssim):
  semfuse-eval --inputs=A.png,B.png --fused=F.png [--json]
Table mode: every set folder ``DOMAIN/SET`` under ``--table`` (or those named by ``--sets``), fused
with every ``--methods`` entry (same-size sets batched), scored, and written to ``--output_dir`` as
table.csv/.md/.json (best per set and column in bold), summary.csv/.md (per-domain means) and
fused/METHOD/DOMAIN__SET.png:
  semfuse-eval --table=../shared/data --methods=average,dwt,laplacian,fm0,fm1 --output_dir=eval
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags, logging

from semfuse_jax import fusion, io, metrics, weights
from semfuse_jax.cli import options, run_guarded
from semfuse_jax.errors import SemfuseError

_INPUTS = flags.DEFINE_list("inputs", None, "Score mode: the input images.")
_FUSED = flags.DEFINE_string("fused", None, "Score mode: the fused image.")
_JSON = flags.DEFINE_bool("json", False, "Score mode: print JSON.")
_TABLE = flags.DEFINE_string("table", None, "Table mode: root folder of DOMAIN/SET image folders.")
_SETS = flags.DEFINE_list("sets", None, "Table mode: DOMAIN/SET folders to use (default: all).")
_METHODS = flags.DEFINE_list(
    "methods",
    ["average", "max", "dwt", "laplacian", "fm0", "fm1"],
    f"Table mode: methods, any of {', '.join(fusion.ALL_METHODS)}.",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Table mode: output folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Table mode: replace existing output files.")

TABLE_FILES = ("table.csv", "table.json", "table.md", "summary.csv", "summary.md")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def score(inputs: np.ndarray, fused: np.ndarray) -> dict[str, float]:
    """All metrics of one set: ``[N, H, W, C]`` inputs and ``[H, W, C]`` result in ``[0, 1]``."""
    values = metrics.compute_all(metrics.luminance_255(inputs), metrics.luminance_255(fused))
    return {name: float(values[name]) for name in metrics.NAMES}


def score_one() -> int:
    inputs = fusion.stack_set([io.load_image(p) for p in _INPUTS.value])
    fused = io.load_image(_FUSED.value)
    if fused.shape[:2] != inputs.shape[1:3]:
        raise SemfuseError(f"fused image {_FUSED.value} is not the size of the inputs")
    values = score(inputs, fused)
    if _JSON.value:
        print(json.dumps(values, indent=2))
    else:
        for name, value in values.items():
            print(f"{name:14s} {value:.6f}")
    return 0


def find_sets(root: Path, wanted: Sequence[str] | None) -> list[tuple[str, str, list[Path]]]:
    """``(domain, set, image paths)`` for each set folder with at least two images."""
    if not root.is_dir():
        raise SemfuseError(f"table folder {root} does not exist")
    folders = [root / s for s in wanted] if wanted else sorted(root.glob("*/*"))
    found = []
    for folder in folders:
        if not folder.is_dir():
            raise SemfuseError(f"set folder {folder} does not exist")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(images) >= 2:
            found.append((folder.parent.name, folder.name, images))
    if not found:
        raise SemfuseError(f"no set folders with two or more images under {root}")
    return found


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def bold_best(records: list[dict], key_fields: list[str]) -> list[list[str]]:
    """Rows of ``key_fields`` + metrics with the best value per column (highest) in bold."""
    best = {m: max(r[m] for r in records) for m in metrics.NAMES}
    return [
        [str(r[k]) for k in key_fields]
        + [f"**{r[m]:.4f}**" if r[m] == best[m] else f"{r[m]:.4f}" for m in metrics.NAMES]
        for r in records
    ]


def write_table(out: Path, records: list[dict], settings: dict) -> None:
    """table.csv/.md/.json and the per-domain summary.csv/.md."""
    fields = ["domain", "set", "method", *metrics.NAMES]
    with io.atomic_path(out / "table.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    io.write_text(out / "table.json", json.dumps({"settings": settings, "rows": records}, indent=2))
    parts = []
    for domain, name in dict.fromkeys((r["domain"], r["set"]) for r in records):
        rows = [r for r in records if (r["domain"], r["set"]) == (domain, name)]
        parts.append(
            f"### {domain}/{name}\n\n"
            + markdown_table(["method", *metrics.NAMES], bold_best(rows, ["method"]))
        )
    io.write_text(out / "table.md", "\n\n".join(parts) + "\n")
    summary = []
    for domain in dict.fromkeys(r["domain"] for r in records):
        for method in dict.fromkeys(r["method"] for r in records):
            rows = [r for r in records if r["domain"] == domain and r["method"] == method]
            means = {m: float(np.mean([r[m] for r in rows])) for m in metrics.NAMES}
            summary.append({"domain": domain, "method": method, "sets": len(rows), **means})
    with io.atomic_path(out / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, ["domain", "method", "sets", *metrics.NAMES])
        writer.writeheader()
        writer.writerows(summary)
    blocks = []
    for domain in dict.fromkeys(r["domain"] for r in summary):
        rows = [r for r in summary if r["domain"] == domain]
        blocks.append(
            f"### {domain} (mean of {rows[0]['sets']} sets)\n\n"
            + markdown_table(["method", *metrics.NAMES], bold_best(rows, ["method"]))
        )
    io.write_text(out / "summary.md", "\n\n".join(blocks) + "\n")


def table_mode() -> int:
    if not _OUTPUT_DIR.value:
        raise SemfuseError("table mode needs --output_dir")
    out = Path(_OUTPUT_DIR.value)
    if not _METHODS.value:
        raise SemfuseError("--methods is empty; name at least one method")
    found = find_sets(Path(_TABLE.value), _SETS.value)
    configs = [options.config_from_flags(method) for method in _METHODS.value]
    fused_path = {
        (c.method, domain, name): out / "fused" / c.method / f"{domain}__{name}.png"
        for c in configs
        for domain, name, _ in found
    }
    try:
        for folder in dict.fromkeys(p.parent for p in fused_path.values()):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SemfuseError(f"cannot create the folders of {out}: {exc.strerror}") from None
    io.check_outputs(
        [*(out / f for f in TABLE_FILES), *fused_path.values()],
        [p for *_, paths in found for p in paths] + [Path(w) for w in [options.WEIGHTS.value] if w],
        _OVERWRITE.value,
    )
    sets = [fusion.stack_set([io.load_image(p) for p in paths]) for _, _, paths in found]
    needed = tuple(dict.fromkeys(o for c in configs for o in c.required_outputs))
    w = weights.load_weights(options.WEIGHTS.value, outputs=needed) if needed else None
    records = []
    for config in configs:
        for batch in fusion.group_batches([s.shape for s in sets], options.BATCH.value):
            logging.info("%s: %s", config.method, ", ".join(found[i][1] for i in batch))
            result = fusion.fuse(w, np.stack([sets[i] for i in batch]), config)
            for b, i in enumerate(batch):
                domain, name, _ = found[i]
                path = fused_path[config.method, domain, name]
                io.save_image(path, result.fused[b], max(io.bit_depth(p) for p in found[i][2]))
                record = {"domain": domain, "set": name, "method": config.method}
                record["steps"] = result.steps
                if result.best_epoch is not None:  # FM4: the epoch its result comes from
                    record["kept_epoch"] = int(result.best_epoch[b])
                records.append(record | score(sets[i], io.load_image(path)))  # the file written
    s = configs[0].schedule
    settings = {"epochs": s.epochs, "iters": s.iters, "lr": s.lr, "lr_decay": s.lr_decay}
    write_table(out, records, {"methods": _METHODS.value, **settings})
    print((out / "summary.md").read_text())
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise SemfuseError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(_TABLE.value) == bool(_INPUTS.value or _FUSED.value):
        raise SemfuseError("give either --inputs and --fused (score), or --table (table mode)")
    if _TABLE.value:
        return table_mode()
    if not (_INPUTS.value and _FUSED.value):
        raise SemfuseError("score mode needs --inputs and --fused")
    return score_one()


def run() -> None:
    run_guarded(main, __doc__, [__name__, options.__name__])


if __name__ == "__main__":
    run()
