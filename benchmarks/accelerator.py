"""The accelerator path in one command: sets/s against batch size, device memory, compile time,
host share and a roofline, on whatever backend JAX finds (GPU, TPU or CPU).

  python benchmarks/accelerator.py                          # the full table (an accelerator)
  python benchmarks/accelerator.py --sizes=256 --batches=1,2 --max_seconds=20   # a CPU check

Cases (``--cases``): ``fm0`` (the paper's schedule, 100 × 100 Adam steps), ``fm0_fast``
(``--solver=fast``), ``fm4`` and ``fm5`` (CAMs by EfficientNet-Lite0), each at ``--sizes`` and
grey and colour (``--colours``), on real pairs (the clock and lytro-01, tiled to size). For each
case the batch doubles through ``--batches`` until the device runs out of memory, one batch
takes longer than ``--max_seconds``, or the next is predicted not to fit the case's share of
``--budget_seconds`` (9 minutes by default, so a CPU run ends within 10). Columns:

- ``sets/s``: sets over the wall time of the second, compiled call of ``fusion.fuse``.
- ``compile s (1st / 2nd)``: the optimisation's compile seconds in the first and second call
  (0 for FM5, which does not optimise).
- ``host share``: the part of the second call's wall time spent outside the optimisation's
  device loops (placing inputs, starts, targets and CAMs, copies back; FM4's quality stop
  runs inside its loop).
- ``peak MiB/set``: the device's ``peak_bytes_in_use`` after the call over the batch size
  (``–`` where the backend does not report it, as on the CPU; the peak only rises during a run).
- FM0 rows also give the roofline: the bytes one Adam step reads and writes (XLA's cost
  analysis of one compiled, vmapped step of the batch), the bandwidth that implies at the
  measured step time, and its share of the device's memory bandwidth (``--bandwidth_gbs``, else
  the datasheet figure of a known device; ``–`` when unknown).

Then every method on 1, 2, 4 and 8 devices (``--device_counts``; ``benchmarks/devices.py``):
sets/s against device count, and whether the files equal one device's bit for bit.

Writes accelerator.json / .md (with the machine it ran on) into ``--out``.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from tables import save

from semfuse_jax import classifier, fusion, methods, optimise
from semfuse_jax.models import vgg19
from semfuse_jax.optimise import FAST, Schedule

_DATA = flags.DEFINE_string("data", "../shared/data", "Shared data folder.")
_OUT = flags.DEFINE_string("out", "benchmarks/out", "Output folder.")
_CASES = flags.DEFINE_list("cases", ["fm0", "fm0_fast", "fm4", "fm5"], "Cases to run.")
_SIZES = flags.DEFINE_list("sizes", ["256", "512"], "Image sides.")
_COLOURS = flags.DEFINE_list("colours", ["grey", "colour"], "grey and/or colour pairs.")
_BATCHES = flags.DEFINE_list(
    "batches", [str(2**k) for k in range(9)], "Batch sizes, tried in order (1 … 256)."
)
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", 60.0, "Stop a case's batch sweep after a call that takes longer."
)
_BUDGET = flags.DEFINE_float(
    "budget_seconds",
    540.0,
    "Wall time for the whole run: each case gets an equal share of what is left, and a larger "
    "batch runs only when it is predicted to fit its share (batch 1 always runs; 0: no limit).",
)
_DEVICE_COUNTS = flags.DEFINE_list(
    "device_counts",
    None,
    "Device counts for benchmarks/devices.py's sweep (every method: sets/s and bit-identity "
    "against one device); default 1,2,4,8 host devices on a CPU, else 1 and all devices.",
)
_BANDWIDTH = flags.DEFINE_float(
    "bandwidth_gbs", None, "The device's memory bandwidth, GB/s (default: a known datasheet)."
)

# Datasheet memory bandwidths, GB/s, by a substring of ``device_kind``.
BANDWIDTH_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0}


def pair(size: int, colour: bool) -> np.ndarray:
    """A real multi-focus pair tiled to ``size²``: ``[2, size, size, 1|3]``."""
    from semfuse_jax import files

    if colour:
        folder = Path(_DATA.value) / "multifocus_colour_lytro" / "lytro-01"
        images = [files.load_image(folder / f"lytro-01-{s}.jpg") for s in "AB"]
    else:
        folder = Path(_DATA.value) / "multifocus_grey" / "clock"
        images = [files.load_image(folder / f"clock{s}.jpg") for s in "AB"]
    reps = -(-size // min(images[0].shape[:2]))
    return np.stack([np.tile(x, (reps, reps, 1))[:size, :size] for x in images])


def config_of(case: str) -> fusion.FusionConfig:
    if case == "fm0":
        return fusion.FusionConfig(method="fm0", schedule=Schedule())
    if case == "fm0_fast":
        return fusion.FusionConfig(method="fm0", solver="fast")
    if case == "fm5":
        return fusion.FusionConfig(method="fm5", classifier="efficientnet_lite0")
    return fusion.FusionConfig(method=case)


def peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def step_bytes(vgg: vgg19.Weights, images: np.ndarray) -> float:
    """Bytes one vmapped Adam step of FM0's quadratic objective reads and writes for the batch
    ``[B, N, H, W, C]`` (XLA's cost analysis of the compiled step)."""
    x = jnp.asarray(images)
    targets = fusion.fusion_targets(vgg, x, methods.choose_max_target, ("conv1_1",), None, False)
    init = jnp.mean(x, axis=1)
    objective = optimise.quadratic_objective(vgg, targets, init.shape)
    schedule = Schedule()
    states = jax.vmap(optimise.optimizer(schedule).init)(init)

    def steps(obj, image, state):
        return jax.vmap(
            lambda o, i, s: optimise.run_steps(o, i, s, 1, schedule=schedule),
            in_axes=(obj.batch_axes(), 0, 0),
        )(obj, image, state)

    cost = jax.jit(steps).lower(objective, init, states).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("bytes accessed", float("nan")))


def bandwidth_gbs() -> float | None:
    if _BANDWIDTH.value:
        return _BANDWIDTH.value
    kind = jax.devices()[0].device_kind
    return next((v for k, v in BANDWIDTH_GBS.items() if k in kind), None)


def run_case(case: str, size: int, colour: bool, vgg, lite0, until: float) -> list[dict]:
    """One case's batch sweep; a batch after the first runs only if its two calls are predicted
    (from the last batch's, in proportion to the batch) to end before ``until``."""
    config = config_of(case)
    base = pair(size, colour)
    rows = []
    last = None  # (batch, seconds of its two calls)
    for batch in map(int, _BATCHES.value):
        if last is not None and time.perf_counter() + last[1] * batch / last[0] > until:
            break
        images = np.repeat(base[None], batch, axis=0)
        began = time.perf_counter()
        try:
            first = fusion.fuse(vgg, images, config, network=lite0)
            start = time.perf_counter()
            second = fusion.fuse(vgg, images, config, network=lite0)
            jax.block_until_ready(second.fused)
            wall = time.perf_counter() - start
        except Exception as exc:  # out of device memory ends the sweep
            if "RESOURCE_EXHAUSTED" not in str(exc) and "out of memory" not in str(exc).lower():
                raise
            rows.append({"case": case, "size": size, "colour": colour, "batch": batch,
                         "out_of_memory": True})  # fmt: skip
            break
        peak = peak_bytes()
        row = {
            "case": case, "size": size, "colour": colour, "batch": batch,
            "sets_per_s": batch / wall, "wall_s": wall, "steps": second.steps,
            "compile_s_first": first.compile_seconds, "compile_s_second": second.compile_seconds,
            "host_share": max(0.0, 1.0 - second.optimise_seconds / wall) if second.steps else None,
            "peak_mib_per_set": None if peak is None else peak / 2**20 / batch,
        }  # fmt: skip
        if case.startswith("fm0") and second.steps:
            moved = step_bytes(vgg, images)
            step_s = second.optimise_seconds / second.steps
            peak_bw = bandwidth_gbs()
            row |= {
                "bytes_per_step": moved,
                "achieved_gbs": moved / step_s / 1e9,
                "bandwidth_share": None if peak_bw is None else moved / step_s / 1e9 / peak_bw,
            }
        rows.append(row)
        print(row, flush=True)
        last = (batch, time.perf_counter() - began)
        if wall > _MAX_SECONDS.value:
            break
    return rows


def device_sweep() -> list[str]:
    """``benchmarks/devices.py`` over ``--device_counts`` (a subprocess per count; its table
    is written beside this one as devices.json / .md): its Markdown lines, or none with a
    single device."""
    counts = _DEVICE_COUNTS.value
    if counts is None:
        n = jax.device_count()
        counts = ["1", "2", "4", "8"] if jax.default_backend() == "cpu" else sorted({"1", str(n)})
    if len(counts) < 2:
        return []
    script = Path(__file__).with_name("devices.py")
    args = [sys.executable, str(script), f"--counts={','.join(counts)}", f"--data={_DATA.value}"]
    subprocess.run([*args, f"--out={_OUT.value}"], check=True)
    return (Path(_OUT.value) / "devices.md").read_text().splitlines()


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main(argv: Sequence[str]) -> None:
    del argv
    device = jax.devices()[0]
    machine = {
        "backend": jax.default_backend(), "device": str(device), "device_kind": device.device_kind,
        "devices": jax.device_count(), "host": platform.processor() or platform.machine(),
        "jax": jax.__version__, "bandwidth_gbs": bandwidth_gbs(),
    }  # fmt: skip
    vgg = vgg19.load_weights(outputs=("conv1_1",))
    needs_cam = any(config_of(c).uses_cam for c in _CASES.value)
    lite0 = classifier.load("efficientnet_lite0") if needs_cam else None
    combos = [
        (case, size, colour)
        for case in _CASES.value
        for size in map(int, _SIZES.value)
        for colour in (c == "colour" for c in _COLOURS.value)
    ]
    deadline = time.perf_counter() + (_BUDGET.value or float("inf"))
    device_lines = device_sweep()
    rows = []
    for k, (case, size, colour) in enumerate(combos):
        share = (deadline - time.perf_counter()) / (len(combos) - k)
        rows += run_case(case, size, colour, vgg, lite0, until=time.perf_counter() + share)
    lines = [
        f"Machine: {machine['device_kind']} ({machine['backend']}, {machine['devices']} "
        f"device(s)), jax {machine['jax']}; FM0 = the paper's 100 × 100 steps, fm0_fast = "
        f"--solver=fast ({FAST.epochs} × {FAST.iters} at most).",
        "",
        "| case | size | colour | batch | sets/s | compile s (1st / 2nd) | host share | "
        "peak MiB/set | MB/step | GB/s | of bandwidth |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = (
            f"| {r['case']} | {r['size']} | {'colour' if r['colour'] else 'grey'} | {r['batch']} |"
        )
        if r.get("out_of_memory"):
            lines.append(head + " out of memory | | | | | | |")
            continue
        lines.append(
            head + f" {r['sets_per_s']:.3g} | {r['compile_s_first']:.2f} / "
            f"{r['compile_s_second']:.2f} | {fmt(r['host_share'], '.2f')} | "
            f"{fmt(r['peak_mib_per_set'], '.1f')} | "
            f"{fmt(r.get('bytes_per_step') and r['bytes_per_step'] / 1e6, '.1f')} | "
            f"{fmt(r.get('achieved_gbs'), '.1f')} | {fmt(r.get('bandwidth_share'), '.1%')} |"
        )
    lines += ["", *device_lines]
    save(_OUT.value, "accelerator", {"machine": machine, "rows": rows}, lines)


if __name__ == "__main__":
    app.run(main)
