"""absl command-line tools; each module's ``run`` is a console-script entry point.

Every tool reports a problem it can name as one line, ``<tool>: error: <message>``, on stderr with
exit status 1 (2 for unparseable flags); SIGTERM and Ctrl-C stop it cleanly (no partial files) with
status 143 and 130.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from absl import app, flags

from semfuse_jax.errors import SemfuseError
from semfuse_jax.optimise import driver


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that cleanup (temporary files) runs."""


def _program() -> str:
    return Path(sys.argv[0]).name


HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull")


def usage(doc: str, modules: Sequence[str]) -> str:
    """A tool's help: its docstring, then every flag its modules define, with defaults."""
    parts = [doc.strip(), "", "Flags:"]
    for module in modules:
        # absl files the flags of a module run as a script under the script's path
        text = flags.FLAGS.module_help(sys.argv[0] if module == "__main__" else module).strip()
        if text:
            parts += ["", *text.splitlines()[1:]]  # drop the "module_name:" heading
    return "\n".join(parts) + "\n"


def flags_parser(doc: str, modules: Sequence[str]) -> Callable[[list[str]], list[str]]:
    """absl flag parsing with ``--help`` answered from the tool's own flags (exit 0) and a
    one-line error (exit 2) instead of the usage dump."""

    def parse(argv: list[str]) -> list[str]:
        if any(arg in HELP_FLAGS for arg in argv[1:]):
            sys.stdout.write(usage(doc, modules))
            sys.exit(0)
        try:
            return flags.FLAGS(argv)
        except flags.Error as exc:
            sys.stderr.write(f"{_program()}: error: {exc}\n")
            sys.exit(2)

    return parse


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM: :class:`KeyboardInterrupt` or :class:`Terminated` in the main thread,
    held back while a compiled optimisation runs (:func:`semfuse_jax.optimise.driver.interrupt`)."""
    driver.interrupt(KeyboardInterrupt if signum == signal.SIGINT else Terminated)


def _exit_now(status: int) -> None:
    """Leave at once after an interruption (partial files are already removed): skipping the
    interpreter's teardown avoids crashes of runtime threads that were stopped mid-work."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache in ``<cache>/xla`` (``checkpoints.cache_dir``), so that a
    second run of a tool with the same shapes and settings compiles nothing."""
    import jax

    from semfuse_jax.models.checkpoints import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def run_guarded(
    main: Callable[[Sequence[str]], int | None], doc: str, modules: Sequence[str]
) -> None:
    """``app.run(main)``, turning a :class:`SemfuseError` into one stderr line and exit status 1.

    ``doc`` and the flags of ``modules`` make the tool's ``--help``.
    """

    def guarded(argv: Sequence[str]) -> int | None:
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        try:
            return main(argv)
        except SemfuseError as exc:
            sys.stderr.write(f"{_program()}: error: {exc}\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write(f"{_program()}: interrupted\n")
            _exit_now(130)
        except Terminated:
            sys.stderr.write(f"{_program()}: terminated\n")
            _exit_now(143)
        except BrokenPipeError:  # e.g. `--json | head`: the reader left; say nothing more
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 141

    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no backend-probe noise
    use_compilation_cache()
    app.run(guarded, flags_parser=flags_parser(doc, modules))
