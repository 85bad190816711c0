"""Saving a benchmark's results: JSON for machines, a Markdown table for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save(out: str | Path, name: str, data: Any, lines: list[str]) -> None:
    """Write ``out/name.json`` and ``out/name.md`` (the ``lines``), and print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
