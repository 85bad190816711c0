"""absl command-line tools; each module's ``run`` is a console-script entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from absl import app

from semfuse_jax.errors import SemfuseError


def run_guarded(main: Callable[[Sequence[str]], int | None]) -> None:
    """``app.run(main)``, turning a :class:`SemfuseError` into one stderr line and exit status 1."""

    def guarded(argv: Sequence[str]) -> int | None:
        try:
            return main(argv)
        except SemfuseError as exc:
            sys.stderr.write(f"{Path(sys.argv[0]).name}: error: {exc}\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write(f"{Path(sys.argv[0]).name}: interrupted\n")
            return 130

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no backend-probe noise
    app.run(guarded)
