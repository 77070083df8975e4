"""What every entry point shares: quiet start-up, settings from flags, one-line usage errors.

Commands are thin: flags from a settings dataclass, build it, call one library function. This
module keeps the things they would otherwise each write again:
- `define_flags(Cls)` defines one absl flag per `settings.setting(...)` field of a settings
  dataclass: name, type, default and help all come from the field, so a default is typed once
  and `--helpfull` says it. To add a setting, add one field to the stage's dataclass:
      epochs: int = setting(10, "Training epochs.")
  (bool, int, float, str, `X | None`, enums via `allowed=`, comma lists as tuple[str | int, ...],
  `nested(Cls)` for an embedded settings dataclass; see settings.py);
- `settings_from_flags` builds the dataclass back from those flags and turns a `ConfigError`
  into one `app.UsageError` naming the `--flag` (field -> flag in one place);
- `usage_error` does that for a ConfigError raised later (e.g. after reading the manifest);
- `run` starts absl with a short usage error ("the flag, the value, the fix, see --helpfull")
  instead of absl's default of printing the whole module help before the one useful line, and
  with quiet logs unless --verbosity is given (console.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from typing import Any, Callable, Mapping, NoReturn, TypeVar

from absl import app, flags

from xray_tfdata import console, settings
from xray_tfdata.errors import ConfigError

T = TypeVar("T")
# Flags define_flags makes belong to the command that calls it (its --helpfull section and
# key flags), not to this module: absl skips disclaimed modules when finding the definer.
flags.disclaim_key_flags()


def usage_error(err: ConfigError, flag_names: Mapping[str, str] | None = None) -> app.UsageError:
    """A UsageError naming the flag for `err.field` (`--<field>` unless mapped; an UPPER_CASE
    field is an environment variable such as TF_CONFIG and keeps its name)."""
    if err.field.isupper():
        return app.UsageError(err.describe(err.field))
    name = (flag_names or {}).get(err.field, err.field)
    return app.UsageError(err.describe(f"--{name}"))


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """(the type inside `X | None` and `tuple[X, ...]`, whether it is a list)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if typing.get_origin(annotation) in (tuple, list):
        return args[0], True
    return annotation, False


def _flag_fields(cls: type):
    """(field, its resolved type) for every flag field of `cls`, nested dataclasses included."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("nested"):
            yield from _flag_fields(field.metadata["nested"])
        elif field.metadata.get("help"):
            yield field, hints[field.name]


def define_flags(cls: type, flag_values: flags.FlagValues | None = None,
                 exclude: tuple[str, ...] = ()) -> None:
    """Defines an absl flag for every `settings.setting` field of `cls` (see the docstring)."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    for field, annotation in _flag_fields(cls):
        name = settings.flag_name(field)
        if name in exclude:
            continue
        meta = field.metadata
        default = meta["flag_default"]
        if default is settings.MISSING:
            default = (field.default_factory() if field.default_factory is not dataclasses.MISSING
                       else field.default)
        kind, is_list = _flag_type(annotation)
        args = dict(name=name, help=meta["help"], flag_values=flag_values)
        if is_list:
            flags.DEFINE_list(default=None if default is None else [str(v) for v in default],
                              **args)
        elif meta["allowed"]:
            flags.DEFINE_enum(default=default, enum_values=list(meta["allowed"]),
                              case_sensitive=False, **args)
        elif kind is bool:
            flags.DEFINE_bool(default=default, **args)
        elif kind is int:
            flags.DEFINE_integer(default=default, **args)
        elif kind is float:
            flags.DEFINE_float(default=default, **args)
        elif kind is str:
            flags.DEFINE_string(default=default, **args)
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag type for {annotation!r}")


def _list_value(name: str, values: list[str] | None, kind: type) -> tuple | None:
    if values is None:
        return None
    try:
        return tuple(kind(v) for v in values)
    except ValueError as err:
        what = "integers" if kind is int else f"{kind.__name__} values"
        raise app.UsageError(f"--{name}={','.join(values)} must be a comma-separated list of "
                             f"{what}, e.g. --{name}=1,2,4.") from err


def _values_from_flags(cls: type, flag_values: flags.FlagValues,
                       overrides: Mapping[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif field.metadata.get("nested"):
            nested_cls = field.metadata["nested"]
            values[field.name] = nested_cls(**_values_from_flags(nested_cls, flag_values, {}))
        elif field.metadata.get("help") and settings.flag_name(field) in flag_values:
            name = settings.flag_name(field)
            value = flag_values[name].value
            kind, is_list = _flag_type(hints[field.name])
            values[field.name] = _list_value(name, value, kind) if is_list else value
    return values


def settings_from_flags(cls: type[T], flag_values: flags.FlagValues | None = None,
                        **overrides: Any) -> T:
    """`cls(**{field: FLAGS.<flag>})` for every flag field (nested ones too); `overrides` win.
    A ConfigError (from `cls` or a nested dataclass) becomes a UsageError naming the flag."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    try:
        return cls(**_values_from_flags(cls, flag_values, overrides))
    except ConfigError as err:
        raise usage_error(err, settings.flag_names(cls)) from err


class CommandFailed(Exception):
    """The work itself failed (not a flag): `run` prints `<command>: error: <message>`, exit 1."""


def fail(message: str) -> NoReturn:
    """Ends a command that cannot finish its work; the one way a command reports a failure
    (a bad flag raises app.UsageError instead, which also points to --helpfull)."""
    raise CommandFailed(message)


def _program() -> str:
    return "xray_tfdata." + os.path.splitext(os.path.basename(sys.argv[0]))[0]


def _short_usage(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    def wrapped(argv: list[str]) -> Any:
        console.quiet_python_logs(verbosity_given=flags.FLAGS["verbosity"].present)
        try:
            return main(argv)
        except app.UsageError as err:
            sys.stderr.write(f"{_program()}: error: {err}\nSee --helpfull for every flag.\n")
            sys.exit(err.exitcode)
        except CommandFailed as err:
            sys.stderr.write(f"{_program()}: error: {err}\n")
            sys.exit(1)
    return wrapped


def run(main: Callable[[list[str]], Any]) -> None:
    """`app.run(main)`, with a usage error printed as one message rather than the whole help,
    and a `fail(...)` as one error line with exit status 1."""
    app.run(_short_usage(main))
