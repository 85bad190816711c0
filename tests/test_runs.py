"""Runs as library code, in process: manifests, batch planning, status files, resume."""

from __future__ import annotations

import dataclasses
import json
import threading

import jax
import numpy as np
import pytest
from PIL import Image

from semfuse_jax import fusion, runs
from semfuse_jax.errors import SemfuseError
from semfuse_jax.optimise import Schedule

SHORT = fusion.FusionConfig(schedule=Schedule(epochs=2, iters=5))


@pytest.fixture(scope="module")
def pairs(data_dir, tmp_path_factory) -> dict[str, list[str]]:
    """A 64² colour pair, a 48² colour pair and the 512² grey clock pair."""
    folder = tmp_path_factory.mktemp("pairs")
    made: dict[str, list[str]] = {}
    for size in (64, 48):
        made[str(size)] = []
        for name in ("lytro-03-A.jpg", "lytro-03-B.jpg"):
            path = folder / f"{size}_{name.replace('.jpg', '.png')}"
            lytro = data_dir / "multifocus_colour_lytro/lytro-03" / name
            Image.open(lytro).resize((size, size)).save(path)
            made[str(size)].append(str(path))
    clock = data_dir / "multifocus_grey/clock"
    made["clock"] = [str(clock / "clockA.jpg"), str(clock / "clockB.jpg")]
    return made


def test_manifest_lines_headers_comments_and_bad_lines(tmp_path):
    manifest = tmp_path / "sets.csv"
    manifest.write_text("name,a,b\n# a comment\n\nx, a.png , b.png\ny,a.png,b.png,c.png\n")
    rows = runs.read_manifest(manifest)
    assert [(n, [p.name for p in paths]) for n, paths in rows] == [
        ("x", ["a.png", "b.png"]),
        ("y", ["a.png", "b.png", "c.png"]),
    ]
    assert rows[0][1][0].parent == tmp_path  # relative to the manifest's folder
    for bad in ("x,a.png\n", "x,a,b\nx,a,b\n", "a/b,a,b\n", ",a,b\n"):
        manifest.write_text(bad)
        with pytest.raises(SemfuseError, match="line"):
            runs.read_manifest(manifest)


def test_batches_follow_shapes_batch_size_and_memory():
    keys = [(2, 64, 64)] * 5 + [(2, 32, 32)] * 2 + [(3, 64, 64)]
    assert runs.plan_batches(keys, SHORT, 8, 1 << 40) == [[0, 1, 2, 3, 4], [5, 6], [7]]
    assert runs.plan_batches(keys, SHORT, 2, 1 << 40) == [[0, 1], [2, 3], [4], [5, 6], [7]]
    per_set = fusion.memory_estimate(1, 2, 64, 64, SHORT)
    split = runs.plan_batches(keys[:5], SHORT, 8, 2 * per_set + 1)  # room for two at a time
    assert split == [[0, 1], [2, 3], [4]]


def test_status_survives_a_torn_line(tmp_path):
    status = tmp_path / runs.STATUS_FILE
    runs.append_status(status, [{"name": "a", "status": "done"}])
    with open(status, "a") as f:
        f.write('{"name": "b", "sta')  # a run killed mid-write
    runs.append_status(status, [{"name": "c", "status": "done"}])
    assert sorted(runs.read_status(status)) == ["a", "c"]


def test_manifest_run_batches_sizes_records_failures_and_resumes(
    pairs, real_weights_file, tmp_path
):
    manifest = tmp_path / "sets.csv"
    manifest.write_text(
        f"small,{pairs['64'][0]},{pairs['64'][1]}\n"
        f"small_again,{pairs['64'][1]},{pairs['64'][0]}\n"
        f"smaller,{pairs['48'][0]},{pairs['48'][1]}\n"
        f"broken,{pairs['64'][0]},{tmp_path / 'missing.png'}\n"
    )
    out, report = tmp_path / "out", tmp_path / "batch.json"
    kwargs = {"weights_file": str(real_weights_file), "report": str(report)}
    with pytest.raises(SemfuseError, match="1 of 4 sets failed"):
        runs.fuse_manifest(manifest, out, SHORT, **kwargs)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["small.png", "small_again.png", "smaller.png", "status.jsonl"]
    records = {r["name"]: r for r in json.loads(report.read_text())["sets"]}
    assert records["broken"]["status"] == "failed" and "no such file" in records["broken"]["error"]
    assert records["small"]["batch_size"] == 2 and records["smaller"]["batch_size"] == 1
    assert fusion.FusionConfig.from_dict(json.loads(report.read_text())["config"]) == SHORT
    # each set equals its fusion alone (the batch of two included)
    alone = runs.fuse_set(
        pairs["64"][::-1], tmp_path / "alone.png", SHORT, **kwargs | {"report": None}
    )
    assert alone["batch_size"] == 1
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "small_again.png")),
        np.asarray(Image.open(tmp_path / "alone.png")),
    )
    # a second run refuses the folder; --resume recomputes only what is not recorded as done
    with pytest.raises(SemfuseError, match="--resume"):
        runs.fuse_manifest(manifest, out, SHORT, **kwargs | {"report": None})
    (out / "smaller.png").unlink()
    before = (out / "small.png").stat().st_mtime_ns
    with pytest.raises(SemfuseError, match="1 of 4 sets failed"):
        runs.fuse_manifest(manifest, out, SHORT, resume=True, **kwargs)
    assert (out / "smaller.png").is_file() and (out / "small.png").stat().st_mtime_ns == before
    resumed = {r["name"]: r for r in json.loads(report.read_text())["sets"]}
    assert resumed["small"].get("resumed") and not resumed["smaller"].get("resumed")


def test_fuse_set_reports_the_config_and_refuses_its_inputs_as_output(pairs, tmp_path):
    report = tmp_path / "r.json"
    record = runs.fuse_set(pairs["48"], tmp_path / "f.png", SHORT, report=str(report))
    assert json.loads(report.read_text()) == json.loads(json.dumps(record))
    reported = fusion.FusionConfig.from_dict(record["config"])  # classifier: the one that ran
    assert reported == dataclasses.replace(SHORT, classifier="efficientnet_lite0")
    assert record["steps"] == 10 and len(record["classes"]["inputs"]) == 2
    with pytest.raises(SemfuseError, match="input"):
        runs.fuse_set(pairs["48"], pairs["48"][0], SHORT, overwrite=True)


def test_the_next_batch_is_stacked_and_placed_in_the_background(pairs, tmp_path, monkeypatch):
    manifest = tmp_path / "sets.csv"
    rows = [f"a{k},{','.join(pairs['64'])}" for k in range(3)] + [f"b,{','.join(pairs['48'])}"]
    manifest.write_text("\n".join(rows) + "\n")
    placed, fused = [], []
    real_place, real_fuse = runs.stack_and_place, fusion.fuse

    def place(sets):
        placed.append((threading.current_thread() is threading.main_thread(), len(sets)))
        return real_place(sets)

    def fuse(weights, images, config, **kw):
        fused.append((isinstance(images, jax.Array), images.shape[:2]))
        return real_fuse(weights, images, config, **kw)

    monkeypatch.setattr(runs, "stack_and_place", place)
    monkeypatch.setattr(fusion, "fuse", fuse)
    config = dataclasses.replace(SHORT, method="laplacian")
    runs.fuse_manifest(manifest, tmp_path / "out", config, batch_size=2)
    # batches [a0, a1], [a2], [b]: each stacked and placed off the main thread, fused as placed
    assert placed == [(False, 2), (False, 1), (False, 1)]
    assert fused == [(True, (2, 2)), (True, (1, 2)), (True, (1, 2))]
    monkeypatch.undo()
    for name, inputs in (("a2", pairs["64"]), ("b", pairs["48"])):  # the same files as alone
        runs.fuse_set(inputs, tmp_path / f"{name}.png", config)
        alone = np.asarray(Image.open(tmp_path / f"{name}.png"))
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "out" / f"{name}.png")), alone
        )
