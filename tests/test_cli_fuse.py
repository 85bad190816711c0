"""semfuse-fuse end to end on the shared images, its reports, figures and refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tool_cases
from PIL import Image

from semfuse_jax import files, fm4, metrics
from semfuse_jax.optimise import improves

FEW_STEPS = ("--epochs=2", "--iters=5")


def fuse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "semfuse_jax.cli.fuse", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SEMFUSE_WEIGHTS": ""},
        timeout=600,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in result.stderr, lines
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def clock(data_dir) -> list[str]:
    folder = data_dir / "multifocus_grey" / "clock"
    return [str(folder / "clockA.jpg"), str(folder / "clockB.jpg")]


@pytest.fixture(scope="module")
def small_colour_pair(data_dir, tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("small")
    paths = []
    for name in ("lytro-03-A.jpg", "lytro-03-B.jpg"):
        image = Image.open(data_dir / "multifocus_colour_lytro/lytro-03" / name).resize((64, 64))
        paths.append(str(folder / name.replace(".jpg", ".png")))
        image.save(paths[-1])
    return paths


def single_runs(clock, data_dir, real_weights_file, tmp_path_factory) -> tuple[dict, Path]:
    """Three single-set runs of the tool, in one interpreter: ``({name: result}, folder)``."""
    d = tmp_path_factory.mktemp("single")
    weights_flag = f"--weights={real_weights_file}"
    lytro, head = data_dir / "multifocus_colour_lytro/lytro-01", data_dir / "medical/head_bristol"
    cases = {
        "clock": [
            f"--inputs={','.join(clock)}",
            f"--output={d / 'clock.png'}",
            f"--report={d / 'clock.json'}",
            f"--figure={d / 'sheet.png'}",
            weights_flag,
            *FEW_STEPS,
        ],
        "lytro": [
            f"--inputs={lytro / 'lytro-01-A.jpg'},{lytro / 'lytro-01-B.jpg'}",
            f"--output={d / 'lytro.png'}",
            weights_flag,
            *FEW_STEPS,
        ],
        "fm4": [
            f"--inputs={head / 'medA.jpg'},{head / 'medB.jpg'}",
            f"--output={d / 'head.png'}",
            f"--report={d / 'head.json'}",
            weights_flag,
            "--method=fm4",
            "--epochs=3",
            "--iters=20",
        ],
    }
    cases["fm4_plain"] = [  # the same without the edge refinement
        *(a.replace("head.", "head_plain.") for a in cases["fm4"]),
        "--norefine_edges",
    ]
    results = run_tool_cases("fuse", list(cases.values()), tmp_path_factory.mktemp("cases"))
    return dict(zip(cases, results, strict=True)), d


def check_clock_fm0_writes_grey_png_report_and_figure(results: dict, d: Path) -> None:
    assert results["clock"]["returncode"] == 0, results["clock"]["stderr"]
    image = Image.open(d / "clock.png")
    assert image.mode == "L" and image.size == (512, 512)
    record = json.loads((d / "clock.json").read_text())
    for key in ("method", "steps", "final_loss", "optimise_seconds", "compile_seconds", "config"):
        assert key in record
    assert record["method"] == "fm0" and record["steps"] == 10
    assert record["final_loss"] < record["loss_history"][0]
    assert record["config"]["layers"] == ["conv1_1"]
    assert record["config"]["classifier"] == "efficientnet_lite0"  # the weights have no fc8
    top = record["classes"]["inputs"][0][0]
    assert top["label"] in ("analog clock", "wall clock") and 0 < top["probability"] <= 1
    assert "epoch 2/2" in results["clock"]["stderr"]  # progress is logged
    assert Image.open(d / "sheet.png").size[0] == 4 * 256  # two inputs, average, fused


def check_lytro_pair_stays_colour(results: dict, d: Path) -> None:
    assert results["lytro"]["returncode"] == 0, results["lytro"]["stderr"]
    image = np.asarray(Image.open(d / "lytro.png"))
    assert image.shape == (520, 520, 3) and np.abs(np.diff(image.astype(int), axis=-1)).max() > 50


def check_fm4_writes_the_fusion_and_reports_its_quality(results: dict, d: Path) -> None:
    assert results["fm4"]["returncode"] == 0, results["fm4"]["stderr"]
    assert Image.open(d / "head.png").mode == "L"
    record = json.loads((d / "head.json").read_text())
    qe, qabf, best = (record[k] for k in ("quality_history", "quality_history", "best_epoch"))
    qe, qabf = qe["qe"], qabf["qabf_petrovic"]
    assert record["method"] == "fm4" and best > 0  # the refinement beat the pyramid start
    assert qe[best] >= qe[0] and qabf[best] >= qabf[0] and qe[best] + qabf[best] > qe[0] + qabf[0]
    edge = record["edge_refinement"]  # FM4's last step, and whether it was kept
    assert [edge["quality"][k][0] for k in ("qe", "qabf_petrovic")] == [qe[best], qabf[best]]
    assert record["steps"] == 20 * (len(qe) - 1) + fm4.DEFAULT.edge_iters
    if not edge["kept"]:
        assert record["final_loss"] == record["loss_history"][best]  # the image written
    else:
        before, after = np.array(list(edge["quality"].values())).T  # [K] each
        assert improves(after[None], before[None], fm4.DEFAULT.edge_trade)[0]
    assert len(record["weights_sha256"]) == 64 and "--method=fm4" in record["command"]
    assert results["fm4_plain"]["returncode"] == 0, results["fm4_plain"]["stderr"]
    plain = json.loads((d / "head_plain.json").read_text())
    assert plain["config"]["refine_edges"] is False and "edge_refinement" not in plain
    assert plain["steps"] == 20 * (len(qe) - 1) and plain["loss_history"] == record["loss_history"]
    assert plain["final_loss"] == plain["loss_history"][best]
    written = [np.asarray(Image.open(d / f), np.int16) for f in ("head.png", "head_plain.png")]
    assert (np.abs(written[0] - written[1]).max() > 0) == edge["kept"]
    # the scores FM4 decided by and reports are those of the file it wrote (float32, on the device)
    inputs = np.stack([files.load_image(p) for p in record["inputs"]])
    sources = metrics.luminance_255(inputs[None])
    result = metrics.luminance_255(files.load_image(d / "head.png")[None])
    for name, values in edge["quality"].items():
        score = float(getattr(metrics, name)(sources, result)[0])
        assert values[int(edge["kept"])] == pytest.approx(score, abs=2e-5), name


def test_single_set_runs_write_what_they_report(
    clock, data_dir, real_weights_file, tmp_path_factory
):
    """The clock pair (FM0, grey, report, sheet), a Lytro pair (colour) and a CT/MR pair (FM4),
    run in one interpreter (one start-up, shared compilations)."""
    results, d = single_runs(clock, data_dir, real_weights_file, tmp_path_factory)
    check_clock_fm0_writes_grey_png_report_and_figure(results, d)
    check_lytro_pair_stays_colour(results, d)
    check_fm4_writes_the_fusion_and_reports_its_quality(results, d)


def cam_runs(small_colour_pair, full_weights_file, tmp_path_factory) -> tuple[list[dict], Path]:
    """FM2 and FM3 with the full (random) VGG19 as classifier, in one interpreter."""
    d = tmp_path_factory.mktemp("cam")
    cases = [
        [
            f"--inputs={','.join(small_colour_pair)}",
            f"--output={d / f'{method}.png'}",
            f"--weights={full_weights_file}",
            f"--method={method}",
            f"--report={d / f'{method}.json'}",
            f"--figure={d / f'{method}_sheet.png'}",
            "--top_k=2",
            *FEW_STEPS,
        ]
        for method in ("fm2", "fm3")
    ]
    return run_tool_cases("fuse", cases, tmp_path_factory.mktemp("cases")), d


def test_cam_methods_run_with_full_weights_and_report_classes(
    small_colour_pair, full_weights_file, tmp_path_factory
):
    results, d = cam_runs(small_colour_pair, full_weights_file, tmp_path_factory)
    for method, result in zip(("fm2", "fm3"), results, strict=True):
        check_cam_method(method, result, d)


def check_cam_method(method: str, result: dict, d: Path) -> None:
    assert result["returncode"] == 0, result["stderr"]
    record = json.loads((d / f"{method}.json").read_text())
    assert record["config"]["classifier"] == "vgg19"  # auto: the weights hold fc8
    classes = record["classes"]
    assert len(classes["inputs"]) == 2 and len(classes["fused"]) == 5
    probs = [c["probability"] for c in classes["fused"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert record["steps"] == (0 if method == "fm3" else 10)
    rows = 3 if method == "fm3" else 2  # images, CAMs (, mixtures)
    assert Image.open(d / f"{method}_sheet.png").size[1] == rows * (256 + 14)


def _manifest(tmp_path, paths: list[str], count: int) -> Path:
    """``count`` sets made of the same small pair, alternately swapped (distinct outputs)."""
    manifest = tmp_path / "sets.csv"
    lines = [f"set{i},{paths[i % 2]},{paths[1 - i % 2]}" for i in range(count)]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_killed_batch_run_resumes_to_identical_outputs(
    small_colour_pair, real_weights_file, tmp_path
):
    manifest = _manifest(tmp_path, small_colour_pair, 4)
    common = [f"--pairs={manifest}", f"--weights={real_weights_file}", "--batch_size=1"]
    steps = ["--epochs=12", "--iters=10"]
    reference = tmp_path / "reference"
    assert fuse(*common, f"--output_dir={reference}", *steps).returncode == 0

    out = tmp_path / "resumed"
    process = subprocess.Popen(
        [sys.executable, "-m", "semfuse_jax.cli.fuse", *common, f"--output_dir={out}", *steps],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SEMFUSE_WEIGHTS": ""},
    )
    status = out / "status.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (status.is_file() and status.read_text().strip()):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "terminated" in stderr and "Traceback" not in stderr
    done_before = {json.loads(line)["name"] for line in status.read_text().splitlines()}
    assert 1 <= len(done_before) < 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    mtimes = {name: (out / f"{name}.png").stat().st_mtime_ns for name in done_before}

    again = fuse(*common, f"--output_dir={out}", *steps)
    assert again.returncode == 1 and "--resume" in again.stderr  # refuses to clobber the run
    resumed = fuse(*common, f"--output_dir={out}", *steps, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    for i in range(4):
        expected = np.asarray(Image.open(reference / f"set{i}.png"))
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"set{i}.png")), expected)
    for name, mtime in mtimes.items():
        assert (out / f"{name}.png").stat().st_mtime_ns == mtime  # not recomputed
    records = [json.loads(line) for line in status.read_text().splitlines()]
    assert sorted(r["name"] for r in records) == [f"set{i}" for i in range(4)]


def test_quiet_run_prints_nothing(small_colour_pair, real_weights_file, tmp_path):
    result = fuse(
        f"--inputs={','.join(small_colour_pair)}",
        f"--output={tmp_path / 'q.png'}",
        f"--weights={real_weights_file}",
        "--verbosity=-1",
        *FEW_STEPS,
    )
    assert result.returncode == 0 and result.stderr == "" and (tmp_path / "q.png").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_split_a_manifest_like_one(small_colour_pair, real_weights_file, tmp_path):
    manifest = _manifest(tmp_path, small_colour_pair, 6)
    common = [f"--pairs={manifest}", f"--weights={real_weights_file}", "--batch_size=2", *FEW_STEPS]
    single = tmp_path / "single"
    assert fuse(*common, f"--output_dir={single}").returncode == 0
    split = tmp_path / "split"
    address = f"127.0.0.1:{_free_port()}"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "semfuse_jax.cli.fuse",
                *common,
                f"--output_dir={split}",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SEMFUSE_WEIGHTS": ""},
        )
        for i in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
    names = {}
    for i in range(2):
        status = split / f"status.p{i}.jsonl"
        names[i] = {json.loads(line)["name"] for line in status.read_text().splitlines()}
    assert names[0] and names[1] and not names[0] & names[1]
    assert names[0] | names[1] == {f"set{i}" for i in range(6)}
    for i in range(6):
        expected = np.asarray(Image.open(single / f"set{i}.png"))
        np.testing.assert_array_equal(np.asarray(Image.open(split / f"set{i}.png")), expected)
