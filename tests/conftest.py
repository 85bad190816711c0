"""Shared fixtures: locations of the shared data/weights, a torch reference VGG19, helpers."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import pytest

from semfuse_jax.cli import use_compilation_cache
from semfuse_jax.models import vgg19

jax.config.update("jax_default_matmul_precision", "highest")
# The tools' persistent compilation cache, shared by the test workers and the tools they run:
# a program compiled once in the session (e.g. Lite0's CAMs at one size) is loaded after that.
use_compilation_cache()

REPO = Path(__file__).resolve().parent.parent
SHARED_WEIGHTS_FILE = "vgg19_imagenet_keras_block1-3.h5"
# The widths of the tests' whole VGG19s: every layer of the real layout (names, kernel order,
# fc6's flatten order, 1000 classes) at a size that builds, converts and compiles in seconds.
TEST_VGG19 = vgg19.Architecture(widths=(8, 16, 16, 32, 32), hidden=64)

try:  # torch is the independent reference of the cross-checks; the other tests need none
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (the reference)")
if torch is not None and os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # The test workers share the cores: torch threads per worker, not per core (oversubscribed,
    # the float64 and Score-CAM references run several times slower).
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _shared_dir(variable: str, default: Path) -> Path:
    """A shared folder from ``variable`` (set by .ci/run); missing is a failure in CI."""
    explicit = os.environ.get(variable)
    path = Path(explicit) if explicit else default
    if not path.is_dir():
        message = f"{variable}={path} is not a folder"
        if explicit or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(f"{message}; set {variable} to run tests on the shared files")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``../shared/data`` (or ``$SEMFUSE_TEST_DATA``)."""
    return _shared_dir("SEMFUSE_TEST_DATA", REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def real_weights_file() -> Path:
    """The real Keras ImageNet VGG19 blocks 1-3 file (from ``$SEMFUSE_TEST_WEIGHTS``)."""
    folder = _shared_dir("SEMFUSE_TEST_WEIGHTS", REPO.parent / "shared" / "weights")
    path = folder / SHARED_WEIGHTS_FILE
    if not path.is_file():
        pytest.fail(f"{path} is missing")
    return path


def run_tool(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m semfuse_jax.cli.<module> args`` with no ``$SEMFUSE_WEIGHTS``."""
    return subprocess.run(
        [sys.executable, "-m", f"semfuse_jax.cli.{module}", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SEMFUSE_WEIGHTS": ""},
        timeout=600,
        cwd=cwd,
    )


def run_tool_cases(module: str, cases: list[list[str]], workdir: Path) -> list[dict]:
    """Run ``semfuse_jax.cli.<module>`` once per argument list, all in one interpreter
    (``tests/cli_batch.py``: the real entry point, flags reset between cases), with no
    ``$SEMFUSE_WEIGHTS``; ``{"returncode", "stderr"}`` per case."""
    cases_file, results_file = workdir / "cli_cases.json", workdir / "cli_results.json"
    cases_file.write_text(json.dumps(cases))
    runner = Path(__file__).with_name("cli_batch.py")
    ran = subprocess.run(
        [sys.executable, runner, f"semfuse_jax.cli.{module}", cases_file, results_file],
        capture_output=True,
        text=True,
        env={**os.environ, "SEMFUSE_WEIGHTS": ""},
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    return json.loads(results_file.read_text())


def rel_err(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual − expected| / max |expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def assert_trees_all_close(actual: Mapping, expected: Mapping, **kw: float) -> None:
    """``np.testing.assert_allclose`` on every leaf of two pytrees of the same structure."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), **kw)


@pytest.fixture(scope="session")
def torch_vgg19():
    """A VGG19 of :data:`TEST_VGG19` built from torch.nn in torchvision's layout (key names),
    random weights."""
    pytest.importorskip("torch")
    return build_torch_vgg19(TEST_VGG19)


def build_torch_vgg19(architecture: vgg19.Architecture = vgg19.STANDARD):
    """VGG19 from torch.nn with torchvision's module layout, He-initialised (seed 0)."""
    import torch

    nn = torch.nn
    torch.manual_seed(0)
    layers: list = []
    cin = 3
    for n, width in zip(vgg19.BLOCKS, architecture.widths, strict=True):
        for _ in range(n):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=False)]
            cin = width
        layers.append(nn.MaxPool2d(2, 2))

    class TorchVGG19(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            hidden = architecture.hidden
            self.classifier = nn.Sequential(
                nn.Linear(cin * 49, hidden),
                nn.ReLU(),
                nn.Dropout(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Dropout(),
                nn.Linear(hidden, vgg19.CLASSES),
            )

    model = TorchVGG19().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.normal_(module.bias, std=0.05)
    return model


@pytest.fixture(scope="session")
def torch_state(torch_vgg19) -> dict[str, np.ndarray]:
    """The torch model's state dict as numpy arrays."""
    return {k: v.detach().numpy().copy() for k, v in torch_vgg19.state_dict().items()}


def shared_file(tmp_path_factory, name: str, build) -> Path:
    """A session file built once for every test worker: ``build(path)`` runs in the first
    worker that asks, under a lock."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, shared by its workers
    path = root / "shared" / name
    path.parent.mkdir(exist_ok=True)
    with open(path.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            build(path)
    return path


@pytest.fixture(scope="session")
def pth_file(torch_vgg19, tmp_path_factory) -> Path:
    """The torch model's state dict saved with ``torch.save`` (torchvision file layout)."""
    import torch

    def build(path: Path) -> None:
        torch.save(torch_vgg19.state_dict(), path.with_suffix(".part"))
        path.with_suffix(".part").rename(path)

    return shared_file(tmp_path_factory, "vgg19-random.pth", build)


@pytest.fixture(scope="session")
def full_weights_file(pth_file, tmp_path_factory) -> Path:
    """A random-weights canonical file of every VGG19 layer (converted from ``pth_file``; it
    records its widths, so it loads like any canonical file)."""
    return shared_file(
        tmp_path_factory,
        "vgg19-random.safetensors",
        lambda path: vgg19.convert(pth_file, path, architecture=TEST_VGG19),
    )


@pytest.fixture(scope="session")
def real_weights(real_weights_file):
    return vgg19.load_weights(real_weights_file)


@pytest.fixture(scope="session")
def full_weights(full_weights_file):
    return vgg19.load_weights(full_weights_file)
