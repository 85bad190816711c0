"""semfuse-fuse: fuse registered images with FM0–FM6 or a classical baseline.

One set:
  semfuse-fuse --inputs=A.png,B.png --output=F.png [--method=fm0] [--report=r.json]
               [--figure=sheet.png]
Many sets (same-size sets are fused together as vmapped batches):
  semfuse-fuse --pairs=manifest.csv --output_dir=DIR [--batch_size=8]
A manifest line is ``name,input1,input2[,input3...]`` (paths relative to the manifest's folder;
blank lines and lines starting with ``#`` are ignored); set ``name`` is written to DIR/name.png.
Re-run a past run with its settings: semfuse-fuse --config=report.json --inputs=... --output=...

Methods:
{methods}
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from absl import flags, logging

from semfuse_jax import methods, runs, sharding
from semfuse_jax.cli import options, run_guarded
from semfuse_jax.errors import SemfuseError

_INPUTS = flags.DEFINE_list("inputs", None, "Comma-separated input images of one set (N >= 2).")
_OUTPUT = flags.DEFINE_string("output", None, "Fused image to write (PNG recommended).")
_PAIRS = flags.DEFINE_string("pairs", None, "Batch mode: CSV manifest, `name,input1,input2,...`.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Batch mode: folder for NAME.png outputs.")
_METHOD = flags.DEFINE_enum("method", "fm0", methods.NAMES, "Fusion method or baseline.")
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


def start_distributed() -> None:
    """Join a multi-host run when --num_processes > 1 (after checking the flags)."""
    processes, process = _NUM_PROCESSES.value, _PROCESS_ID.value
    if processes < 1 or not 0 <= process < processes:
        raise SemfuseError("need --num_processes >= 1 and 0 <= --process_id < --num_processes")
    if processes == 1:
        return
    if not _PAIRS.value:
        raise SemfuseError("multi-host runs take a manifest (--pairs)")
    if not _COORDINATOR.value:
        raise SemfuseError("multi-host runs need --coordinator_address=HOST:PORT")
    sharding.join_processes(_COORDINATOR.value, processes, process, _COORDINATOR_TIMEOUT.value)
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
    common = {
        "weights_file": options.WEIGHTS.value,
        "report": _REPORT.value,
        "overwrite": _OVERWRITE.value,
        "memory_limit": options.memory_limit_bytes(),
        "judge_name": options.JUDGE.value,
        "allow_same_judge": options.ALLOW_SAME_JUDGE.value,
    }
    if single:
        runs.fuse_set(_INPUTS.value, _OUTPUT.value, config, figure=_FIGURE.value, **common)
    else:
        runs.fuse_manifest(
            _PAIRS.value,
            _OUTPUT_DIR.value,
            config,
            batch_size=options.BATCH.value,
            resume=_RESUME.value,
            process=_PROCESS_ID.value,
            processes=_NUM_PROCESSES.value,
            **common,
        )
    return 0


def run() -> None:
    run_guarded(main, __doc__.format(methods=methods.describe()), [__name__, options.__name__])


if __name__ == "__main__":
    run()
