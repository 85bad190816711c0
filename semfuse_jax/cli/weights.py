"""semfuse-weights: list known VGG19 sources, download, convert and inspect weight files.

Usage:
  semfuse-weights list
  semfuse-weights info --path=FILE
  semfuse-weights convert --src=FILE --out=vgg19.safetensors
  semfuse-weights download --source=torchvision [--cache_dir=DIR] [--trust_unpinned]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from semfuse_jax.cli import run_guarded
from semfuse_jax.errors import SemfuseError
from semfuse_jax.models import checkpoints, vgg19

_PATH = flags.DEFINE_string("path", None, "info: weights file (default: what fuse would use).")
_SRC = flags.DEFINE_string("src", None, "convert: a .pth, .h5 or .safetensors VGG19 weights file.")
_OUT = flags.DEFINE_string("out", None, "convert: output canonical .safetensors file.")
_SOURCE = flags.DEFINE_string("source", "torchvision", "download: a source name from `list`.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "download: cache folder (default: user cache).")
_TRUST = flags.DEFINE_bool("trust_unpinned", False, "download: accept an unpinned source.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "convert: replace an existing --out file.")
_JSON = flags.DEFINE_bool("json", False, "info/convert/list: print JSON instead of text.")

COMMANDS = ("list", "info", "convert", "download")


def _print(record: dict) -> None:
    if _JSON.value:
        print(json.dumps(record, indent=2))
    else:
        for key, value in record.items():
            print(f"{key:15s} {value}")


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise SemfuseError(f"give one command: {' | '.join(COMMANDS)} (see --help)")
    command = argv[1]
    if command == "list":
        sources = checkpoints.manifest()
        if _JSON.value:
            print(json.dumps(sources, indent=2))
        else:
            for name, entry in sources.items():
                url = entry["url"] or "(no public URL)"
                print(f"{name:15s} {entry['layers']:18s} {entry['format']:17s} {url}")
            print(f"cache: {checkpoints.cache_dir()}")
    elif command == "info":
        _print(vgg19.describe(vgg19.resolve_path(_PATH.value)))
    elif command == "convert":
        if not _SRC.value or not _OUT.value:
            raise SemfuseError("convert needs --src and --out")
        _print(vgg19.convert(_SRC.value, _OUT.value, _OVERWRITE.value))
    else:
        cache = Path(_CACHE_DIR.value) if _CACHE_DIR.value else None
        out = vgg19.download(_SOURCE.value, cache, _TRUST.value)
        _print(vgg19.describe(out))
    return 0


def run() -> None:
    run_guarded(main, __doc__, [__name__])


if __name__ == "__main__":
    run()
