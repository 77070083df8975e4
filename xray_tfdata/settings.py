"""How a settings dataclass describes its command-line flags: one field, one flag.

Each stage's frozen settings dataclass (TrainConfig, ConversionConfig, EvalConfig, ...) declares
a field with `setting(default, "help text")`; cli.define_flags turns every such field into an
absl flag of the same name, type and default, and cli.settings_from_flags reads it back. Plain
library code (no absl here), so a settings module stays importable from a notebook.

Adding a setting is one field:

    image_size: int = setting(224, "Output is size x size.")
    resize_mode: str = setting("stretch", "How images are resized.", allowed=RESIZE_MODES)
    workers: tuple[int, ...] = setting((1, 2), "Worker counts.")          # --workers=1,2
    weights: str | None = setting(None, "A weights file; unset: random.")

The flag's type follows the annotation: bool, int, float, str (an enum with `allowed`),
`X | None`, and tuples/lists of str or int (comma lists). `flag=` renames the flag (kept for
command lines that predate the field's name); `flag_default=` gives a required field a flag
default. A field without help is no flag (library-only). `nested(Cls)` embeds another settings
dataclass whose flags keep their own names (TrainConfig nests the input pipeline's InputConfig).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, help: str = "", *,  # noqa: A002  (absl's word)
            allowed: tuple[Any, ...] = (), flag: str = "", flag_default: Any = MISSING,
            default_factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A dataclass field that is also a command-line flag (see the module docstring)."""
    metadata = {"help": help, "allowed": tuple(allowed), "flag": flag,
                "flag_default": flag_default}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(cls: type, **kwargs: Any) -> Any:
    """A field holding another settings dataclass (built from its defaults, or `kwargs`)."""
    return dataclasses.field(default_factory=lambda: cls(**kwargs), metadata={"nested": cls})


def flag_name(field: dataclasses.Field) -> str:
    """The flag a field is set by: its `flag=` override, else the field's own name."""
    return field.metadata.get("flag") or field.name


def flag_names(cls: type) -> dict[str, str]:
    """field name -> flag name for every flag field of `cls` and of the dataclasses it nests
    (an error about a field can then name the flag the user typed)."""
    names: dict[str, str] = {}
    for field in dataclasses.fields(cls):
        if field.metadata.get("nested"):
            names.update(flag_names(field.metadata["nested"]))
        elif field.metadata.get("help"):
            names[field.name] = flag_name(field)
    return names


def from_flat(cls: type, **values: Any) -> Any:
    """`cls(**values)` with values named as their flags are, nested fields included:
    from_flat(TrainConfig, epochs=2, global_batch_size=8) sets input.global_batch_size, just as
    `--epochs=2 --global_batch_size=8` does. The outer fields claim a name first (TrainConfig's
    seed, not its InputConfig's). An unknown name is a TypeError, as in `cls(...)`."""
    rest = dict(values)
    kwargs: dict[str, Any] = {}
    nested_fields = []
    for field in dataclasses.fields(cls):
        for name in (field.name, field.metadata.get("flag")):
            if name and name in rest:
                kwargs[field.name] = rest.pop(name)
        if field.metadata.get("nested") and field.name not in kwargs:
            nested_fields.append(field)
    for field in nested_fields:
        inner = field.metadata["nested"]
        names = {f.name for f in dataclasses.fields(inner)} | set(flag_names(inner).values())
        kwargs[field.name] = from_flat(inner, **{k: rest.pop(k) for k in list(rest)
                                                 if k in names})
    if rest:
        raise TypeError(f"{cls.__name__}: unknown settings {sorted(rest)}")
    return cls(**kwargs)


def to_flat(obj: Any) -> dict[str, Any]:
    """flag name -> value for every flag field of a settings dataclass instance, nested ones
    included (the inverse of from_flat): what the user set, named as they typed it."""
    flat: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if field.metadata.get("nested"):
            flat.update(to_flat(value))
        elif field.metadata.get("help"):
            flat[flag_name(field)] = value
    return flat
