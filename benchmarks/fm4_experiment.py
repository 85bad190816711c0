"""FM4 against FM0, FM1 and the classical baselines on every set of the shared data.

Each method runs through the table runner of ``semfuse-eval`` (one run per method, kept in
``--out/methods/METHOD`` and reused while its solver matches; ``--rerun=fm4,...`` reruns). The
rows are merged into one table (``--out/table.md``, ``summary.md``: all metrics, per set and
per-domain means), and FM4 is checked per domain against the bar on Q_E and Petrovic
Q^{AB/F}: mean ≥ the best of the Laplacian and max baselines, mean ≥ FM0, and no set more than
0.01 below FM0 (``fm4_checks.json`` / ``.md``).

  python benchmarks/fm4_experiment.py --weights=../shared/weights/vgg19_imagenet_keras_block1-3.h5

``--run`` picks the methods. FM0, FM1 and FM4 use ``--solver=fast`` by default (the paper's
10,000-step schedule on all 36 sets would take many hours on a CPU; the fast solver reaches its
loss to within 1 %).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from tables import save

from semfuse_jax import files, fm4, fusion, tables
from semfuse_jax.tables import find_sets, score, write_table

_DATA = flags.DEFINE_string("data", "../shared/data", "Root of DOMAIN/SET folders.")
_OUT = flags.DEFINE_string("out", "benchmarks/out/fm4", "Output folder.")
_RUN = flags.DEFINE_list(
    "run", ["fm0", "fm1", "fm4", "average", "max", "dwt", "laplacian"], "Methods to run."
)
_SOLVER = flags.DEFINE_enum("solver", "fast", ["adam", "fast"], "Solver of FM0, FM1 and FM4.")
_WEIGHTS = flags.DEFINE_string("weights", None, "VGG19 weights file (default: as semfuse-fuse).")
_ABLATIONS = flags.DEFINE_bool(
    "ablations", True, "Also score FM4's pyramid start alone, and with changed settings."
)
_RERUN = flags.DEFINE_list("rerun", [], "Methods to run again even if their tables exist.")

CHECKED = ("qe", "qabf_petrovic")
BASELINE_BAR = ("laplacian", "max")
PAIR_SLACK = 0.01


def method_rows(method: str, out: Path) -> list[dict]:
    """Rows of ``method`` from its own table run (run now unless one with the same solver is
    kept in ``out/methods/METHOD``)."""
    folder = out / "methods" / method
    table = folder / "table.json"
    if method in _RERUN.value or not table.exists() or _solver_of(table) != _SOLVER.value:
        config = fusion.FusionConfig(method=method, solver=_SOLVER.value)
        tables.run_table(_DATA.value, [config], folder, weights_file=_WEIGHTS.value, overwrite=True)
    return json.loads(table.read_text())["rows"]


ABLATIONS: dict[str, dict[str, int | None]] = {  # name → activity_pyramid settings
    "fm4_start": {},
    "fm4_start_hard_seams": {"smooth": 0},
    "fm4_start_no_window": {"radius": 0},
    "fm4_start_mean_base": {"base_radius": None},
    "fm4_start_3_levels": {"levels": 3},
    "fm4_start_5_levels": {"levels": 5},
}


def ablation_rows() -> list[dict]:
    """FM4's start (the activity pyramid, no refinement) with its settings changed one at a
    time, scored like the methods."""
    rows = []
    for domain, name, paths in find_sets(Path(_DATA.value), None):
        images = fusion.stack_set([files.load_image(p) for p in paths])
        for label, settings in ABLATIONS.items():
            fused = np.asarray(fm4.activity_pyramid(images, **settings)[0])
            rows.append({"domain": domain, "set": name, "method": label, "steps": 0})
            rows[-1] |= score(images, fused)
    return rows


def _solver_of(table: Path) -> str | None:
    configs = json.loads(table.read_text())["settings"].get("configs") or [{}]
    return configs[0].get("solver")


def checks(records: list[dict]) -> tuple[list[dict], bool]:
    """Per domain and checked metric: FM4's mean, the bars, the worst set against FM0."""
    rows, passed = [], True
    for domain in dict.fromkeys(r["domain"] for r in records):
        by = {
            m: {r["set"]: r for r in records if r["domain"] == domain and r["method"] == m}
            for m in ("fm4", "fm0", *BASELINE_BAR)
        }
        for metric in CHECKED:
            mean = {m: float(np.mean([r[metric] for r in rs.values()])) for m, rs in by.items()}
            best = max(BASELINE_BAR, key=lambda m: mean[m])
            gaps = {s: by["fm4"][s][metric] - by["fm0"][s][metric] for s in by["fm4"]}
            worst = min(gaps, key=gaps.get)
            ok = (
                mean["fm4"] >= mean[best]
                and mean["fm4"] >= mean["fm0"]
                and gaps[worst] >= -PAIR_SLACK
            )
            passed &= ok
            rows.append(
                {
                    "domain": domain,
                    "metric": metric,
                    "sets": len(gaps),
                    "fm4": mean["fm4"],
                    "fm0": mean["fm0"],
                    "best_baseline": best,
                    "best_baseline_mean": mean[best],
                    "worst_set": worst,
                    "worst_fm4_minus_fm0": gaps[worst],
                    "pass": ok,
                }
            )
    return rows, passed


def main(argv: Sequence[str]) -> None:
    del argv
    out = Path(_OUT.value)
    records = [row for method in _RUN.value for row in method_rows(method, out)]
    if _ABLATIONS.value:
        records += ablation_rows()
    write_table(out, records, {"methods": _RUN.value, "solver": _SOLVER.value})
    print((out / "summary.md").read_text())
    if not {"fm4", "fm0", *BASELINE_BAR} <= set(_RUN.value):
        return
    rows, passed = checks(records)
    lines = [
        "| domain | metric | sets | FM4 | FM0 | best baseline | its mean | worst set "
        "| FM4 − FM0 there | pass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['domain']} | {r['metric']} | {r['sets']} | {r['fm4']:.4f} | {r['fm0']:.4f} "
        f"| {r['best_baseline']} | {r['best_baseline_mean']:.4f} | {r['worst_set']} "
        f"| {r['worst_fm4_minus_fm0']:+.4f} | {'yes' if r['pass'] else 'NO'} |"
        for r in rows
    ]
    save(out, "fm4_checks", {"rows": rows, "passed": passed}, lines)
    print("all checks passed" if passed else "some checks FAILED")


if __name__ == "__main__":
    app.run(main)
