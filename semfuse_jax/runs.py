"""Runs: fusing one set or a manifest of sets to files, with reports, a status file and resume.

- :func:`fuse_set`: one set to one image (and optionally a JSON report and a contact sheet).
- :func:`fuse_manifest`: every set of a manifest (``name,input1,input2,...``) into a folder.
  Batches are planned from the file headers over the whole manifest (same N and size, within the
  memory limit), so every process of a multi-host run, and a resumed run, computes exactly the
  batches an uninterrupted single-process run would; process ``p`` of ``P`` takes batches
  ``p, p + P, ...``. Each finished set is appended durably to ``status.jsonl``.
- Every record carries :func:`run_info`: the whole :class:`~semfuse_jax.fusion.FusionConfig`
  (``semfuse-fuse --config=<report>`` re-runs it to the same bits), the weights' digest, versions.

Every file a run writes is checked first against the overwrite policy of
:func:`semfuse_jax.files.check_outputs`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import numpy as np
import optax
from absl import logging

import semfuse_jax
from semfuse_jax import classifier, files, fusion, judge
from semfuse_jax.errors import DiskFullError, SemfuseError, write_error
from semfuse_jax.figure import contact_sheet
from semfuse_jax.models import Models, checkpoints, load_models

STATUS_FILE = "status.jsonl"

Record = dict[str, Any]


def default_memory_limit() -> int:
    """80 % of the machine's physical memory, in bytes."""
    return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def read_manifest(path: Path) -> list[tuple[str, list[Path]]]:
    """Parse a batch manifest into ``(name, input paths)`` rows.

    A line is ``name,input1,input2[,input3...]`` with paths relative to the manifest's folder;
    blank lines, lines starting with ``#`` and a leading ``name,...`` header are skipped.
    """
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


def log_progress(epoch: int, epochs: int, losses: np.ndarray, elapsed: float) -> None:
    """One log line about every tenth of the schedule (and the last epoch)."""
    if epoch % max(1, epochs // 10) and epoch != epochs:
        return
    eta = elapsed / epoch * (epochs - epoch)
    losses_text = " ".join(f"{x:.4g}" for x in losses)
    logging.info(
        "epoch %d/%d  loss %s  %.1fs elapsed, ETA %.0fs", epoch, epochs, losses_text, elapsed, eta
    )


def run_info(models: Models, config: fusion.FusionConfig) -> Record:
    """Settings, networks, weights, command line and environment shared by every record of a
    run; ``networks`` names the classifier whose CAMs made the fusion (None for a method without
    CAMs) and the judge of its semantic scores (None without ``--judge``)."""
    w = models.vgg
    source = Path(w.source) if w is not None else None
    return {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "method": config.method,
        "config": config.to_dict(),  # semfuse-fuse --config=<this report> re-runs it
        "networks": {
            "cam": config.classifier if config.uses_cam else None,
            "judge": None if models.judge is None else classifier.network_name(models.judge),
        },
        "weights": None if w is None else w.source,
        "weights_sha256": checkpoints.file_digests(source)["sha256"]
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


def set_key(
    inputs: Sequence[Path], config: fusion.FusionConfig, memory_limit: int
) -> tuple[int, int, int]:
    """``(N, H, W)`` of a set from the file headers, after the memory check; no decoding."""
    sizes = [files.image_size(p) for p in inputs]
    fusion.check_same_size(sizes)
    needed = fusion.memory_estimate(1, len(inputs), *sizes[0], config)
    if needed > memory_limit:
        raise SemfuseError(
            f"fusing {len(inputs)} images of {sizes[0][1]}x{sizes[0][0]} with {config.method} "
            f"needs about {needed / 2**30:.1f} GiB, more than the {memory_limit / 2**30:.1f} GiB "
            "allowed (--max_memory_gb)"
        )
    return len(inputs), *sizes[0]


@dataclasses.dataclass(frozen=True)
class Ready:
    """Same-shape sets read, stacked and placed, not yet fused: their names, inputs
    ``[N, H, W, C]`` each (on the host), outputs, bit depths, and the stacked batch
    ``[B, N, H, W, C]`` on the device."""

    names: list[str]
    sets: list[np.ndarray]
    outputs: list[Path]
    bits: list[int]
    placed: jax.Array


def stack_and_place(sets: Sequence[np.ndarray]) -> jax.Array:
    """Same-shape sets ``[N, H, W, C]`` stacked into one batch ``[B, N, H, W, C]`` and copied to
    the default device (asynchronously: the copy runs while the caller goes on)."""
    return jax.device_put(np.stack(sets))


@dataclasses.dataclass(frozen=True)
class Fused:
    """Sets fused together (:class:`Ready`), not yet written: the result and the seconds it
    took."""

    ready: Ready
    result: fusion.FusionResult
    seconds: float


def fuse_batch(models: Models, config: fusion.FusionConfig, ready: Ready) -> Fused:
    """Fuse the same-shape sets of ``ready`` together (FM4 scoring them at their bit depths)."""
    start = time.perf_counter()
    result = fusion.fuse(
        models.vgg, ready.placed, config, progress=log_progress, network=models.network,
        bits=ready.bits,
    )  # fmt: skip
    return Fused(ready, result, time.perf_counter() - start)


def save_fused(models: Models, config: fusion.FusionConfig, fused: Fused) -> list[Record]:
    """Write each output of ``fused`` at its bit depth and return per-set records: with a judge,
    its semantic scores and classes (of the inputs and the written file), else with a classifier
    ``network``, its classes."""
    names, sets, outputs, bits = (fused.ready.names, fused.ready.sets, fused.ready.outputs,
                                  fused.ready.bits)  # fmt: skip
    result, seconds, stacked = fused.result, fused.seconds, np.stack(sets)
    semantic = None
    records = []
    for b, (name, out) in enumerate(zip(names, outputs, strict=True)):
        files.save_image(out, result.fused[b], bits[b])
        history = None if result.loss_history is None else result.loss_history[:, b]
        record: Record = {
            "name": name,
            "output": str(out.resolve()),
            "bits": bits[b],
            "steps": result.steps,
            # the feature loss of the image written (FM4: of the epoch or refinement it kept)
            "final_loss": None if result.final_loss is None else float(result.final_loss[b]),
            "loss_history": None if history is None else [float(x) for x in history],
            "optimise_seconds": result.optimise_seconds,
            "compile_seconds": result.compile_seconds,
            "batch_seconds": seconds,
            "batch_size": len(names),
        }
        if result.quality_history is not None:  # FM4: the quality signal and the kept epoch
            record["quality_history"] = {
                metric: [float(x) for x in result.quality_history[:, b, k]]
                for k, metric in enumerate(config.params.quality_names)
            }
            record["best_epoch"] = int(result.best_epoch[b])
        if result.edge_kept is not None:  # FM4: its edge refinement, and whether it was kept
            record["edge_refinement"] = {"kept": bool(result.edge_kept[b])}
            if result.edge_quality is not None:
                record["edge_refinement"]["quality"] = {
                    metric: [float(x) for x in result.edge_quality[:, b, k]]
                    for k, metric in enumerate(config.params.edge_quality_names)
                }
        records.append(record)
        logging.info("wrote %s", out)
    reporter = models.judge if models.judge is not None else models.network
    if reporter is not None:  # of the files as written
        written = [files.load_image(out) for out in outputs]
        if models.judge is not None:
            semantic = judge.scores(models.judge, stacked, np.stack(written))
        for b, record in enumerate(records):
            record["classes"] = classifier.class_report(reporter, sets[b], written[b])
            if semantic is not None:
                record.update(semantic[b])
    return records


def write_report(path: str | os.PathLike[str] | None, record: Record) -> None:
    """Write ``record`` as indented JSON to ``path`` (atomically); nothing when ``path`` is None."""
    if path:
        files.write_text(path, json.dumps(record, indent=2) + "\n")
        logging.info("wrote %s", path)


def load_set(inputs: Sequence[Path], config: fusion.FusionConfig, memory_limit: int) -> np.ndarray:
    """Check sizes and memory from the file headers, then load the set as ``[N, H, W, C]``."""
    set_key(inputs, config, memory_limit)
    return fusion.stack_set([files.load_image(p) for p in inputs])


def fuse_set(
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    config: fusion.FusionConfig,
    *,
    weights_file: str | None = None,
    report: str | None = None,
    figure: str | None = None,
    overwrite: bool = False,
    memory_limit: int | None = None,
    judge_name: str | None = None,
    allow_same_judge: bool = False,
) -> Record:
    """Fuse one set into ``output``; optionally write a JSON ``report`` and a contact-sheet
    ``figure`` (with the classes of the inputs and the result, by the judge ``judge_name`` if
    given, else by the CAM classifier), and score it semantically by the judge. Returns the
    report's record."""
    inputs = [Path(p) for p in inputs]
    named = [p for p in (output, figure, report) if p]
    read = [*inputs, *([Path(weights_file)] if weights_file else [])]
    files.check_outputs(named, read, overwrite)
    output = files.check_image_suffix(output)
    if figure:
        files.check_image_suffix(figure)
    limit = default_memory_limit() if memory_limit is None else memory_limit
    images = load_set(inputs, config, limit)
    models, config = load_models(
        config,
        weights_file,
        classes=bool(report or figure),
        judge_name=judge_name,
        allow_same_judge=allow_same_judge,
    )
    bits = max(files.bit_depth(p) for p in inputs)
    ready = Ready([output.stem], [images], [output], [bits], stack_and_place([images]))
    fused = fuse_batch(models, config, ready)
    records, result = save_fused(models, config, fused), fused.result
    if figure:
        sheet = contact_sheet(
            images,
            result.fused[0],
            result.average[0],
            None if result.probabilities is None else result.probabilities[0],
            None if result.mixing is None else result.mixing[0],
            classes=records[0].get("classes"),
        )
        files.write_pil(Path(figure), sheet)
        logging.info("wrote %s", figure)
    record = {**run_info(models, config), **records[0], "inputs": [str(p) for p in inputs]}
    write_report(report, record)
    return record


def read_status(path: Path) -> dict[str, Record]:
    """Latest record per set name from a status file (JSON lines); unreadable lines are ignored."""
    latest: dict[str, Record] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                if isinstance(record.get("name"), str):
                    latest[record["name"]] = record
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return latest


@contextlib.contextmanager
def status_lock(path: Path, resume: bool, overwrite: bool) -> Iterator[None]:
    """Create or open a run's status file and hold an exclusive lock on it for the ``with``
    block, so that a second run on the same output (and process id) is refused meanwhile.

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
    try:
        yield
    except BaseException:
        if not existed and os.fstat(fd).st_size == 0:  # nothing recorded: leave no file behind
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    finally:
        os.close(fd)  # releases the lock


def append_status(path: Path, records: Sequence[Record]) -> None:
    """Append records durably (written, then synced) so a killed run can resume after them.

    A torn last line (a run killed while writing it) is ended first, so it stays one unreadable
    line instead of corrupting the next record. A write that fails (a full disk) is undone: the
    file is cut back to its size before, so it never records a set that was not recorded whole.
    """
    if not records:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"
        lines = "".join(
            json.dumps({**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
            for record in records
        )
        data = memoryview((("\n" if torn else "") + lines).encode())
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise write_error(path, exc) from None
    finally:
        os.close(fd)


def plan_batches(
    keys: Sequence[tuple[int, int, int]],
    config: fusion.FusionConfig,
    batch_size: int,
    memory_limit: int,
) -> list[list[int]]:
    """Indices of same-``(N, H, W)`` sets in batches of at most ``batch_size`` that each fit
    ``memory_limit`` as a whole (first-seen order)."""
    batches = []
    for batch in fusion.group_batches(keys, batch_size):
        per_set = fusion.memory_estimate(1, *keys[batch[0]], config)
        size = max(1, min(len(batch), memory_limit // max(per_set, 1)))
        batches += [batch[k : k + size] for k in range(0, len(batch), size)]
    return batches


def status_path(out_dir: Path, process: int, processes: int) -> Path:
    """``status.jsonl`` (one process) or ``status.p<process>.jsonl`` (multi-host)."""
    name = STATUS_FILE if processes == 1 else STATUS_FILE.replace(".", f".p{process}.", 1)
    return out_dir / name


def fuse_manifest(
    manifest: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: fusion.FusionConfig,
    *,
    weights_file: str | None = None,
    batch_size: int = 8,
    memory_limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    report: str | None = None,
    process: int = 0,
    processes: int = 1,
    judge_name: str | None = None,
    allow_same_judge: bool = False,
) -> list[Record]:
    """Fuse every set of ``manifest`` into ``out_dir/NAME.png``; return one record per set
    (``status`` ``done`` or ``failed``, with the judge's semantic scores when ``judge_name`` is
    given) and write them to the report (if any).

    With ``resume``, sets recorded as done (whose output exists) are skipped and the outputs of
    unfinished sets may be replaced. A set that fails (unreadable, too large, unwritable output)
    is recorded and the run goes on.

    Raises:
      SemfuseError: a problem with the run as a whole, or after the run when any set failed.
    """
    limit = default_memory_limit() if memory_limit is None else memory_limit
    manifest = Path(manifest)
    rows = read_manifest(manifest)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SemfuseError(f"cannot create {out_dir}: {exc.strerror}") from None
    status = status_path(out_dir, process, processes)
    if status.is_symlink() or (status.exists() and not status.is_file()):
        raise SemfuseError(f"{status} is not a regular file; refusing to append to it")
    files.check_writable(status)
    outputs = {set_name: out_dir / f"{set_name}.png" for set_name, _ in rows}
    read = [p for _, inputs in rows for p in inputs] + [manifest]
    read += [Path(weights_file)] if weights_file else []
    files.check_outputs(
        [*outputs.values(), *([report] if report else []), status],
        read,
        overwrite=True,  # identity and writability here; existing outputs are checked per set
    )
    if report:
        files.check_writable(report, overwrite=overwrite or resume)
    with status_lock(status, resume, overwrite):
        previous = read_status(status) if resume else {}
        finished = {
            set_name
            for set_name, record in previous.items()
            if record.get("status") == "done" and outputs.get(set_name, Path()).is_file()
        }

        def failure(set_name: str, exc: SemfuseError) -> Record:
            logging.error("set %s: %s", set_name, exc)
            return {"name": set_name, "status": "failed", "error": str(exc)}

        records: list[Record] = []
        valid: list[tuple[str, list[Path], Path, tuple[int, int, int]]] = []
        for set_name, inputs in rows:
            output = outputs[set_name]
            try:
                # A resumed run owns the outputs of its unfinished sets (one may have been written
                # just before the run was killed, without its status record): they are recomputed.
                files.check_writable(output, overwrite=overwrite or resume)
                valid.append((set_name, inputs, output, set_key(inputs, config, limit)))
            except SemfuseError as exc:
                if process == 0:  # header-level failures are the same in every process
                    records.append(failure(set_name, exc))
        append_status(status, records)
        batches = plan_batches([key for *_, key in valid], config, batch_size, limit)
        mine = batches[process::processes]
        todo = [b for b in mine if not all(valid[i][0] in finished for i in b)]
        models, config = (
            load_models(
                config, weights_file, judge_name=judge_name, allow_same_judge=allow_same_judge
            )
            if todo
            else (Models(None, None, None), config)
        )
        started = time.perf_counter()
        total = sum(len(b) for b in mine)
        # While batch k is fused, batch k + 1 is read, stacked and placed on the device and batch
        # k − 1 written, each in a background thread; a batch's records reach the status file
        # once its files are written.
        reader = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        writer = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        ahead = iter([[valid[i] for i in b] for b in todo])
        upcoming = reader.submit(_read_members, next(ahead, []))
        writing = None  # (batch number, failure records, future of the written records)

        def finish(pending: tuple[int, list[Record], concurrent.futures.Future]) -> None:
            number, failed, written = pending
            done = failed + written.result()
            append_status(status, done)
            records.extend(done)
            so_far = sum(len(b) for b in mine[:number])
            elapsed = time.perf_counter() - started
            eta = elapsed / so_far * (total - so_far)
            logging.info("%d/%d sets done, %.0fs elapsed, ETA %.0fs", so_far, total, elapsed, eta)

        try:
            for number, batch in enumerate(mine, start=1):
                members = [valid[i] for i in batch]
                if batch not in todo:
                    if writing is not None:  # records stay in manifest order
                        pending, writing = writing, None
                        finish(pending)
                    records += [{**previous[m[0]], "resumed": True} for m in members]
                    continue
                logging.info("batch %d/%d: %s", number, len(mine), ", ".join(m[0] for m in members))
                read = upcoming.result()
                upcoming = reader.submit(_read_members, next(ahead, []))
                failed, fused = _fuse_members(models, config, read, failure)
                if writing is not None:
                    pending, writing = writing, None
                    finish(pending)
                saved = writer.submit(_save_members, models, config, fused, failure)
                writing = (number, failed, saved)
            if writing is not None:
                pending, writing = writing, None
                finish(pending)
        finally:
            reader.shutdown(cancel_futures=True)
            writer.shutdown()  # a write in flight completes (every file is written atomically)
            if writing is not None and writing[2].exception() is None:
                finish(writing)  # stopped while its files were written: they are recorded too
        failed = sum(r["status"] == "failed" for r in records)
        resumed = sum(bool(r.get("resumed")) for r in records)
        logging.info(
            "%d sets done (%d from before), %d failed", len(records) - failed, resumed, failed
        )
        write_report(report, {**run_info(models, config), "process": process, "sets": records})
        if failed:
            raise SemfuseError(f"{failed} of {len(records)} sets failed (see the log)")
        return records


Member = tuple[str, list[Path], Path, tuple[int, int, int]]


Loaded = tuple[list[Ready], list[tuple[str, SemfuseError]]]


def _read_members(members: list[Member]) -> Loaded:
    """Read one planned batch's sets, stack each group of one shape and place it on the device
    (:class:`Ready`), and ``(name, error)`` for each set that cannot be read."""
    loaded, unreadable = [], []
    for set_name, inputs, output, _ in members:
        try:
            images = fusion.stack_set([files.load_image(p) for p in inputs])
            bits = max(files.bit_depth(p) for p in inputs)
            loaded.append((set_name, images, output, bits))
        except SemfuseError as exc:
            unreadable.append((set_name, exc))
    ready = []
    for group in fusion.group_batches([images.shape for _, images, _, _ in loaded], len(loaded)):
        names, sets, outputs, bits = map(list, zip(*(loaded[i] for i in group), strict=True))
        ready.append(Ready(names, sets, outputs, bits, stack_and_place(sets)))
    return ready, unreadable


def _fuse_members(
    models: Models, config: fusion.FusionConfig, read: Loaded, failure: Any
) -> tuple[list[Record], list[Fused]]:
    """Fuse one batch read by :func:`_read_members`, writing nothing: failure records of the
    sets that could not be read or fused, and the fused groups (sets of one shape)."""
    ready, unreadable = read
    failed = [failure(set_name, exc) for set_name, exc in unreadable]
    fused = []
    for group in ready:
        try:
            fused.append(fuse_batch(models, config, group))
        except SemfuseError as exc:
            failed += [failure(n, exc) for n in group.names]
    return failed, fused


def _save_members(
    models: Models, config: fusion.FusionConfig, fused: list[Fused], failure: Any
) -> list[Record]:
    """Write the groups :func:`_fuse_members` fused: their records (a group whose outputs cannot
    be written is a failure; a full disk stops the run)."""
    done = []
    for group in fused:
        try:
            done += [{**r, "status": "done"} for r in save_fused(models, config, group)]
        except DiskFullError:  # every later write would fail too: stop the run
            raise
        except SemfuseError as exc:  # e.g. an output that turned unwritable: record, go on
            done += [failure(n, exc) for n in group.ready.names]
    return done
