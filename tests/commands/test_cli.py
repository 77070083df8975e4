"""cli.define_flags / settings_from_flags: one field of a settings dataclass is one flag."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from absl import app, flags

from xray_tfdata import cli, errors, settings
from xray_tfdata.settings import nested, setting


@dataclasses.dataclass(frozen=True)
class Inner:
    batch: int = setting(32, "Global batch.")
    prefix: str = setting("", "Job prefix.", flag="job")
    internal: int = 7  # no help: no flag


@dataclasses.dataclass(frozen=True)
class Outer:
    path: str = setting(help="Where.", flag_default="out")
    mode: str = setting("fast", "Speed.", allowed=("fast", "slow"))
    rate: float = setting(0.5, "A rate.")
    on: bool = setting(True, "Switch.")
    size: int | None = setting(None, "Optional size.")
    workers: tuple[int, ...] = setting((1, 2), "Worker counts.")
    names: tuple[str, ...] = setting(("a",), "Names.")
    inner: Inner = nested(Inner)

    def __post_init__(self) -> None:
        errors.positive_int("batch", self.inner.batch)


def _flags(*argv: str) -> flags.FlagValues:
    values = flags.FlagValues()
    cli.define_flags(Outer, flag_values=values)
    values(["prog", *argv])
    return values


def test_every_field_with_help_is_a_flag_of_its_type_and_default():
    values = _flags()
    assert {name: values[name].default for name in
            ("path", "mode", "rate", "on", "size", "workers", "names", "batch", "job")} == {
        "path": "out", "mode": "fast", "rate": 0.5, "on": True, "size": None,
        "workers": ["1", "2"], "names": ["a"], "batch": 32, "job": ""}
    assert "internal" not in values and "inner" not in values
    assert values["mode"].help == "<fast|slow>: Speed." and values["job"].help == "Job prefix."
    assert values["workers"].flag_type() == "comma separated list of strings"


def test_settings_from_flags_builds_the_nested_dataclass_with_typed_lists():
    values = _flags("--path=p", "--mode=SLOW", "--workers=4,8", "--size=5", "--batch=3",
                    "--job=run1", "--noon")
    config = cli.settings_from_flags(Outer, values)
    assert config == Outer(path="p", mode="slow", on=False, size=5, workers=(4, 8),
                           inner=Inner(batch=3, prefix="run1"))


def test_errors_name_the_flag_the_user_typed():
    with pytest.raises(app.UsageError, match=r"--workers=1,x must be a comma-separated list of "
                                             r"integers"):
        cli.settings_from_flags(Outer, _flags("--workers=1,x"))
    with pytest.raises(app.UsageError, match=r"--batch must be an integer >= 1"):
        cli.settings_from_flags(Outer, _flags("--batch=0"))
    with pytest.raises(flags.IllegalFlagValueError, match="value should be one of <fast|slow>"):
        _flags("--mode=medium")


def test_from_flat_routes_flag_names_into_the_nested_settings():
    config = settings.from_flat(Outer, path="p", batch=4, job="j", rate=0.1)
    assert config.inner == Inner(batch=4, prefix="j") and config.rate == 0.1
    with pytest.raises(TypeError, match="unknown settings"):
        settings.from_flat(Outer, path="p", nope=1)


def test_a_failed_command_prints_one_error_line_and_exits_1(tmp_path):
    script = tmp_path / "failing_command.py"
    script.write_text("from xray_tfdata import cli\n"
                      "def main(argv):\n    cli.fail('the disk is full')\n"
                      "cli.run(main)\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("error: the disk is full")
    assert "Traceback" not in proc.stderr and "--helpfull" not in proc.stderr
