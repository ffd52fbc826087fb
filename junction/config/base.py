"""What every model of a Junction document shares: the base model, names, numbers.

The bottom of :mod:`junction.config` (it imports nothing of Junction): :mod:`model` and
:mod:`decisions` both build on it, so neither imports the other's private helpers.

- :class:`Model`: kebab-case keys, unknown keys rejected, frozen.
- :class:`Number`: one parameterised number check (bounds, whole or not, decimals) with
  the message a user sees, e.g. ``Annotated[float, BeforeValidator(Number(0, 1, "must be
  a fraction 0..1 (0.05 is 5 %)"))]``. Bools are never numbers (YAML ``yes`` is not 1),
  nor are NaN and infinities.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic_core import PydanticCustomError

__all__ = [
    "CLUSTER_NAME",
    "Model",
    "Number",
    "Seconds",
    "check_names",
    "int_in",
    "kebab",
]

#: Consul service names (and so cluster names): DNS-label-like, as Consul recommends.
CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def kebab(name: str) -> str:
    """The YAML key of a field: ``max_age`` is written ``max-age``."""
    return name.replace("_", "-")


class Model(BaseModel):
    """The base of every document model: kebab-case keys, unknown keys rejected, frozen."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=kebab, populate_by_name=True
    )


def check_names(names: Mapping[str, Any], what: str) -> None:
    """Raise (a pydantic error naming the key) unless every name is a Consul service name."""
    for name in names:
        if not CLUSTER_NAME.match(name):
            raise PydanticCustomError(
                "junction",
                f"{what} name {name!r} must be letters, digits, '.', '_' or '-' "
                "(a Consul service name)",
            )


@dataclass(frozen=True, slots=True)
class Number:
    """A number in ``[lo, hi]`` (open at ``lo`` with ``above_lo``, at ``hi`` with
    ``below_hi``), else ``message``.

    ``integer``: whole numbers only, returned as they are; otherwise ints and floats are
    accepted and returned as float. ``decimals``: at most that many decimal places (a
    weight of 0.01 % is one bucket of 10000). Use it as a pydantic before-validator.
    """

    lo: float
    hi: float
    message: str
    integer: bool = False
    above_lo: bool = False
    decimals: int | None = None
    below_hi: bool = False

    def __call__(self, value: Any) -> Any:
        if not self.accepts(value):
            raise PydanticCustomError("junction", self.message)
        return value if self.integer else float(value)

    def accepts(self, value: Any) -> bool:
        kinds = int if self.integer else int | float
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        low_ok = self.lo < value if self.above_lo else self.lo <= value
        high_ok = value < self.hi if self.below_hi else value <= self.hi
        if not (low_ok and high_ok):
            return False
        if self.decimals is None:
            return True
        scaled = value * 10**self.decimals
        return bool(abs(scaled - round(scaled)) <= 1e-6)


def int_in(lo: int, hi: int) -> BeforeValidator:
    """An int in [lo, hi]; bools and floats are refused (YAML ``yes`` is not a port)."""
    return BeforeValidator(Number(lo, hi, f"must be an integer {lo}..{hi}", integer=True))


Seconds = Annotated[
    float,
    BeforeValidator(Number(0, 86400, "must be a number of seconds, 0 < s <= 86400", above_lo=True)),
]
