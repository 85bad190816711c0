"""Running another git revision of this project beside the checkout, for before/after timings."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def git(tree: Path, *args: str) -> str:
    """The output of ``git args`` in ``tree``, stripped."""
    done = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True)
    return done.stdout.strip()


def label(tree: Path = HERE) -> str:
    """``tree``'s short commit, noting uncommitted changes to tracked files."""
    name = git(tree, "rev-parse", "--short", "HEAD")
    dirty = git(tree, "status", "--porcelain", "-uno")
    return name + (" with uncommitted changes" if dirty else "")


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A temporary detached worktree of ``revision`` (removed afterwards); run its code with
    ``PYTHONPATH`` set to it, so its package comes before the installed one."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(tree), revision],
            check=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(HERE), "worktree", "remove", "--force", str(tree)], check=False
            )


def run_in(tree: Path, args: list[str]) -> subprocess.CompletedProcess:
    """``python args`` with the code of ``tree`` (its package first on the path, run from it);
    exits with the end of its stderr if it fails."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"run in {tree} failed:\n{done.stderr[-2000:]}")
    return done
