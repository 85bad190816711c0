"""A full disk: batch runs, table mode and weight conversion stop with one error line and a
non-zero exit, leave no partial or temporary file, never record a set as done that was not
written, and a ``--resume`` afterwards finishes the run exactly.

The disk is a small tmpfs mounted for the test (CI runs as root; elsewhere the tests need the
right to mount, and are skipped without it outside CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tool
from PIL import Image

from semfuse_jax import runs
from semfuse_jax.errors import DiskFullError


@contextlib.contextmanager
def small_disk(folder: Path, kilobytes: int) -> Iterator[Path]:
    """A tmpfs of ``kilobytes`` mounted at ``folder`` for the ``with`` block."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs ({mounted.stderr.strip()})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def grow(folder: Path, kilobytes: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={kilobytes}k", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if " error: " in line or "Trace" in line]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
    assert "No space left on device" in lines[0] and "--resume" in lines[0], lines
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary (dot) files anywhere below ``folder``."""
    return [p.name for p in folder.rglob(".*")]


@pytest.fixture
def manifest(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for k in range(5):
        names = []
        for side in "ab":
            path = tmp_path / f"{side}{k}.png"
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
            names.append(str(path))
        rows.append(f"s{k},{names[0]},{names[1]}\n")
    (tmp_path / "sets.csv").write_text("".join(rows))
    return tmp_path / "sets.csv"


def test_a_batch_run_on_a_full_disk_stops_and_resumes_exactly(manifest, tmp_path):
    args = [f"--pairs={manifest}", "--method=laplacian", "--batch_size=1"]
    reference = tmp_path / "reference"
    assert run_tool("fuse", *args, f"--output_dir={reference}").returncode == 0
    with small_disk(tmp_path / "disk", 40) as disk:  # room for about three of the five outputs
        out = disk / "out"
        first = run_tool("fuse", *args, f"--output_dir={out}")
        one_error_line(first)
        status = [json.loads(line) for line in (out / "status.jsonl").read_text().splitlines()]
        done = [r["name"] for r in status if r["status"] == "done"]
        assert 1 <= len(done) < 5 and all(r["status"] == "done" for r in status), status
        for name in done:  # every set recorded as done was written whole
            assert (out / f"{name}.png").read_bytes() == (reference / f"{name}.png").read_bytes()
        assert not leftovers(out)
        grow(disk, 1024)
        resumed = run_tool("fuse", *args, f"--output_dir={out}", "--resume")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        for k in range(5):
            assert (out / f"s{k}.png").read_bytes() == (reference / f"s{k}.png").read_bytes()
        final = runs.read_status(out / "status.jsonl")
        assert sorted(final) == [f"s{k}" for k in range(5)]
        assert all(r["status"] == "done" for r in final.values())


def test_a_status_write_that_fails_is_undone(tmp_path):
    with small_disk(tmp_path / "disk", 16) as disk:
        status = disk / "status.jsonl"
        runs.append_status(status, [{"name": "one", "status": "done"}])
        before = status.read_bytes()
        fill(disk)
        with pytest.raises(DiskFullError, match="No space left"):
            runs.append_status(status, [{"name": "two", "status": "done", "pad": "x" * 9000}])
        assert status.read_bytes() == before  # no torn or partial record


def test_a_run_that_stops_before_recording_anything_leaves_no_status_file(manifest, tmp_path):
    with small_disk(tmp_path / "disk", 16) as disk:
        out = disk / "out"
        out.mkdir()
        fill(disk)
        result = run_tool("fuse", f"--pairs={manifest}", f"--output_dir={out}", "--method=max")
        one_error_line(result)
        assert sorted(p.name for p in out.iterdir()) == []


def test_table_mode_and_weight_conversion_on_a_full_disk(tmp_path, real_weights_file):
    rng = np.random.default_rng(1)
    for k in range(3):
        folder = tmp_path / "sets" / "domain" / f"set{k}"
        folder.mkdir(parents=True)
        for side in "ab":
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{side}.png")
    with small_disk(tmp_path / "disk", 48) as disk:
        table = run_tool(
            "eval",
            f"--table={tmp_path / 'sets'}",
            "--methods=average,max",
            f"--output_dir={disk / 'table'}",
        )
        one_error_line(table)
        assert not leftovers(disk)
        assert not (disk / "table" / "table.csv").exists()
        converted = run_tool(
            "weights", "convert", f"--src={real_weights_file}", f"--out={disk / 'w.safetensors'}"
        )
        one_error_line(converted)
        assert not (disk / "w.safetensors").exists() and not leftovers(disk)
