"""Odd but valid input: rotated JPEGs, 16-bit images, manifest headers, broken pipes, batches
split to fit the memory limit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import run_tool, run_tool_cases
from PIL import Image

from semfuse_jax import files, fm4


def test_header_size_follows_the_exif_orientation(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when displayed
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif)
    assert files.image_size(tmp_path / "rotated.jpg") == (30, 20)
    assert files.load_image(tmp_path / "rotated.jpg").shape[:2] == (30, 20)


def test_sixteen_bit_grey_round_trips(tmp_path):
    levels = np.random.default_rng(1).integers(0, 65536, (9, 11), dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "in.png")
    assert files.bit_depth(tmp_path / "in.png") == 16
    image = files.load_image(tmp_path / "in.png")
    files.save_image(tmp_path / "out.png", image, bits=16)
    assert Image.open(tmp_path / "out.png").mode.startswith("I")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), levels)
    files.save_image(tmp_path / "eight.png", image)
    assert files.bit_depth(tmp_path / "eight.png") == 8


def test_cli_keeps_16_bits_skips_a_csv_header_and_splits_batches_to_fit_memory(tmp_path):
    rng = np.random.default_rng(2)
    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)).save(paths[-1])
    manifest = tmp_path / "sets.csv"
    manifest.write_text(
        "name,input1,input2\n" + "".join(f"s{i},{paths[0]},{paths[1]}\n" for i in range(3))
    )
    report = tmp_path / "r.json"
    one_set_gib = 1.5 * 40 * 48 * 4 * 3 * (2 + 4) / 2**30  # room for one set, not for three
    result = run_tool(
        "fuse",
        f"--pairs={manifest}",
        f"--output_dir={tmp_path / 'out'}",
        "--method=laplacian",
        f"--report={report}",
        f"--max_memory_gb={one_set_gib}",
    )
    assert result.returncode == 0, result.stderr
    sets = json.loads(report.read_text())["sets"]
    assert [s["name"] for s in sets] == ["s0", "s1", "s2"]
    assert all(s["batch_size"] == 1 and s["bits"] == 16 for s in sets)
    assert Image.open(tmp_path / "out" / "s0.png").mode.startswith("I;16")
    record = json.loads(report.read_text())
    assert record["command"][0] and record["time"] and "--method=laplacian" in record["command"]


def test_json_into_a_closed_pipe_ends_quietly(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.png", "f.png"):
        Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(tmp_path / name)
    command = (
        f"{sys.executable} -m semfuse_jax.cli.eval --inputs={tmp_path / 'a.png'},"
        f"{tmp_path / 'b.png'} --fused={tmp_path / 'f.png'} --json | head -c 1"
    )
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert result.stdout == "{" and "Traceback" not in result.stderr, result.stderr


def test_interrupted_batch_exits_130_or_143_cleanly_at_any_moment(tmp_path, real_weights_file):
    rng = np.random.default_rng(4)
    paths = []
    for name in ("a.png", "b.png"):
        paths.append(tmp_path / name)
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(paths[-1])
    manifest = tmp_path / "sets.csv"
    # many short sets: a long run made of short compiled calls, so the signals land in every
    # phase (start-up, compiling, inside a compiled call and its progress callbacks, writing)
    manifest.write_text("".join(f"s{i},{paths[i % 2]},{paths[1 - i % 2]}\n" for i in range(400)))
    for trial, delay in enumerate((0.0, 0.6, 1.2, 1.8, 2.4, 3.0)):
        sig = (signal.SIGINT, signal.SIGTERM)[trial % 2]
        out = tmp_path / f"out{trial}"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "semfuse_jax.cli.fuse",
                f"--pairs={manifest}",
                f"--output_dir={out}",
                "--batch_size=1",
                f"--weights={real_weights_file}",
                "--epochs=2",
                "--iters=5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SEMFUSE_WEIGHTS": ""},
        )
        deadline = time.monotonic() + 120
        while not (out / "status.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the run has started: its status file is claimed
        time.sleep(delay)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        expected = 130 if sig == signal.SIGINT else 143
        assert process.returncode == expected, (trial, process.returncode, stderr[-1000:])
        assert "Traceback" not in stderr
        leftovers = (
            [p.name for p in out.iterdir() if p.name.startswith(".")] if out.exists() else []
        )
        assert not leftovers


def test_a_full_disk_is_one_error_line(tmp_path, monkeypatch):
    import errno

    from semfuse_jax.errors import SemfuseError

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    try:
        files.write_text(tmp_path / "report.json", "{}")
    except SemfuseError as exc:
        assert "No space left" in str(exc)
    else:
        raise AssertionError("no error")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_tiny_images_classify_and_fuse_with_a_vgg19_classifier(full_weights):
    from semfuse_jax import classifier, fusion

    images = np.random.default_rng(5).uniform(size=(1, 2, 17, 23, 3)).astype(np.float32)
    report = classifier.class_report(full_weights, images[0], images[0, 0])
    assert report["classifier"] == "vgg19" and len(report["fused"]) == 5
    for method in ("fm3", "fm5"):
        config = fusion.FusionConfig(method=method, classifier="vgg19")
        assert fusion.fuse(full_weights, images, config).fused.shape == (1, 17, 23, 3)


def test_a_report_reruns_to_the_same_bits(tmp_path):
    rng = np.random.default_rng(6)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)).save(tmp_path / name)
    inputs = f"--inputs={tmp_path / 'a.png'},{tmp_path / 'b.png'}"
    first, again, default = run_tool_cases(
        "fuse",
        [
            [
                inputs,
                f"--output={tmp_path / 'first.png'}",
                f"--report={tmp_path / 'r.json'}",
                "--method=fm1",
                "--epochs=3",
                "--iters=7",
                "--init_noise=2",
                "--seed=5",
            ],
            [inputs, f"--output={tmp_path / 'again.png'}", f"--config={tmp_path / 'r.json'}"],
            [inputs, f"--output={tmp_path / 'default.png'}", "--method=fm1"],
        ],
        tmp_path,
    )
    assert first["returncode"] == 0, first["stderr"]
    assert again["returncode"] == 0, again["stderr"]
    assert (tmp_path / "again.png").read_bytes() == (tmp_path / "first.png").read_bytes()
    assert default["returncode"] == 0
    assert (tmp_path / "default.png").read_bytes() != (tmp_path / "first.png").read_bytes()


def test_fm4_settings_travel_in_the_report(tmp_path):
    """A report holds FM4's settings: re-run unchanged it gives the same bits, with one setting
    changed a different image, and as a version-2 report (no settings recorded) the same bits."""
    rng = np.random.default_rng(8)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (30, 36), dtype=np.uint8)).save(tmp_path / name)
    inputs = f"--inputs={tmp_path / 'a.png'},{tmp_path / 'b.png'}"
    run = [inputs, f"--output={tmp_path / 'first.png'}", f"--report={tmp_path / 'r.json'}"]
    (first,) = run_tool_cases("fuse", [[*run, "--method=fm4", "--epochs=2", "--iters=5"]], tmp_path)
    assert first["returncode"] == 0, first["stderr"]
    report = json.loads((tmp_path / "r.json").read_text())
    params = report["config"]["method_params"]
    assert params == json.loads(json.dumps(dataclasses.asdict(fm4.DEFAULT)))
    changed = {**report, "config": {**report["config"], "method_params": {**params, "levels": 2}}}
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    old = {k: v for k, v in report["config"].items() if k != "method_params"}
    (tmp_path / "v2.json").write_text(json.dumps({"config": {**old, "version": 2}}))
    cases = [
        [inputs, f"--output={tmp_path / f'{name}.png'}", f"--config={tmp_path / f'{name}.json'}"]
        for name in ("r", "changed", "v2")
    ]
    results = run_tool_cases("fuse", cases, tmp_path)
    assert all(r["returncode"] == 0 for r in results), [r["stderr"] for r in results]
    data = {
        name: (tmp_path / f"{name}.png").read_bytes() for name in ("first", "r", "changed", "v2")
    }
    assert data["r"] == data["first"] and data["v2"] == data["first"]
    assert data["changed"] != data["first"]
