"""junction.config.base: the one parameterised number check every number key uses."""

from __future__ import annotations

import math

import pytest
from pydantic_core import PydanticCustomError

from junction.config.base import Number

PERCENT = Number(0, 100, "percent", decimals=2)
SECONDS = Number(0, 86400, "seconds", above_lo=True)
WHOLE = Number(1, 100, "whole", integer=True)


@pytest.mark.parametrize(
    ("number", "value", "expected"),
    [
        (PERCENT, 0, 0.0),
        (PERCENT, 12.34, 12.34),
        (PERCENT, 100, 100.0),
        (SECONDS, 86400, 86400.0),
        (SECONDS, 0.001, 0.001),
        (WHOLE, 1, 1),
        (WHOLE, 100, 100),
    ],
)
def test_accepted_values_come_back_typed(number: Number, value: object, expected: object) -> None:
    out = number(value)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize(
    ("number", "value"),
    [
        (PERCENT, -0.01),
        (PERCENT, 100.01),
        (PERCENT, 12.345),  # three decimals: finer than one bucket
        (PERCENT, True),  # YAML `yes` is not 1
        (PERCENT, "5"),
        (PERCENT, math.nan),
        (PERCENT, math.inf),
        (SECONDS, 0),  # above_lo: 0 seconds is not a timeout
        (SECONDS, 86400.5),
        (WHOLE, 1.0),  # whole numbers only
        (WHOLE, 0),
        (WHOLE, 10**400),  # no OverflowError: just out of range
    ],
)
def test_refused_values_raise_the_message(number: Number, value: object) -> None:
    with pytest.raises(PydanticCustomError) as info:
        number(value)
    assert str(info.value) == number.message
