"""The one error type for bad settings, shared by every stage's settings dataclass.

Each settings dataclass validates itself in `__post_init__` and raises `ConfigError` naming the
field, the value it received, what is allowed and, where there is one, the fix, in Keras's
"Received: ..." style. Entry points turn it into a usage error that names the flag
(`cli.usage_error`), so the library never needs to know flag names.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is out of range: carries the field, the value, what is allowed and the fix."""

    def __init__(self, field: str, value: Any, allowed: str, fix: str = "") -> None:
        self.field, self.value, self.allowed, self.fix = field, value, allowed, fix
        super().__init__(self.describe(field))

    def describe(self, name: str) -> str:
        """The message with the setting called `name` (a field name, or `--flag` at the CLI)."""
        message = f"{name} must be {self.allowed}. Received: {name}={self.value!r}."
        return f"{message} {self.fix}" if self.fix else message


def positive_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, value, "an integer >= 1")


def non_negative_int(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(field, value, "an integer >= 0")


def in_range(field: str, value: Any, low: float, high: float, *, closed_high: bool = True,
             allowed: str = "") -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
          and (value <= high if closed_high else value < high))
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ConfigError(field, value, allowed or f"a number in [{low}, {high}{bracket}")


def one_of(field: str, value: Any, allowed: tuple[str, ...] | list[str], fix: str = "") -> None:
    if value not in allowed:
        raise ConfigError(field, value, "one of " + ", ".join(map(str, allowed)), fix)
