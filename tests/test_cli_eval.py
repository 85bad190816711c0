"""semfuse-eval: score mode and the Table-1 style table mode on the shared pairs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from semfuse_jax import io, metrics


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
    a, b = io.load_image(folder / "clockA.jpg"), io.load_image(folder / "clockB.jpg")
    fused = tmp_path / "mean.png"
    io.save_image(fused, (a + b) / 2)
    result = evaluate(
        f"--inputs={folder / 'clockA.jpg'},{folder / 'clockB.jpg'}", f"--fused={fused}", "--json"
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert list(values) == list(metrics.NAMES)
    direct = metrics.compute_all(
        metrics.luminance_255(np.stack([a, b])), metrics.luminance_255(io.load_image(fused))
    )
    for name in metrics.NAMES:
        assert values[name] == pytest.approx(float(direct[name]), abs=1e-9)
    bad = evaluate(
        f"--inputs={folder / 'clockA.jpg'},{folder / 'clockB.jpg'}", f"--fused={tmp_path / 'x.png'}"
    )
    assert bad.returncode == 1 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


def test_table_mode_on_the_shared_pairs(data_dir, real_weights_file, tmp_path):
    sets = [
        "multifocus_grey/clock",
        "medical/head_bristol",
        "multifocus_colour_lytro/lytro-01",
        "ir_visible/TNO_Camp",
    ]  # one set of each domain
    methods = ["average", "dwt", "laplacian", "fm0", "fm1", "fm4"]
    result = evaluate(
        f"--table={data_dir}",
        f"--sets={','.join(sets)}",
        f"--methods={','.join(methods)}",
        f"--weights={real_weights_file}",
        f"--output_dir={tmp_path}",
        "--epochs=1",
        "--iters=3",
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(sets) * len(methods)
    assert {r["method"] for r in rows} == set(methods)
    clock = {r["method"]: float(r["qabf_petrovic"]) for r in rows if r["set"] == "clock"}
    assert clock["laplacian"] > clock["average"]  # a multi-scale method keeps more edges
    kept = [
        r for r in json.loads((tmp_path / "table.json").read_text())["rows"] if "kept_epoch" in r
    ]
    assert [r["method"] for r in kept] == ["fm4"] * len(sets)
    assert all(r["kept_epoch"] in (0, 1) for r in kept)  # one epoch: the start or its result
    table = (tmp_path / "table.md").read_text()
    assert table.count("### ") == len(sets) and "**" in table
    summary = (tmp_path / "summary.md").read_text()
    for domain in ("multifocus_grey", "medical", "multifocus_colour_lytro", "ir_visible"):
        assert f"### {domain}" in summary
    assert len(list((tmp_path / "fused" / "fm0").iterdir())) == len(sets)
