"""No data loss: outputs never replace a file the run reads, one overwrite policy for every tool,
resume that recovers from any interruption point, one run per output folder, and ``--help``."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tool
from PIL import Image

from semfuse_jax import files
from semfuse_jax.errors import SemfuseError


def one_line_error(result: subprocess.CompletedProcess, needle: str) -> bool:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return (
        result.returncode == 1
        and len(lines) == 1
        and needle in lines[0]
        and "Traceback" not in result.stderr
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for name in ("a.png", "b.png", "c.png"):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 256, (24, 28), dtype=np.uint8)).save(paths[-1])
    return paths


def test_check_outputs_refuses_inputs_links_and_repeats(images, tmp_path):
    a, b, _ = images
    link = tmp_path / "link.png"
    link.symlink_to(a)
    hard = tmp_path / "hard.png"
    os.link(b, hard)
    for outputs, needle in (
        ([a], "is an input"),
        ([link], "is an input"),
        ([hard], "is an input"),
        ([tmp_path / "x.png", tmp_path / "sub" / ".." / "x.png"], "named twice"),
        ([tmp_path / ("n" * 300 + ".png")], "too long"),
    ):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(SemfuseError, match=needle):
            files.check_outputs(outputs, [a, b], overwrite=True)
    files.check_outputs([tmp_path / "new.png"], [a, b], overwrite=False)


def test_batch_output_that_is_another_sets_input_is_refused(images, tmp_path):
    a, b, c = images
    manifest = tmp_path / "sets.csv"
    # set "a"'s output folder is tmp_path, so its output a.png would replace the input of set two
    manifest.write_text(f"a,{b},{c}\ntwo,{a},{b}\n")
    before = snapshot(tmp_path)
    result = run_tool(
        "fuse", f"--pairs={manifest}", f"--output_dir={tmp_path}", "--method=average", "--overwrite"
    )
    assert one_line_error(result, "is an input"), result.stderr
    after = snapshot(tmp_path)
    assert after == before


@pytest.mark.parametrize("clash", ["report", "figure"])
def test_report_or_figure_named_like_the_output_is_refused(images, tmp_path, clash):
    a, b, _ = images
    out = tmp_path / "f.png"
    result = run_tool(
        "fuse", f"--inputs={a},{b}", f"--output={out}", f"--{clash}={out}", "--method=average"
    )
    assert one_line_error(result, "named twice"), result.stderr
    assert not out.exists()


def test_weights_convert_never_replaces_its_source_or_an_unnamed_file(real_weights_file, tmp_path):
    src = tmp_path / real_weights_file.name
    src.write_bytes(real_weights_file.read_bytes())
    result = run_tool("weights", "convert", f"--src={src}", f"--out={src}", "--overwrite")
    assert one_line_error(result, "is an input"), result.stderr
    assert src.read_bytes() == real_weights_file.read_bytes()
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"keep me")
    assert one_line_error(
        run_tool("weights", "convert", f"--src={src}", f"--out={out}"), "--overwrite"
    )
    assert out.read_bytes() == b"keep me"
    assert (
        run_tool("weights", "convert", f"--src={src}", f"--out={out}", "--overwrite").returncode
        == 0
    )
    assert out.read_bytes() != b"keep me"


def test_eval_table_refuses_existing_outputs_and_scores_the_written_files(images, tmp_path):
    root = tmp_path / "root" / "domain" / "set"
    root.mkdir(parents=True)
    for p in images[:2]:
        (root / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "table"
    args = [f"--table={tmp_path / 'root'}", "--methods=average", f"--output_dir={out}"]
    first = run_tool("eval", *args)
    assert first.returncode == 0, first.stderr
    again = run_tool("eval", *args)
    assert one_line_error(again, "--overwrite"), again.stderr
    assert one_line_error(run_tool("eval", *args[:1], "--methods=", *args[2:]), "--methods")
    row = json.loads((out / "table.json").read_text())["rows"][0]
    scored = run_tool(
        "eval",
        f"--inputs={root / 'a.png'},{root / 'b.png'}",
        f"--fused={out / 'fused' / 'average' / 'domain__set.png'}",
        "--json",
    )
    from_file = json.loads(scored.stdout)
    assert row["q0"] == pytest.approx(from_file["q0"], abs=1e-12)


def _manifest(tmp_path: Path, images: list[Path]) -> Path:
    manifest = tmp_path / "sets.csv"
    manifest.write_text(f"one,{images[0]},{images[1]}\ntwo,{images[1]},{images[2]}\n")
    return manifest


def test_status_file_symlink_is_refused(images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("")
    (out / "status.jsonl").symlink_to(elsewhere)
    args = [f"--pairs={_manifest(tmp_path, images)}", f"--output_dir={out}", "--method=average"]
    result = run_tool("fuse", *args, "--resume")
    assert one_line_error(result, "not a regular file"), result.stderr
    assert elsewhere.read_text() == ""


def test_resume_recovers_from_every_interruption_point(images, tmp_path):
    manifest = _manifest(tmp_path, images)
    out = tmp_path / "out"
    args = [f"--pairs={manifest}", f"--output_dir={out}", "--method=max"]
    assert run_tool("fuse", *args).returncode == 0
    reference = snapshot(out)
    status = out / "status.jsonl"
    lines = status.read_text().splitlines()
    # killed between the rename of "two"'s output and its record, mid-way through writing it:
    status.write_text(lines[0] + "\n" + lines[1][:17])
    resumed = run_tool("fuse", *args, "--resume", cwd=tmp_path / "out")  # another working directory
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "two.png").read_bytes() == reference["two.png"]
    after = status.read_text().splitlines()
    assert after[:2] == [lines[0], lines[1][:17]]  # the torn line stays one line of its own
    assert [json.loads(line)["name"] for line in after[2:]][-1] == "two"
    status.write_text("")  # an empty status file: everything is recomputed
    assert run_tool("fuse", *args, "--resume").returncode == 0
    assert snapshot(out)["one.png"] == reference["one.png"]


def test_second_run_on_one_output_folder_is_refused(images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    held = os.open(out / "status.jsonl", os.O_RDWR | os.O_CREAT)  # as a running run holds it
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        args = [f"--pairs={_manifest(tmp_path, images)}", f"--output_dir={out}", "--method=max"]
        result = run_tool("fuse", *args)
    finally:
        os.close(held)
    assert one_line_error(result, "another semfuse-fuse run"), result.stderr
    assert not (out / "one.png").exists() and (out / "status.jsonl").read_text() == ""


@pytest.mark.parametrize(
    "module, flags_listed",
    [
        ("fuse", ["--inputs", "--method", "fm4", "laplacian", "--epochs", "--weights"]),
        ("eval", ["--table", "--methods", "fm4", "overwrite", "--lr"]),
        ("weights", ["--src", "--out", "overwrite"]),
    ],
)
def test_help_lists_the_tools_own_flags(module, flags_listed):
    result = run_tool(module, "--help")
    assert result.returncode == 0, result.stderr
    for flag in flags_listed:
        assert flag in result.stdout
    assert "(default:" in result.stdout
