"""semfuse-fuse: fuse registered images with FM0–FM5 or a classical baseline.

One set:
  semfuse-fuse --inputs=A.png,B.png --output=F.png [--method=fm0] [--report=r.json]
               [--figure=sheet.png]
Many sets (same-size sets are fused together as vmapped batches):
  semfuse-fuse --pairs=manifest.csv --output_dir=DIR [--batch_size=8]
A manifest line is ``name,input1,input2[,input3...]`` (paths relative to the manifest's folder;
blank lines and lines starting with ``#`` are ignored); set ``name`` is written to DIR/name.png.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
from absl import flags, logging

import semfuse_jax
from semfuse_jax import classifier, fusion, io, weights
from semfuse_jax.cli import options, run_guarded
from semfuse_jax.errors import SemfuseError
from semfuse_jax.figure import contact_sheet

_INPUTS = flags.DEFINE_list("inputs", None, "Comma-separated input images of one set (N >= 2).")
_OUTPUT = flags.DEFINE_string("output", None, "Fused image to write (PNG recommended).")
_PAIRS = flags.DEFINE_string("pairs", None, "Batch mode: CSV manifest, `name,input1,input2,...`.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Batch mode: folder for NAME.png outputs.")
_METHOD = flags.DEFINE_enum("method", "fm0", fusion.ALL_METHODS, "Fusion method or baseline.")
_REPORT = flags.DEFINE_string("report", None, "Write a JSON report here.")
_FIGURE = flags.DEFINE_string("figure", None, "Write a Figure-3 style contact sheet (one set).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
_RESUME = flags.DEFINE_bool(
    "resume", False, "Batch mode: skip sets DIR/status.jsonl records as done."
)

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "Multi-host: HOST:PORT of process 0 (jax.distributed)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "Multi-host: this process's index.")
_COORDINATOR_TIMEOUT = flags.DEFINE_integer(
    "coordinator_timeout",
    60,
    "Multi-host: seconds to wait for every process to join.",
    lower_bound=1,
)

STATUS_FILE = "status.jsonl"
_LOCKS: list[int] = []


def read_manifest(path: Path) -> list[tuple[str, list[Path]]]:
    """Parse a batch manifest into ``(name, input paths)`` rows."""
    if not path.is_file():
        raise SemfuseError(f"manifest {path} does not exist")
    rows, names = [], set()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise SemfuseError(f"manifest {path}: unreadable ({exc})") from None
    for number, row in enumerate(lines, start=1):
        row = [cell.strip() for cell in row]
        if any("\x00" in cell for cell in row):
            raise SemfuseError(f"manifest {path} line {number}: unreadable (a NUL byte)")
        if not any(row) or row[0].startswith("#"):
            continue
        if not rows and row[0].lower() == "name":  # a CSV header line
            continue
        name, inputs = row[0], [p for p in row[1:] if p]
        if not name or len(inputs) < 2 or "/" in name or name in names or name in (".", ".."):
            raise SemfuseError(
                f"manifest {path} line {number}: need a unique, non-empty name (no '/') and "
                ">= 2 inputs"
            )
        names.add(name)
        rows.append((name, [path.parent / p for p in inputs]))
    if not rows:
        raise SemfuseError(f"manifest {path} lists no sets")
    return rows


def read_files() -> list[Path]:
    """Files every run reads besides its images (never to be named as outputs)."""
    files = [Path(p) for p in (options.WEIGHTS.value, _PAIRS.value) if p]
    return files


def log_progress(epoch: int, epochs: int, losses: np.ndarray, elapsed: float) -> None:
    """One log line about every tenth of the schedule (and the last epoch)."""
    if epoch % max(1, epochs // 10) and epoch != epochs:
        return
    eta = elapsed / epoch * (epochs - epoch)
    logging.info(
        "epoch %d/%d  loss %s  %.1fs elapsed, ETA %.0fs",
        epoch,
        epochs,
        " ".join(f"{x:.4g}" for x in losses),
        elapsed,
        eta,
    )


def run_info(w: weights.Weights | None, config: fusion.FusionConfig) -> dict[str, Any]:
    """Settings, weights, command line and environment shared by every record of a run."""
    source = Path(w.source) if w is not None else None
    return {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": config.method,
        "config": config.to_dict(),  # semfuse-fuse --config=<this report> re-runs it
        "solver": options.SOLVER.value,
        "weights": None if w is None else w.source,
        "weights_sha256": weights.file_digests(source)["sha256"]
        if source is not None and source.is_file()
        else None,
        "versions": {
            "semfuse_jax": semfuse_jax.__version__,
            "jax": jax.__version__,
            "flax": flax.__version__,
            "optax": optax.__version__,
            "python": platform.python_version(),
        },
        "device": str(jax.devices()[0]),
    }


def fuse_batch(
    w: weights.Weights | None,
    network: classifier.Network | None,
    config: fusion.FusionConfig,
    names: list[str],
    sets: list[np.ndarray],
    outputs: list[Path],
    bits: list[int],
) -> tuple[list[dict[str, Any]], fusion.FusionResult]:
    """Fuse same-shape sets together, write each output, return per-set records (with the
    classes of the inputs and the result when a classifier ``network`` is given)."""
    start = time.perf_counter()
    result = fusion.fuse(w, np.stack(sets), config, progress=log_progress, network=network)
    seconds = time.perf_counter() - start
    records = []
    for b, (name, out) in enumerate(zip(names, outputs, strict=True)):
        io.save_image(out, result.fused[b], bits[b])
        kept = -1 if result.best_epoch is None else int(result.best_epoch[b])
        record: dict[str, Any] = {
            "name": name,
            "output": str(out.resolve()),
            "bits": bits[b],
            "steps": result.steps,
            "final_loss": None  # the loss of the image written (FM4: of the epoch it kept)
            if result.loss_history is None
            else float(result.loss_history[kept, b]),
            "loss_history": None
            if result.loss_history is None
            else [float(x) for x in result.loss_history[:, b]],
            "optimise_seconds": result.optimise_seconds,
            "compile_seconds": result.compile_seconds,
            "batch_seconds": seconds,
            "batch_size": len(names),
        }
        if result.quality_history is not None:  # FM4: the quality signal and the kept epoch
            record["quality_history"] = {
                name: [float(x) for x in result.quality_history[:, b, k]]
                for k, name in enumerate(("qe", "qabf_petrovic"))
            }
            record["best_epoch"] = int(result.best_epoch[b])
        if network is not None:
            record["classes"] = classifier.class_report(network, sets[b], result.fused[b])
        records.append(record)
        logging.info("wrote %s", out)
    return records, result


def write_report(record: dict[str, Any]) -> None:
    if _REPORT.value:
        path = Path(_REPORT.value)
        io.write_text(path, json.dumps(record, indent=2) + "\n")
        logging.info("wrote %s", path)


def load_networks(
    config: fusion.FusionConfig, classes: bool
) -> tuple[weights.Weights | None, classifier.Network | None, fusion.FusionConfig]:
    """The VGG19 weights ``config`` needs (None when it needs none), the classifier (for FM2/FM3
    or, with ``classes``, the class report; else None), and ``config`` with the classifier
    resolved to a concrete name."""
    w = network = None
    wants_network = config.uses_cam or classes
    if config.required_outputs or (wants_network and config.classifier != "efficientnet_lite0"):
        w = weights.load_weights(options.WEIGHTS.value, outputs=config.required_outputs or None)
    if wants_network:
        network = classifier.load(config.classifier, w)
        config = dataclasses.replace(config, classifier=classifier.network_name(network))
    return w, network, config


def load_set(inputs: Sequence[Path], config: fusion.FusionConfig) -> np.ndarray:
    """Check sizes and memory from the file headers, then load and stack the set."""
    set_key(inputs, config)
    return fusion.stack_set([io.load_image(p) for p in inputs])


def fuse_one(config: fusion.FusionConfig) -> int:
    inputs = [Path(p) for p in _INPUTS.value]
    named = [p for p in (_OUTPUT.value, _FIGURE.value, _REPORT.value) if p]
    io.check_outputs(named, [*inputs, *read_files()], _OVERWRITE.value)
    output = io.check_image_suffix(_OUTPUT.value)
    if _FIGURE.value:
        io.check_image_suffix(_FIGURE.value)
    images = load_set(inputs, config)
    w, network, config = load_networks(config, classes=bool(_REPORT.value or _FIGURE.value))
    bits = max(io.bit_depth(p) for p in inputs)
    records, result = fuse_batch(w, network, config, [output.stem], [images], [output], [bits])
    if _FIGURE.value:
        sheet = contact_sheet(
            images,
            result.fused[0],
            result.average[0],
            None if result.probabilities is None else result.probabilities[0],
            None if result.mixing is None else result.mixing[0],
            classes=records[0].get("classes"),
        )
        io.write_pil(Path(_FIGURE.value), sheet)
        logging.info("wrote %s", _FIGURE.value)
    write_report({**run_info(w, config), **records[0], "inputs": [str(p) for p in inputs]})
    return 0


def read_status(path: Path) -> dict[str, dict[str, Any]]:
    """Latest record per set name from a status file (JSON lines); unreadable lines are ignored."""
    latest: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                if isinstance(record.get("name"), str):
                    latest[record["name"]] = record
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return latest


def claim_status(path: Path, resume: bool, overwrite: bool) -> None:
    """Create or open a run's status file and hold an exclusive lock on it for the rest of the
    process, so that a second run on the same output (and process id) is refused.

    An existing status file is continued with ``resume``, emptied with ``overwrite``, and
    otherwise refused (before anything is written).
    """
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise SemfuseError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SemfuseError(
            f"another semfuse-fuse run is writing to {path.parent} ({path.name} is locked); "
            "wait for it or use another --output_dir"
        ) from None
    if existed and not resume:
        if not overwrite:
            os.close(fd)
            raise SemfuseError(f"{path} exists: pass --resume to continue that run")
        os.ftruncate(fd, 0)
    _LOCKS.append(fd)  # closed (and so released) when the process exits


def append_status(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append records durably (flushed and synced) so a killed run can resume after them.

    A torn last line (a run killed while writing it) is ended first, so it stays one unreadable
    line instead of corrupting the next record.
    """
    if not records:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise SemfuseError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        lines = "".join(
            json.dumps({**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
            for record in records
        )
        try:
            f.write((("\n" if torn else "") + lines).encode())
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            raise SemfuseError(f"cannot write {path}: {exc.strerror}") from None


def set_key(inputs: Sequence[Path], config: fusion.FusionConfig) -> tuple[int, int, int]:
    """``(N, H, W)`` of a set from the file headers, after the memory check; no decoding."""
    sizes = [io.image_size(p) for p in inputs]
    fusion.check_same_size(sizes)
    needed = fusion.memory_estimate(1, len(inputs), *sizes[0], config)
    limit = options.memory_limit_bytes()
    if needed > limit:
        raise SemfuseError(
            f"fusing {len(inputs)} images of {sizes[0][1]}x{sizes[0][0]} with {config.method} "
            f"needs about {needed / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB allowed "
            "(--max_memory_gb)"
        )
    return len(inputs), *sizes[0]


def fuse_many(config: fusion.FusionConfig) -> int:
    """Batch mode: fuse every manifest set, recording each in the status file (JSON lines).

    Batches are formed from the file headers over the whole manifest (same N and size), so every
    process of a multi-host run, and a resumed run, computes exactly the batches an uninterrupted
    single-process run would; process ``p`` of ``P`` takes batches ``p, p + P, ...``. Images are
    loaded batch by batch. With --resume, sets recorded as done (whose output exists) are skipped
    and the outputs of unfinished sets may be replaced.
    """
    process, processes = _PROCESS_ID.value, _NUM_PROCESSES.value
    rows = read_manifest(Path(_PAIRS.value))
    out_dir = Path(_OUTPUT_DIR.value)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SemfuseError(f"cannot create {out_dir}: {exc.strerror}") from None
    name = STATUS_FILE if processes == 1 else STATUS_FILE.replace(".", f".p{process}.", 1)
    status_path = out_dir / name
    if status_path.is_symlink() or (status_path.exists() and not status_path.is_file()):
        raise SemfuseError(f"{status_path} is not a regular file; refusing to append to it")
    io.check_writable(status_path)
    outputs = {set_name: out_dir / f"{set_name}.png" for set_name, _ in rows}
    every_input = [p for _, inputs in rows for p in inputs] + read_files()
    io.check_outputs(
        [*outputs.values(), *([_REPORT.value] if _REPORT.value else []), status_path],
        every_input,
        overwrite=True,  # identity and writability here; existing outputs are checked per set
    )
    if _REPORT.value:
        io.check_writable(_REPORT.value, overwrite=_OVERWRITE.value or _RESUME.value)
    claim_status(status_path, _RESUME.value, _OVERWRITE.value)
    previous = read_status(status_path) if _RESUME.value else {}
    finished = {
        set_name
        for set_name, record in previous.items()
        if record.get("status") == "done" and outputs.get(set_name, Path()).is_file()
    }

    def failure(set_name: str, exc: SemfuseError) -> dict[str, Any]:
        logging.error("set %s: %s", set_name, exc)
        return {"name": set_name, "status": "failed", "error": str(exc)}

    records: list[dict[str, Any]] = []
    valid: list[tuple[str, list[Path], Path, tuple[int, int, int]]] = []
    for set_name, inputs in rows:
        output = outputs[set_name]
        try:
            # A resumed run owns the outputs of its unfinished sets (one may have been written
            # just before the run was killed, without its status record): they are recomputed.
            io.check_writable(output, overwrite=_OVERWRITE.value or _RESUME.value)
            valid.append((set_name, inputs, output, set_key(inputs, config)))
        except SemfuseError as exc:
            if process == 0:  # header-level failures are the same in every process
                records.append(failure(set_name, exc))
    append_status(status_path, records)
    batches = []  # same-shape batches, each within the memory limit as a whole
    limit = options.memory_limit_bytes()
    for batch in fusion.group_batches([key for *_, key in valid], options.BATCH.value):
        per_set = fusion.memory_estimate(1, *valid[batch[0]][3], config)
        size = max(1, min(len(batch), limit // max(per_set, 1)))
        batches += [batch[k : k + size] for k in range(0, len(batch), size)]
    mine = batches[process::processes]
    todo = [b for b in mine if not all(valid[i][0] in finished for i in b)]
    w, network, config = load_networks(config, classes=False) if todo else (None, None, config)
    started = time.perf_counter()
    for number, batch in enumerate(mine, start=1):
        members = [valid[i] for i in batch]
        if batch not in todo:
            records += [{**previous[m[0]], "resumed": True} for m in members]
            continue
        logging.info("batch %d/%d: %s", number, len(mine), ", ".join(m[0] for m in members))
        loaded, done = [], []
        for set_name, inputs, output, _ in members:
            try:
                images = fusion.stack_set([io.load_image(p) for p in inputs])
                bits = max(io.bit_depth(p) for p in inputs)
                loaded.append((set_name, images, output, bits))
            except SemfuseError as exc:
                done.append(failure(set_name, exc))
        shapes = [images.shape for _, images, _, _ in loaded]
        for group in fusion.group_batches(shapes, len(loaded)):
            names, sets, outputs, bits = (
                list(x) for x in zip(*(loaded[i] for i in group), strict=True)
            )
            try:
                fused, _ = fuse_batch(w, network, config, names, sets, outputs, bits)
                done += [{**r, "status": "done"} for r in fused]
            except SemfuseError as exc:  # e.g. an output that turned unwritable: record, go on
                done += [failure(n, exc) for n in names]
        append_status(status_path, done)
        records += done
        finished_now = sum(len(b) for b in mine[:number])
        total = sum(len(b) for b in mine)
        elapsed = time.perf_counter() - started
        logging.info(
            "%d/%d sets done, %.0fs elapsed, ETA %.0fs",
            finished_now,
            total,
            elapsed,
            elapsed / finished_now * (total - finished_now),
        )
    failed = sum(r["status"] == "failed" for r in records)
    resumed = sum(bool(r.get("resumed")) for r in records)
    logging.info("%d sets done (%d from before), %d failed", len(records) - failed, resumed, failed)
    write_report({**run_info(w, config), "process": process, "sets": records})
    if failed:
        raise SemfuseError(f"{failed} of {len(records)} sets failed (see the log)")
    return 0


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Wait until ``HOST:PORT`` accepts connections, or fail with one line after ``timeout``
    seconds (JAX's own client aborts the process when the coordinator never answers)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SemfuseError(f"--coordinator_address must be HOST:PORT, not {address!r}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise SemfuseError(
                    f"cannot reach the multi-host coordinator at {address} within {timeout} s "
                    f"({exc.strerror or exc}); start process 0 first or check the address"
                ) from None
            time.sleep(0.2)


def start_distributed() -> None:
    """Join a multi-host run (``jax.distributed.initialize``) when --num_processes > 1."""
    processes, process = _NUM_PROCESSES.value, _PROCESS_ID.value
    if processes < 1 or not 0 <= process < processes:
        raise SemfuseError("need --num_processes >= 1 and 0 <= --process_id < --num_processes")
    if processes == 1:
        return
    if not _PAIRS.value:
        raise SemfuseError("multi-host runs take a manifest (--pairs)")
    if not _COORDINATOR.value:
        raise SemfuseError("multi-host runs need --coordinator_address=HOST:PORT")
    if process > 0:
        wait_for_coordinator(_COORDINATOR.value, _COORDINATOR_TIMEOUT.value)
    try:
        jax.distributed.initialize(
            _COORDINATOR.value,
            processes,
            process,
            initialization_timeout=_COORDINATOR_TIMEOUT.value,
        )
    except Exception as exc:  # jax raises RuntimeError / XlaRuntimeError variants
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SemfuseError(
            f"cannot join the multi-host run at {_COORDINATOR.value}: {first}"
        ) from None
    logging.info("process %d of %d, %d local devices", process, processes, jax.local_device_count())


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise SemfuseError(f"unexpected arguments: {' '.join(argv[1:])}")
    single = bool(_INPUTS.value or _OUTPUT.value)
    batch = bool(_PAIRS.value or _OUTPUT_DIR.value)
    if single == batch or (single and not (_INPUTS.value and _OUTPUT.value)):
        raise SemfuseError("give either --inputs and --output, or --pairs and --output_dir")
    if batch and not (_PAIRS.value and _OUTPUT_DIR.value):
        raise SemfuseError("batch mode needs both --pairs and --output_dir")
    if batch and _FIGURE.value:
        raise SemfuseError("--figure is for a single set (--inputs)")
    if single and _RESUME.value:
        raise SemfuseError("--resume is for batch runs (--pairs); a single set is just rerun")
    given = flags.FLAGS["method"].present or not options.CONFIG.value
    config = options.config_from_flags(_METHOD.value if given else None)
    start_distributed()
    return fuse_one(config) if single else fuse_many(config)


def run() -> None:
    run_guarded(main, __doc__, [__name__, options.__name__])


if __name__ == "__main__":
    run()
