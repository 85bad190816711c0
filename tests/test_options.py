"""The tools' fusion flags are made from ``FusionConfig``: one setting is one edit."""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags

from semfuse_jax import fusion
from semfuse_jax.cli import options
from semfuse_jax.errors import SemfuseError
from semfuse_jax.optimise import Schedule


def test_every_setting_of_the_config_is_a_flag_with_its_default():
    config = fusion.FusionConfig()
    for field in dataclasses.fields(fusion.FusionConfig):
        if field.name in ("method", "method_params"):
            assert field.name not in options.CONFIG_FLAGS
            continue
        if field.name == "schedule":
            for name in options.SCHEDULE_FLAGS:
                assert flags.FLAGS[name].default == getattr(config.schedule, name)
            continue
        default = getattr(config, field.name)
        flag = flags.FLAGS[field.name].default
        assert (tuple(flag) if isinstance(default, tuple) else flag) == default, field.name
    docs = options.attribute_docs(fusion.FusionConfig)
    assert flags.FLAGS["top_k"].help == docs["top_k"] and "``" not in flags.FLAGS["colour"].help


def test_a_new_setting_gets_its_flag_and_reaches_the_config():
    @dataclasses.dataclass(frozen=True)
    class Extended:
        """Settings.

        Attributes:
          strength: how strong, a new setting
            written over two lines.
          mode: ``a`` or ``b``.
          names: some names.
          schedule: the schedule.
        """

        strength: float = 0.25
        mode: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
        names: tuple[str, ...] = ("x",)
        schedule: Schedule = dataclasses.field(default_factory=Schedule)

    values = flags.FlagValues()
    made = options.define_config_flags(Extended, values)
    assert set(made) >= {"strength", "mode", "names", "epochs", "lr"}
    assert "b1" not in made  # Schedule's Adam constants are not flags
    values(["prog", "--strength=0.5", "--mode=b", "--names=p,q", "--epochs=3"])
    assert values["strength"].help == "how strong, a new setting written over two lines."
    built = options.config_from_values(Extended, values)
    assert built == Extended(0.5, "b", ("p", "q"), Schedule(epochs=3))
    with pytest.raises(flags.IllegalFlagValueError):
        values["mode"].parse("c")


def test_flags_build_the_config_the_tools_use():
    values = flags.FlagValues()
    options.define_config_flags(fusion.FusionConfig, values)
    values(["prog", "--top_k=3", "--cam=layercam", "--fm2_weighted_target", "--lr=2"])
    config = options.config_from_values(fusion.FusionConfig, values, method="fm2")
    assert config == fusion.FusionConfig(
        method="fm2", top_k=3, cam="layercam", fm2_weighted_target=True, schedule=Schedule(lr=2.0)
    )
    values(["prog", "--top_k=0"])
    with pytest.raises(SemfuseError, match="top_k"):
        options.config_from_values(fusion.FusionConfig, values, method="fm2")
