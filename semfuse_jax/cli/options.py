"""Flags shared by the tools that fuse: weights and every fusion setting."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from absl import flags

from semfuse_jax import classifier, fusion, runs
from semfuse_jax.errors import SemfuseError
from semfuse_jax.optimise import Schedule

BATCH = flags.DEFINE_integer("batch_size", 8, "Batch mode: sets fused together (same size).")
WEIGHTS = flags.DEFINE_string(
    "weights", None, "VGG19 weights file (default: $SEMFUSE_WEIGHTS/cache)."
)
JUDGE = flags.DEFINE_enum(
    "judge",
    None,
    classifier.NAMES,
    "An independent classifier that judges semantic retention (for each input, whether its "
    "top-1 class is in the fused image's top-5): adds semantic_kept and semantic_ratio to "
    "scores, tables and reports; must not be the fusion's CAM classifier (efficientnet_lite1 "
    "judges the default efficientnet_lite0).",
)
ALLOW_SAME_JUDGE = flags.DEFINE_bool(
    "allow_same_judge", False, "Let --judge be the classifier whose CAMs made the fusion."
)
MAX_MEMORY = flags.DEFINE_float(
    "max_memory_gb", None, "Refuse sets estimated to need more (default: 80% of physical memory)."
)


def attribute_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of a class docstring: ``{name: text}``, whitespace collapsed
    (an entry ``a, b: text`` gives ``text`` to both)."""
    lines = (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines()
    docs: dict[str, str] = {}
    names: list[str] = []
    level = None  # the entries' indentation; deeper lines continue an entry
    for line in lines:
        entry = line.strip()
        if not entry:
            continue
        indent = len(line) - len(line.lstrip())
        level = indent if level is None else level
        head, sep, rest = entry.partition(": ")
        if sep and indent <= level and all(n.strip().isidentifier() for n in head.split(",")):
            names = [n.strip() for n in head.split(",")]
            for name in names:
                docs[name] = rest
        else:
            for name in names:
                docs[name] += " " + entry
    return {name: _plain(text) for name, text in docs.items()}


def _plain(text: str) -> str:
    """Docstring markup as plain text: ``x`` → x, :func:`a.b` → a.b."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _default(field: dataclasses.Field) -> Any:
    if field.default is dataclasses.MISSING:
        return field.default_factory()  # type: ignore[misc]
    return field.default


def define_config_flags(
    cls: type = fusion.FusionConfig, flag_values: flags.FlagValues = flags.FLAGS
) -> tuple[str, ...]:
    """One flag per field of the configuration dataclass ``cls`` (a nested dataclass field,
    like the schedule, gives one per field of its own), named as the field, with its default,
    its docstring entry as help and ``choices`` from the field's metadata; a field with
    ``flag: False`` metadata is left out. Returns the flag names."""
    docs = attribute_docs(cls)
    names: list[str] = []
    for field in dataclasses.fields(cls):
        if not field.metadata.get("flag", True):
            continue
        default = _default(field)
        if dataclasses.is_dataclass(default):
            names += define_config_flags(type(default), flag_values)
            continue
        text = docs.get(field.name, field.name)
        choices = field.metadata.get("choices")
        if choices is not None:
            flags.DEFINE_enum(field.name, default, list(choices), text, flag_values=flag_values)
        elif isinstance(default, bool):
            flags.DEFINE_bool(field.name, default, text, flag_values=flag_values)
        elif isinstance(default, tuple):
            flags.DEFINE_list(field.name, list(default), text, flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(field.name, default, text, flag_values=flag_values)
        elif isinstance(default, int) or "int" in str(field.type):
            flags.DEFINE_integer(field.name, default, text, flag_values=flag_values)
        else:
            flags.DEFINE_string(field.name, default, text, flag_values=flag_values)
        names.append(field.name)
    return tuple(names)


def config_from_values(
    cls: type = fusion.FusionConfig, flag_values: flags.FlagValues = flags.FLAGS, **given: Any
) -> Any:
    """An instance of ``cls`` from the flags :func:`define_config_flags` made (lists as
    tuples, a nested dataclass from its own flags), with the fields ``given`` as they are."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in given or not field.metadata.get("flag", True):
            continue
        default = _default(field)
        if dataclasses.is_dataclass(default):
            values[field.name] = config_from_values(type(default), flag_values)
        else:
            value = flag_values[field.name].value
            values[field.name] = tuple(value) if isinstance(default, tuple) else value
    return cls(**values, **given)


CONFIG_FLAGS = define_config_flags()
SCHEDULE_FLAGS = tuple(f.name for f in dataclasses.fields(Schedule) if f.metadata.get("flag", True))


CONFIG = flags.DEFINE_string(
    "config",
    None,
    "Re-run with the fusion settings of a past run: a report (its 'config') or a configuration "
    "JSON file; the method and every fusion flag then come from it.",
)


def read_config(path: str) -> fusion.FusionConfig:
    """The ``config`` of a report (or a bare configuration) written by a past run."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SemfuseError(f"cannot read the configuration {path} ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict):
        data = data["config"]
    if not isinstance(data, dict):
        raise SemfuseError(f"{path} holds no fusion configuration")
    return fusion.FusionConfig.from_dict(data)


def config_from_flags(method: str | None) -> fusion.FusionConfig:
    """The fusion settings the flags describe, for ``method``; with ``--config``, the settings
    of that run (for ``method`` if one is given, else for the run's own method)."""
    if CONFIG.value:
        config = read_config(CONFIG.value)
        if method is None or method == config.method:
            return config
        return dataclasses.replace(config, method=method, method_params=None)  # its defaults
    given = [name for name in SCHEDULE_FLAGS if flags.FLAGS[name].present]
    if flags.FLAGS["solver"].value == "fast" and given:
        raise SemfuseError(
            f"--solver=fast sets its own schedule; drop --{', --'.join(given)} or use --solver=adam"
        )
    return config_from_values(method=method)


def memory_limit_bytes() -> int:
    """``--max_memory_gb`` in bytes, else 80% of the machine's physical memory."""
    if MAX_MEMORY.value is not None:
        if not 0 < MAX_MEMORY.value < 2**20:  # also refuses NaN and infinity
            raise SemfuseError("--max_memory_gb must be a positive number of GiB")
        return int(MAX_MEMORY.value * 2**30)
    return runs.default_memory_limit()
