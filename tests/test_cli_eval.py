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
    sets = ["multifocus_grey/clock", "medical/head_bristol"]  # grey 512², grey 256²
    names = ["average", "laplacian", "fm0", "fm4"]
    short = Schedule(epochs=1, iters=3)
    configs = [fusion.FusionConfig(method=m, schedule=short) for m in names]
    rows = tables.run_table(data_dir, configs, tmp_path, sets=sets, weights_file=real_weights_file)
    with open(tmp_path / "table.csv") as f:
        assert [(r["set"], r["method"]) for r in csv.DictReader(f)] == [
            (r["set"], r["method"]) for r in rows
        ]
    assert len(rows) == len(sets) * len(names) and {r["method"] for r in rows} == set(names)
    clock = {r["method"]: r["qabf_petrovic"] for r in rows if r["set"] == "clock"}
    assert clock["laplacian"] > clock["average"]  # a multi-scale method keeps more edges
    for row in rows:  # every score describes the file written
        folder = data_dir / ("multifocus_grey/clock" if row["set"] == "clock" else sets[1])
        inputs = fusion.stack_set([files.load_image(p) for p in sorted(folder.iterdir())])
        path = tmp_path / "fused" / row["method"] / f"{folder.parent.name}__{row['set']}.png"
        assert row["qe"] == tables.score(inputs, files.load_image(path))["qe"]
    assert [r["method"] for r in rows if "kept_epoch" in r] == ["fm4"] * len(sets)
    saved = json.loads((tmp_path / "table.json").read_text())
    assert [fusion.FusionConfig.from_dict(c) for c in saved["settings"]["configs"]] == configs
    assert (tmp_path / "table.md").read_text().count("### ") == len(sets)
    summary = (tmp_path / "summary.md").read_text()
    assert "### multifocus_grey" in summary and "### medical" in summary and "**" in summary
