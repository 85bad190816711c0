"""absl command-line tools; each module's ``run`` is a console-script entry point.

Every tool reports a problem it can name as one line, ``<tool>: error: <message>``, on stderr with
exit status 1 (2 for unparseable flags); SIGTERM and Ctrl-C stop it cleanly (no partial files) with
status 143 and 130.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from absl import app, flags

from semfuse_jax.errors import SemfuseError


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup (temporary files) runs."""


def _program() -> str:
    return Path(sys.argv[0]).name


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with a one-line error instead of the usage dump."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as exc:
        sys.stderr.write(f"{_program()}: error: {exc}\n")
        sys.exit(2)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def run_guarded(main: Callable[[Sequence[str]], int | None]) -> None:
    """``app.run(main)``, turning a :class:`SemfuseError` into one stderr line and exit status 1."""

    def guarded(argv: Sequence[str]) -> int | None:
        signal.signal(signal.SIGTERM, _terminate)
        try:
            return main(argv)
        except SemfuseError as exc:
            sys.stderr.write(f"{_program()}: error: {exc}\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write(f"{_program()}: interrupted\n")
            return 130
        except Terminated:
            sys.stderr.write(f"{_program()}: terminated\n")
            return 143

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no backend-probe noise
    app.run(guarded, flags_parser=parse_flags)
