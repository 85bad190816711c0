"""Run many invocations of one semfuse tool in one interpreter (tests only).

    python tests/cli_batch.py semfuse_jax.cli.fuse cases.json results.json

``cases.json`` is a list of argument lists; each runs through the tool's real entry point
(``run``: absl flag parsing, ``run_guarded``, exit status) with its flags reset first, and
``results.json`` gets ``{"returncode", "stderr"}`` per case (stderr captured at the file
descriptor, so native and Python output both land there). One start-up serves every case.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile

from absl import flags


def run_case(module, program: str, args: list[str]) -> dict:
    flags.FLAGS.unparse_flags()
    sys.argv = [program, *args]
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            module.run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        return {"returncode": code, "stderr": captured.read().decode(errors="replace")}


def main() -> None:
    name, cases_file, results_file = sys.argv[1:4]
    module = importlib.import_module(name)
    program = name.rsplit(".", 1)[-1]
    with open(cases_file) as f:
        cases = json.load(f)
    results = [run_case(module, program, args) for args in cases]
    with open(results_file, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
