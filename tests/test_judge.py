"""The independent semantic judge: retention by hand, on real photos, and in every tool."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import run_tool, run_tool_cases
from PIL import Image

from semfuse_jax import classifier, files, fusion, judge, tables
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import efficientnet


def test_retention_by_hand():
    rng = np.random.default_rng(0)
    inputs = rng.dirichlet(np.ones(12), size=(3, 2)).astype(np.float32)  # [B=3, N=2, K=12]
    fused = rng.dirichlet(np.ones(12), size=3).astype(np.float32)
    got = judge.retention(inputs, fused, k=5)
    for b in range(3):
        top5 = set(np.argsort(-fused[b])[:5])
        classes = inputs[b].argmax(-1)
        kept = [c in top5 for c in classes]
        ratios = [fused[b, c] / inputs[b, i, c] for i, c in enumerate(classes)]
        np.testing.assert_array_equal(got.classes[b], classes)
        np.testing.assert_array_equal(got.kept[b], kept)
        assert float(got.share[b]) == pytest.approx(np.mean(kept))
        assert float(got.ratio[b]) == pytest.approx(min(ratios), rel=1e-6)
    single = judge.retention(inputs[1:2], fused[1:2], k=5)  # batch equals singles
    assert float(single.ratio[0]) == float(got.ratio[1])
    # a fused image whose top-5 holds both classes keeps both
    both = np.zeros((1, 12), np.float32)
    both[0, inputs[0].argmax(-1)] = 0.5
    assert float(judge.retention(inputs[:1], both).share[0]) == 1.0


def test_independence_is_refused_unless_asked():
    with pytest.raises(SemfuseError, match="efficientnet_lite0 is the classifier whose CAMs"):
        judge.check_independent("efficientnet_lite0", ["efficientnet_lite0"], False)
    judge.check_independent("efficientnet_lite0", ["efficientnet_lite0"], True)
    judge.check_independent("efficientnet_lite1", ["efficientnet_lite0"], False)
    judge.check_independent("efficientnet_lite0", [], False)  # no CAMs: any judge


@pytest.fixture(scope="module")
def photo_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A cat and an espresso cup (scikit-image's photos), 192×256 PNGs."""
    skimage = pytest.importorskip("skimage")
    folder = Path(skimage.__file__).parent / "data"
    out = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("chelsea.png", "coffee.png"):
        image = Image.open(folder / name).convert("RGB").resize((256, 192))
        image.save(out / name)
        paths.append(out / name)
    return paths[0], paths[1]


def test_judge_on_real_photos(photo_pair):
    """The cat judged against itself keeps its class at ratio 1; against the cup it is lost."""
    net = efficientnet.load("efficientnet_lite1")
    cat, cup = (files.load_image(p) for p in photo_pair)
    inputs = np.stack([np.stack([cat, cup])] * 2)
    fused = np.stack([cat, cup])  # set 0 "fused" into the cat, set 1 into the cup
    rows = judge.scores(net, inputs, fused)
    probs = np.asarray(classifier.classify(net, np.stack([cat, cup])))
    assert rows[0]["semantic"]["judge"] == "efficientnet_lite1"
    cat_row, cup_row = rows[0]["semantic"]["inputs"]
    assert cat_row["class"] == int(probs[0].argmax()) and cat_row["kept"]
    assert cat_row["fused_probability"] == pytest.approx(cat_row["input_probability"], rel=1e-5)
    assert cup_row["class"] == int(probs[1].argmax())
    assert cup_row["kept"] == (cup_row["class"] in np.argsort(-probs[0])[:5])
    expected = min(probs[0][c] / probs[i][c] for i, c in enumerate(probs.argmax(-1)))
    assert rows[0]["semantic_ratio"] == pytest.approx(float(expected), rel=1e-4)
    assert rows[0]["semantic_kept"] == np.mean([cat_row["kept"], cup_row["kept"]])
    batched = jax.device_get(judge.judge(net, inputs, fused))  # jitted, batched on the device
    assert batched.share.shape == (2,)


def test_tools_judge_and_refuse_the_cam_classifier(photo_pair, tmp_path):
    cat, cup = photo_pair
    inputs = f"--inputs={cat},{cup}"
    fused, report = tmp_path / "fm5.png", tmp_path / "fm5.json"
    made = run_tool(
        "fuse", inputs, f"--output={fused}", "--method=fm5", f"--report={report}",
        "--judge=efficientnet_lite1",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    record = json.loads(report.read_text())
    assert record["networks"] == {"cam": "efficientnet_lite0", "judge": "efficientnet_lite1"}
    assert record["classes"]["classifier"] == "efficientnet_lite1"
    scored = run_tool("eval", inputs, f"--fused={fused}", "--judge=efficientnet_lite1", "--json")
    assert scored.returncode == 0, scored.stderr[-2000:]
    values = json.loads(scored.stdout)
    assert set(judge.COLUMNS) <= set(values) and values["semantic"]["judge"] == "efficientnet_lite1"
    for key in (*judge.COLUMNS, "semantic"):  # the report describes the same file
        assert values[key] == record[key]

    out = tmp_path / "refused"
    cases = [
        [inputs, f"--fused={fused}", "--judge=efficientnet_lite0", f"--config={report}"],
        [inputs, f"--fused={fused}", "--judge=efficientnet_lite0", "--classifier=auto"],
        [
            f"--table={tmp_path / 'sets'}", "--methods=average,fm3", "--judge=efficientnet_lite0",
            f"--output_dir={out}",
        ],
    ]  # fmt: skip
    (tmp_path / "sets" / "photos" / "pair").mkdir(parents=True)
    for p in (cat, cup):
        (tmp_path / "sets" / "photos" / "pair" / p.name).write_bytes(p.read_bytes())
    for result in run_tool_cases("eval", cases, tmp_path):
        assert result["returncode"] == 1
        lines = result["stderr"].strip().splitlines()
        assert len(lines) == 1 and "judge efficientnet_lite0 is the classifier" in lines[0]
    assert not out.exists()  # refused before anything was written
    allowed = run_tool(
        "eval", inputs, f"--fused={fused}", "--judge=efficientnet_lite0", f"--config={report}",
        "--allow_same_judge", "--json",
    )  # fmt: skip
    assert allowed.returncode == 0 and json.loads(allowed.stdout)["semantic"]["judge"] == (
        "efficientnet_lite0"
    )


def test_table_mode_adds_the_judge_columns(photo_pair, tmp_path):
    root = tmp_path / "sets" / "photos" / "pair"
    root.mkdir(parents=True)
    for p in photo_pair:
        (root / p.name).write_bytes(p.read_bytes())
    rows = tables.run_table(
        tmp_path / "sets",
        [fusion.FusionConfig(method="average"), fusion.FusionConfig(method="fm3")],
        tmp_path / "out",
        judge_name="efficientnet_lite1",
    )
    with open(tmp_path / "out" / "table.csv") as f:
        header = next(csv.reader(f))
    assert header[-2:] == list(judge.COLUMNS)
    assert "semantic_kept" in (tmp_path / "out" / "summary.md").read_text()
    net = efficientnet.load("efficientnet_lite1")
    inputs = np.stack([files.load_image(p) for p in sorted(root.iterdir())])
    for row in rows:  # each row judges the file written
        written = files.load_image(tmp_path / "out" / "fused" / row["method"] / "photos__pair.png")
        expected = judge.scores(net, inputs[None], written[None])[0]
        assert row["semantic_ratio"] == pytest.approx(expected["semantic_ratio"], rel=1e-6)
    settings = json.loads((tmp_path / "out" / "table.json").read_text())["settings"]
    assert settings["judge"] == "efficientnet_lite1"
    assert settings["configs"][1]["classifier"] == "efficientnet_lite0"  # resolved, as run
