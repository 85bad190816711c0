"""semfuse-eval: score a fusion, or fuse and score many sets with many methods (Table 1 style).

Score one result (all metrics; JSON keys q0, qw, qe, qabf, qabf_petrovic, en, sd, sf, ag, mi, ssim,
mef_ssim, overshoot, chroma_error; the last is null for sets without colour; with --judge also
semantic_kept, semantic_ratio and the judge's classes under semantic):
  semfuse-eval --inputs=A.png,B.png --fused=F.png [--json] [--judge=efficientnet_lite1]
The judge must not be the classifier whose CAMs made the fusion: it is taken from --config (the
fusion's report) or --classifier when given, and refused when equal (--allow_same_judge allows).
Table mode: every set folder ``DOMAIN/SET`` under ``--table`` (or those named by ``--sets``), fused
with every ``--methods`` entry (same-size sets batched), scored, and written to ``--output_dir`` as
table.csv/.md/.json (best per set and column in bold), summary.csv/.md (per-domain means) and
fused/METHOD/DOMAIN__SET.png:
  semfuse-eval --table=../shared/data --methods=average,dwt,laplacian,fm0,fm1 --output_dir=eval
With --judge, table mode adds the columns semantic_kept and semantic_ratio.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from semfuse_jax import classifier, files, fusion, judge, methods, metrics, tables
from semfuse_jax.cli import options, run_guarded
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import vgg19

_INPUTS = flags.DEFINE_list("inputs", None, "Score mode: the input images.")
_FUSED = flags.DEFINE_string("fused", None, "Score mode: the fused image.")
_JSON = flags.DEFINE_bool("json", False, "Score mode: print JSON.")
_TABLE = flags.DEFINE_string("table", None, "Table mode: root folder of DOMAIN/SET image folders.")
_SETS = flags.DEFINE_list("sets", None, "Table mode: DOMAIN/SET folders to use (default: all).")
_METHODS = flags.DEFINE_list(
    "methods",
    ["average", "max", "dwt", "laplacian", "fm0", "fm1"],
    f"Table mode: methods, any of {', '.join(methods.NAMES)}.",
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Table mode: output folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Table mode: replace existing output files.")


def cam_classifier() -> str | None:
    """The classifier whose CAMs made the scored image, as far as the flags tell: that of
    ``--config`` (a report or configuration), else ``--classifier`` when given, else unknown."""
    if options.CONFIG.value:
        config = options.read_config(options.CONFIG.value)
        if not config.uses_cam:
            return None
        name = config.classifier
    elif flags.FLAGS["classifier"].present:
        name = flags.FLAGS["classifier"].value
    else:
        return None
    return classifier.resolve(
        name, vgg19.load_weights(options.WEIGHTS.value) if name == "auto" else None
    )


def score_one() -> int:
    inputs = fusion.stack_set([files.load_image(p) for p in _INPUTS.value])
    fused = files.load_image(_FUSED.value)
    if fused.shape[:2] != inputs.shape[1:3]:
        raise SemfuseError(f"fused image {_FUSED.value} is not the size of the inputs")
    semantic = None
    if options.JUDGE.value:
        cams = cam_classifier()
        judge.check_independent(
            options.JUDGE.value, [cams] if cams else [], options.ALLOW_SAME_JUDGE.value
        )
        vgg = vgg19.load_weights(options.WEIGHTS.value) if options.JUDGE.value == "vgg19" else None
        network = classifier.load(options.JUDGE.value, vgg)
        semantic = judge.scores(network, inputs[None], fused[None])[0]
        semantic["networks"] = {"cam": cams, "judge": options.JUDGE.value}
    values = metrics.score_set(inputs, fused) | (semantic or {})
    if _JSON.value:
        print(json.dumps(values, indent=2))
        return 0
    for name in (*tables.COLUMNS, *(judge.COLUMNS if semantic else ())):
        value = values[name]
        print(f"{name:14s} {'–' if value is None else f'{value:.6f}'}")
    if semantic:
        print(judge.describe(semantic["semantic"]))
    return 0


def table_mode() -> int:
    if not _OUTPUT_DIR.value:
        raise SemfuseError("table mode needs --output_dir")
    if not _METHODS.value:
        raise SemfuseError("--methods is empty; name at least one method")
    tables.run_table(
        _TABLE.value,
        [options.config_from_flags(method) for method in _METHODS.value],
        _OUTPUT_DIR.value,
        sets=_SETS.value,
        weights_file=options.WEIGHTS.value,
        batch_size=options.BATCH.value,
        overwrite=_OVERWRITE.value,
        judge_name=options.JUDGE.value,
        allow_same_judge=options.ALLOW_SAME_JUDGE.value,
    )
    print((Path(_OUTPUT_DIR.value) / "summary.md").read_text())
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) > 1:
        raise SemfuseError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(_TABLE.value) == bool(_INPUTS.value or _FUSED.value):
        raise SemfuseError("give either --inputs and --fused (score), or --table (table mode)")
    if _TABLE.value:
        return table_mode()
    if not (_INPUTS.value and _FUSED.value):
        raise SemfuseError("score mode needs --inputs and --fused")
    return score_one()


def run() -> None:
    run_guarded(main, __doc__, [__name__, options.__name__])


if __name__ == "__main__":
    run()
