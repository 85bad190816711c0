"""Tables: fusing many sets with many methods, scoring each written file, and writing the results.

:func:`run_table` fuses every ``DOMAIN/SET`` folder with every configuration (same-size sets
batched), scores the file it wrote (:func:`score`), and writes ``table.csv/.md/.json`` (best per
set and column in bold), ``summary.csv/.md`` (per-domain means) and
``fused/METHOD/DOMAIN__SET.png``. The JSON keeps every configuration whole. With a judge
(:mod:`semfuse_jax.judge`), every row also has ``semantic_kept`` and ``semantic_ratio`` (and
the judge's classes in the JSON); the settings name the judge.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging

from semfuse_jax import files, fusion, judge, metrics, models
from semfuse_jax.errors import SemfuseError

TABLE_FILES = ("table.csv", "table.json", "table.md", "summary.csv", "summary.md")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


COLUMNS: tuple[str, ...] = tuple(metrics.REGISTRY)


def columns_of(records: Sequence[dict]) -> tuple[str, ...]:
    """:data:`COLUMNS`, and the judge's columns when the records have them."""
    semantic = any(judge.COLUMNS[0] in r for r in records)
    return (*COLUMNS, *(judge.COLUMNS if semantic else ()))


def summarise(records: Sequence[dict]) -> list[dict]:
    """Per domain and method (first-seen order): ``sets`` and the mean of every column of
    :func:`columns_of` over the sets that have it (None when none has)."""
    summary = []
    for domain in dict.fromkeys(r["domain"] for r in records):
        for method in dict.fromkeys(r["method"] for r in records):
            rows = [r for r in records if r["domain"] == domain and r["method"] == method]
            if not rows:
                continue
            means = {}
            for column in columns_of(records):
                present = [r[column] for r in rows if r.get(column) is not None]
                means[column] = float(np.mean(present)) if present else None
            summary.append({"domain": domain, "method": method, "sets": len(rows), **means})
    return summary


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
    """Rows of ``key_fields`` + columns with the best value per column in bold (the highest, or
    the lowest where :data:`semfuse_jax.metrics.REGISTRY` says lower is better); a missing
    value is ``–``."""
    best = {}
    columns = columns_of(records)
    for m in columns:
        present = [r[m] for r in records if r.get(m) is not None]
        pick = min if m in metrics.REGISTRY and metrics.REGISTRY[m].lower_is_better else max
        best[m] = pick(present) if present else None

    def cell(value: float | None, m: str) -> str:
        if value is None:
            return "–"
        return f"**{value:.4f}**" if value == best[m] else f"{value:.4f}"

    return [[str(r[k]) for k in key_fields] + [cell(r.get(m), m) for m in columns] for r in records]


def csv_text(fields: Sequence[str], rows: Sequence[dict]) -> str:
    """``rows`` as CSV text with a header of ``fields`` (other keys left out)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def write_table(out: Path, records: list[dict], settings: dict) -> None:
    """table.csv/.md/.json and the per-domain summary.csv/.md."""
    columns = columns_of(records)
    fields = ["domain", "set", "method", *columns]
    files.write_text(out / "table.csv", csv_text(fields, records))
    table = {"settings": settings, "rows": records}
    files.write_text(out / "table.json", json.dumps(table, indent=2))
    parts = []
    for domain, name in dict.fromkeys((r["domain"], r["set"]) for r in records):
        rows = [r for r in records if (r["domain"], r["set"]) == (domain, name)]
        parts.append(
            f"### {domain}/{name}\n\n"
            + markdown_table(["method", *columns], bold_best(rows, ["method"]))
        )
    files.write_text(out / "table.md", "\n\n".join(parts) + "\n")
    summary = summarise(records)
    files.write_text(out / "summary.csv", csv_text(["domain", "method", "sets", *columns], summary))
    blocks = []
    for domain in dict.fromkeys(r["domain"] for r in summary):
        rows = [r for r in summary if r["domain"] == domain]
        blocks.append(
            f"### {domain} (mean of {rows[0]['sets']} sets)\n\n"
            + markdown_table(["method", *columns], bold_best(rows, ["method"]))
        )
    files.write_text(out / "summary.md", "\n\n".join(blocks) + "\n")


def run_table(
    root: str | Path,
    configs: Sequence[fusion.FusionConfig],
    out: str | Path,
    *,
    sets: Sequence[str] | None = None,
    weights_file: str | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    judge_name: str | None = None,
    allow_same_judge: bool = False,
) -> list[dict]:
    """Fuse every set under ``root`` (or the ``DOMAIN/SET`` folders ``sets``) with every
    configuration, score the written files (semantically too by the judge ``judge_name``), write
    the tables into ``out``; return the rows.

    Each configuration's networks are loaded once (:func:`semfuse_jax.models.load_models`) before
    anything is fused, so a judge equal to any configuration's CAM classifier is refused first.
    """
    out = Path(out)
    if not configs:
        raise SemfuseError("no methods to run; name at least one")
    found = find_sets(Path(root), sets)
    loaded = [
        models.load_models(
            c, weights_file, judge_name=judge_name, allow_same_judge=allow_same_judge
        )
        for c in configs
    ]
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
    read = [p for *_, paths in found for p in paths] + [Path(p) for p in [weights_file] if p]
    files.check_outputs([*(out / f for f in TABLE_FILES), *fused_path.values()], read, overwrite)
    images = [fusion.stack_set([files.load_image(p) for p in paths]) for _, _, paths in found]
    records = []
    for nets, config in loaded:
        for batch in fusion.group_batches([s.shape for s in images], batch_size):
            logging.info("%s: %s", config.method, ", ".join(found[i][1] for i in batch))
            bits = [max(files.bit_depth(p) for p in found[i][2]) for i in batch]
            stacked = np.stack([images[i] for i in batch])
            result = fusion.fuse(nets.vgg, stacked, config, network=nets.network, bits=bits)
            written = []
            for b, i in enumerate(batch):
                domain, name, _ = found[i]
                path = fused_path[config.method, domain, name]
                files.save_image(path, result.fused[b], bits[b])
                written.append(files.load_image(path))  # every score is of the file
            semantic = (
                judge.scores(nets.judge, stacked, np.stack(written))
                if nets.judge is not None
                else [{}] * len(batch)
            )
            for b, i in enumerate(batch):
                domain, name, _ = found[i]
                record = {"domain": domain, "set": name, "method": config.method}
                record["steps"] = result.steps
                if result.best_epoch is not None:  # FM4: the epoch its result comes from
                    record["kept_epoch"] = int(result.best_epoch[b])
                if result.edge_kept is not None:  # FM4: whether its edge refinement was kept
                    record["edge_kept"] = bool(result.edge_kept[b])
                records.append(record | metrics.score_set(images[i], written[b]) | semantic[b])
    settings = {
        "methods": [config.method for _, config in loaded],
        "configs": [config.to_dict() for _, config in loaded],
        "judge": judge_name,
    }
    write_table(out, records, settings)
    return records
