"""A table of bad inputs across the tools: each exits non-zero with one clear line on stderr,
no traceback, and leaves no output (nor temporary) file behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_tool_cases
from PIL import Image

GOOD = "good_a.png", "good_b.png"


@pytest.fixture(scope="module")
def files(tmp_path_factory, real_weights_file) -> Path:
    """A folder of good and bad inputs shared by the cases."""
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    for name in GOOD:
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(d / name)
    Image.fromarray(rng.integers(0, 256, (33, 40, 3), dtype=np.uint8)).save(d / "other_size.png")
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    (d / "truncated.png").write_bytes((d / GOOD[0]).read_bytes()[:100])
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).convert("CMYK").save(
        d / "cmyk.tif"
    )
    Image.fromarray(rng.uniform(size=(32, 40)).astype(np.float32)).save(d / "float.tif")
    rgba = rng.integers(0, 256, (32, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    Image.fromarray(rgba).save(d / "transparent.png")
    corrupt = bytearray(real_weights_file.read_bytes())
    corrupt[len(corrupt) // 3] ^= 0x10
    (d / "weights").mkdir()
    (d / "weights" / real_weights_file.name).write_bytes(bytes(corrupt))
    (d / "bad.csv").write_text("only_a_name\n")
    a, b = d / GOOD[0], d / GOOD[1]
    (d / "empty_name.csv").write_text(f"one,{a},{b}\n,{a},{b}\n")
    (d / "nul.csv").write_bytes(f"one,{a},{b}\n".encode() + b"tw\x00o,x,y\n")
    (d / "latin1.csv").write_bytes(f"one,{a},{b}\n".encode() + b"caf\xe9,x,y\n")
    import h5py

    with h5py.File(d / "weights" / "huge.h5", "w") as f:  # a header claiming 40 GB, no data
        f.attrs["layer_names"] = [b"block1_conv1"]
        group = f.create_group("block1_conv1")
        group.attrs["weight_names"] = [b"block1_conv1/kernel:0", b"block1_conv1/bias:0"]
        group.create_dataset(
            "block1_conv1/kernel:0", shape=(100000, 100000), dtype="f4", chunks=(1, 16)
        )
        group.create_dataset("block1_conv1/bias:0", shape=(64,), dtype="f4")
    frames = [Image.fromarray(rng.integers(0, 256, (32, 40), dtype=np.uint8)) for _ in range(2)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:])
    (d / "loop.png").symlink_to(d / "loop.png")
    from semfuse_jax.models import vgg19 as weights_module

    params, _, _ = weights_module.read_any(real_weights_file)
    weights_module.save_canonical(
        d / "weights" / "bad_prep.safetensors",
        {"conv1_1": params["conv1_1"]},
        weights_module.CAFFE_PREPROCESSING,
        "test",
    )
    from safetensors.numpy import load_file, save_file

    tensors = load_file(d / "weights" / "bad_prep.safetensors")
    _, meta = weights_module.read_safetensors(d / "weights" / "bad_prep.safetensors")
    meta["preprocessing"] = meta["preprocessing"].replace("103.939", '"x"')
    save_file(tensors, d / "weights" / "bad_prep.safetensors", metadata=meta)
    (d / "existing.png").write_bytes((d / GOOD[0]).read_bytes())
    from semfuse_jax import fusion

    config = fusion.FusionConfig(method="fm4").to_dict()
    old = {k: v for k, v in config.items() if k not in ("version", "refine_edges", "colour")}
    (d / "old_report.json").write_text(json.dumps({"method": "fm4", "config": old}))
    (d / "future_report.json").write_text(json.dumps({"config": {**config, "version": 99}}))
    for name, change in (("typo", {"gate_thresh": 0.5}), ("range", {"gate_threshold": 2})):
        params = {**config["method_params"], **change}
        (d / f"{name}_report.json").write_text(
            json.dumps({"config": {**config, "method_params": params}})
        )
    return d


def _cases(d: Path, w: Path, data: Path) -> list[tuple[str, list[str], str]]:
    a, b = d / GOOD[0], d / GOOD[1]
    pair = f"--inputs={a},{b}"
    out = f"--output={d / 'out.png'}"
    wf = f"--weights={w}"
    short = ["--epochs=1", "--iters=2"]
    fuse = "semfuse_jax.cli.fuse"
    return [
        (fuse, [f"--inputs={a},{d / 'missing.png'}", out, wf], "no such file"),
        (fuse, [f"--inputs={a},{d / 'empty.png'}", out, wf], "not a readable image"),
        (fuse, [f"--inputs={a},{d / 'text.png'}", out, wf], "not a readable image"),
        (fuse, [f"--inputs={a},{d / 'truncated.png'}", out, wf], "not a readable image"),
        (fuse, [f"--inputs={a},{d / 'cmyk.tif'}", out, wf], "unsupported mode CMYK"),
        (fuse, [f"--inputs={a},{d / 'float.tif'}", out, wf], "unsupported mode F"),
        (fuse, [f"--inputs={a},{d / 'transparent.png'}", out, wf], "transparent"),
        (fuse, [f"--inputs={a},{d / 'other_size.png'}", out, wf], "differ in size"),
        (fuse, [f"--inputs={a}", out, wf], "at least two"),
        (fuse, [pair, f"--output={a}", wf], "is an input"),
        (fuse, [pair, f"--output={d / 'nowhere' / 'f.png'}", wf], "does not exist"),
        (fuse, [pair, f"--output={d / 'existing.png'}", wf], "--overwrite"),
        (fuse, [pair, f"--output={d / 'out.xyz'}", wf], "lossless"),
        (fuse, [pair, out, wf, "--method=fm9"], "fm9"),
        (fuse, [pair, out, wf, "--epochs=0"], "epochs"),
        (fuse, [pair, out, f"--weights={d / 'missing.h5'}"], "does not exist"),
        (fuse, [pair, out, f"--weights={d / 'weights' / w.name}"], "pinned"),
        (fuse, [pair, out, wf, "--method=fm3", "--classifier=vgg19"], "conv4_1"),
        (fuse, [pair, out, wf, "--method=fm5", "--cam_layers=conv5_4"], "conv5_4"),
        (fuse, [f"--inputs={a},{d / 'other_size.png'}", out, wf, "--method=fm4"], "differ in size"),
        (fuse, [f"--inputs={a},{d / 'truncated.png'}", out, wf, "--method=fm4"], "not a readable"),
        (fuse, [pair, out, f"--weights={d / 'weights' / w.name}", "--method=fm4"], "pinned"),
        (fuse, [pair, out, wf, "--method=fm4", "--layers=conv4_1"], "conv4_1"),
        (fuse, [pair, out, wf, "--max_memory_gb=0.00001"], "GiB"),
        (fuse, [pair, out, f"--weights={d / 'text.png'}"], "unknown format"),
        (fuse, [f"--pairs={d / 'bad.csv'}", f"--output_dir={d / 'batch'}", wf], "line 1"),
        (fuse, [f"--pairs={d / 'none.csv'}", f"--output_dir={d / 'batch'}", wf], "does not exist"),
        ("semfuse_jax.cli.eval", [pair, f"--fused={d / 'other_size.png'}"], "not the size"),
        ("semfuse_jax.cli.eval", [pair, f"--fused={d / 'text.png'}"], "not a readable image"),
        ("semfuse_jax.cli.eval", [pair], "--fused"),
        ("semfuse_jax.cli.weights", ["info", f"--path={d / 'text.png'}"], "unknown format"),
        (
            "semfuse_jax.cli.weights",
            ["convert", f"--src={w}", f"--out={d / 'no' / 'w.st'}"],
            "w.st",
        ),
        (fuse, [pair, out, wf, *short, "--layers=conv1_1,fc9"], "fc9"),
        (fuse, [pair, out, "--lr=inf"], "lr"),
        (fuse, [pair, out, "--tol=nan"], "tol"),
        (fuse, [pair, out, "--epochs=1000000000"], "epochs"),
        (fuse, [pair, out, "--init_noise=-1"], "init_noise"),
        (fuse, [pair, out, "--max_memory_gb=nan"], "max_memory_gb"),
        (fuse, [pair, out, "--solver=fast", "--epochs=3"], "--solver=fast"),
        (fuse, [pair, out, "--resume"], "--resume"),
        (fuse, [pair, f"--output={d / 'out.jpg'}"], "lossless"),
        (fuse, [pair, f"--output={d / ('n' * 300 + '.png')}"], "too long"),
        (fuse, [f"--inputs={a},{d / 'animated.gif'}", out], "frames"),
        (fuse, [f"--inputs={a},{d / 'loop.png'}", out], "cannot read image"),
        (fuse, [pair, out, f"--weights={d / 'weights' / 'bad_prep.safetensors'}"], "preprocess"),
        (fuse, [f"--pairs={d / 'empty_name.csv'}", f"--output_dir={d / 'batch'}"], "line 2"),
        (fuse, [f"--pairs={d / 'nul.csv'}", f"--output_dir={d / 'batch'}"], "unreadable"),
        ("semfuse_jax.cli.eval", [f"--table={d}", "--methods=", f"--output_dir={d}"], "--methods"),
        (fuse, [f"--pairs={d / 'latin1.csv'}", f"--output_dir={d / 'batch'}"], "unreadable"),
        (fuse, [pair, out, f"--weights={d / 'weights' / 'huge.h5'}"], "larger than"),
        (fuse, [pair, out, f"--config={d / 'old_report.json'}"], "refine_edges, colour"),
        (fuse, [pair, out, f"--config={d / 'future_report.json'}"], "version 99"),
        (fuse, [pair, out, f"--config={d / 'typo_report.json'}"], "no setting gate_thresh"),
        (fuse, [pair, out, f"--config={d / 'range_report.json'}"], "gate_threshold must be"),
        (
            "semfuse_jax.cli.eval",
            [f"--table={data}", "--sets=multifocus_grey/clock", f"--output_dir={a}"],
            "cannot create",
        ),
    ]


CHUNKS = 4  # the table runs as four tests, so that parallel test workers share it


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_bad_input_table(files, real_weights_file, data_dir, chunk, tmp_path):
    cases = _cases(files, real_weights_file, data_dir)
    assert len(cases) >= 40
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    failures = []
    mine = cases[chunk::CHUNKS]
    for module in dict.fromkeys(m for m, _, _ in mine):  # one interpreter per tool
        batch = [(args, needle) for m, args, needle in mine if m == module]
        tool = module.rsplit(".", 1)[-1]
        results = run_tool_cases(tool, [args for args, _ in batch], tmp_path)
        for (args, needle), result in zip(batch, results, strict=True):
            lines = [line for line in result["stderr"].splitlines() if line.strip()]
            ok = (
                result["returncode"] != 0
                and len(lines) == 1
                and "error" in lines[0]
                and needle in lines[0]
                and "Traceback" not in result["stderr"]
            )
            if not ok:
                failures.append((module, args, result["returncode"], result["stderr"][-500:]))
    assert not failures, failures
    after = sorted(p.relative_to(files) for p in files.rglob("*"))
    assert after == before  # no output, report, batch folder or temporary file was left behind
    shutil.rmtree(files / "batch", ignore_errors=True)


def test_an_unreachable_coordinator_is_named_in_the_first_line(files, tmp_path):
    (result,) = run_tool_cases(
        "fuse",
        [
            [
                f"--pairs={files / 'empty_name.csv'}",
                f"--output_dir={tmp_path / 'batch'}",
                "--coordinator_address=127.0.0.1:9",
                "--num_processes=2",
                "--process_id=1",
                "--coordinator_timeout=1",
            ]
        ],
        tmp_path,
    )
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["returncode"] == 1 and len(lines) == 2, result["stderr"]
    assert "waiting up to 1 s for the coordinator at 127.0.0.1:9" in lines[0], lines
    assert "--coordinator_timeout" in lines[0]
    assert "error" in lines[1] and "cannot reach" in lines[1] and "Traceback" not in lines[1]
    assert not (tmp_path / "batch").exists()
