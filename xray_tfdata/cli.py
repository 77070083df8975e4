"""What every entry point shares: quiet start-up, settings from flags, one-line usage errors.

Commands are thin: parse flags, build a settings dataclass, call one library function. This
module keeps the three things they would otherwise each write again:
- `settings_from_flags` builds a settings dataclass from the flags of the same names and turns a
  `ConfigError` into one `app.UsageError` naming the `--flag` (field -> flag in one place);
- `usage_error` does that for a ConfigError raised later (e.g. after reading the manifest);
- `run` starts absl with a short usage error ("the flag, the value, the fix, see --helpfull")
  instead of absl's default of printing the whole module help before the one useful line, and
  with quiet logs unless --verbosity is given (console.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Mapping, TypeVar

from absl import app, flags

from xray_tfdata import console
from xray_tfdata.errors import ConfigError

T = TypeVar("T")


def usage_error(err: ConfigError, flag_names: Mapping[str, str] | None = None) -> app.UsageError:
    """A UsageError naming the flag for `err.field` (`--<field>` unless mapped; an UPPER_CASE
    field is an environment variable such as TF_CONFIG and keeps its name)."""
    if err.field.isupper():
        return app.UsageError(err.describe(err.field))
    name = (flag_names or {}).get(err.field, err.field)
    return app.UsageError(err.describe(f"--{name}"))


def settings_from_flags(cls: type[T], flag_values: flags.FlagValues | None = None,
                        flag_names: Mapping[str, str] | None = None, **overrides: Any) -> T:
    """`cls(**{field: FLAGS.<flag>})` for every field that has a flag; `overrides` win."""
    flag_values = flag_values or flags.FLAGS
    flag_names = dict(flag_names or {})
    values = {}
    for field in dataclasses.fields(cls):
        name = flag_names.get(field.name, field.name)
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif name in flag_values:
            values[field.name] = flag_values[name].value
    try:
        return cls(**values)
    except ConfigError as err:
        raise usage_error(err, flag_names) from err


def _short_usage(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    def wrapped(argv: list[str]) -> Any:
        console.quiet_python_logs(verbosity_given=flags.FLAGS["verbosity"].present)
        try:
            return main(argv)
        except app.UsageError as err:
            program = "xray_tfdata." + os.path.splitext(os.path.basename(sys.argv[0]))[0]
            sys.stderr.write(f"{program}: error: {err}\nSee --helpfull for every flag.\n")
            sys.exit(err.exitcode)
    return wrapped


def run(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)`, with a usage error printed as one message rather than the whole help."""
    app.run(_short_usage(main))
