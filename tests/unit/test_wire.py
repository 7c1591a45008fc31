"""The rule for integers in requests (shared/domain/wire.py): a JSON integer or a decimal
integer written as a string, as Databricks accepts and Airflow's operators send them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from shared.domain.wire import INT64_MAX, INT64_MIN, Int, integer, to_int
from shared.errors import InvalidParameterValue


class Model(BaseModel):
    n: Int = 0
    bounded: Int | None = Field(default=None, ge=0, le=10)


@pytest.mark.parametrize(
    ("value", "want"),
    [
        (0, 0),
        (7, 7),
        (-1, -1),
        ("7", 7),
        ("600", 600),
        ("-1", -1),
        ("0", 0),
        ("007", 7),
        (str(INT64_MAX), INT64_MAX),
        (str(INT64_MIN), INT64_MIN),
        (INT64_MAX + 1, INT64_MAX + 1),  # to_int reads; the bounds are the callers'
    ],
)
def test_integers_and_decimal_strings_stand_for_their_integer(value: Any, want: int) -> None:
    assert to_int(value) == want


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        1.0,
        1.5,
        None,
        [1],
        {"n": 1},
        "",
        " ",
        "1.5",
        "1.0",
        "abc",
        " 1",
        "1 ",
        "1\n",
        "+1",
        "1e3",
        "1_000",
        "0x10",
        "\u0663",  # an Arabic-Indic digit three: int() reads it, the API does not
        "\uff11",  # a fullwidth digit one
        "1" * 20,  # beyond int64 however it is signed
        "9" * 5000,  # beyond what int() parses at all
    ],
)
def test_anything_else_stands_for_no_integer(value: Any) -> None:
    assert to_int(value) is None


def test_the_model_type_stores_the_integer_of_a_decimal_string() -> None:
    m = Model.model_validate({"n": "600", "bounded": "3"})
    assert (m.n, m.bounded) == (600, 3)
    assert m.model_dump(mode="json") == {"n": 600, "bounded": 3}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"n": "1.5"}, "valid integer"),
        ({"n": "abc"}, "valid integer"),
        ({"n": ""}, "valid integer"),
        ({"n": True}, "valid integer"),
        ({"n": 1.0}, "valid integer"),
        ({"n": str(INT64_MAX + 1)}, "less than or equal to"),
        ({"n": INT64_MIN - 1}, "greater than or equal to"),
        ({"n": "1" * 20}, "valid integer"),
        ({"bounded": "11"}, "less than or equal to 10"),
        ({"bounded": "-1"}, "greater than or equal to 0"),
    ],
)
def test_the_model_type_refuses_garbage_and_keeps_the_fields_bounds(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        Model.model_validate(body)


def test_integer_checks_the_bounds_and_names_the_field() -> None:
    assert integer("5", "limit", 1, 10) == 5
    assert integer(5, "limit", 1, 10) == 5
    with pytest.raises(InvalidParameterValue, match=r"^limit must be an integer\.$"):
        integer("5.0", "limit", 1, 10)
    with pytest.raises(InvalidParameterValue, match=r"^limit must be between 1 and 10\.$"):
        integer("11", "limit", 1, 10)
    with pytest.raises(InvalidParameterValue, match="between"):
        integer(str(INT64_MAX + 1), "start_time")
