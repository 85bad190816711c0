"""semfuse-eval: score mode and the Table-1 style table mode on the shared pairs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from semfuse_jax import files, fusion, metrics, tables
from semfuse_jax.optimise import Schedule


def evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semfuse_jax.cli.eval", *args],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=900,
    )


def test_score_mode_prints_every_metric(data_dir, tmp_path):
    folder = data_dir / "multifocus_grey" / "clock"
    a, b = files.load_image(folder / "clockA.jpg"), files.load_image(folder / "clockB.jpg")
    fused = tmp_path / "mean.png"
    files.save_image(fused, (a + b) / 2)
    result = evaluate(
        f"--inputs={folder / 'clockA.jpg'},{folder / 'clockB.jpg'}", f"--fused={fused}", "--json"
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert list(values) == list(tables.COLUMNS) and values["chroma_error"] is None  # grey set
    direct = metrics.compute_all(
        metrics.luminance_255(np.stack([a, b])), metrics.luminance_255(files.load_image(fused))
    )
    for name in metrics.NAMES:
        assert values[name] == pytest.approx(float(direct[name]), abs=1e-9)
    bad = evaluate(
        f"--inputs={folder / 'clockA.jpg'},{folder / 'clockB.jpg'}", f"--fused={tmp_path / 'x.png'}"
    )
    assert bad.returncode == 1 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_table_runner_scores_the_written_files_per_domain(data_dir, real_weights_file, tmp_path):
    root = tmp_path / "data"  # 128² crops of a grey multi-focus pair and a CT/MR pair
    crops = {
        "multifocus_grey/clock": ("clockA.jpg", "clockB.jpg"),
        "medical/head_bristol": ("medA.jpg", "medB.jpg"),
    }
    for folder, names in crops.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            image = files.load_image(data_dir / folder / name)[192:320, 192:320]
            files.save_image(root / folder / name.replace(".jpg", ".png"), image)
    sets = list(crops)
    names = ["average", "laplacian", "fm0", "fm4"]
    short = Schedule(epochs=1, iters=3)
    configs = [fusion.FusionConfig(method=m, schedule=short) for m in names]
    out = tmp_path / "out"
    rows = tables.run_table(root, configs, out, sets=sets, weights_file=real_weights_file)
    with open(out / "table.csv") as f:
        assert [(r["set"], r["method"]) for r in csv.DictReader(f)] == [
            (r["set"], r["method"]) for r in rows
        ]
    assert len(rows) == len(sets) * len(names) and {r["method"] for r in rows} == set(names)
    clock = {r["method"]: r["qabf_petrovic"] for r in rows if r["set"] == "clock"}
    assert clock["laplacian"] > clock["average"]  # a multi-scale method keeps more edges
    for row in rows:  # every score describes the file written
        folder = root / next(s for s in sets if s.endswith(row["set"]))
        inputs = fusion.stack_set([files.load_image(p) for p in sorted(folder.iterdir())])
        path = out / "fused" / row["method"] / f"{folder.parent.name}__{row['set']}.png"
        assert row["qe"] == metrics.score_set(inputs, files.load_image(path))["qe"]
        assert row["chroma_error"] is None  # grey sets
    assert [r["method"] for r in rows if "kept_epoch" in r] == ["fm4"] * len(sets)
    saved = json.loads((out / "table.json").read_text())
    assert [fusion.FusionConfig.from_dict(c) for c in saved["settings"]["configs"]] == configs
    assert (out / "table.md").read_text().count("### ") == len(sets)
    summary = (out / "summary.md").read_text()
    assert "### multifocus_grey" in summary and "### medical" in summary and "**" in summary
