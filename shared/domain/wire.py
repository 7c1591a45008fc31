"""How a request may write an integer: the one rule every integer field of a request follows.

An integer is a JSON integer or a decimal integer written as a string (`"num_workers": "1"`):
Databricks accepts both, and Apache Airflow's Databricks operators send every number as a string
(`normalise_json_content`). What is stored and answered is the integer. Refused: a boolean, a
number with a fraction (1.5, and 1.0 as well), text that is not a plain decimal integer ("1.5",
"abc", "", " 1", "+1", "1e3", "1_000", digits of other scripts) and anything outside int64 (a
field's own bounds narrow that). Booleans are not widened the same way: the operators send them
as JSON booleans.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from annotated_types import Ge, Le
from pydantic import BeforeValidator, Strict

from shared.errors import InvalidParameterValue

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# ASCII digits only (\d also matches other scripts' digits); int64 needs at most 19 of them.
DECIMAL = re.compile(r"-?[0-9]{1,19}")


def to_int(value: Any) -> int | None:
    """The integer a request value stands for: a JSON integer or a decimal string (None: it
    stands for no integer; a boolean is not one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and DECIMAL.fullmatch(value):
        return int(value)
    return None


def _as_int(value: Any) -> Any:
    n = to_int(value)
    # Anything else goes on unchanged, for the strict integer check to refuse.
    return value if n is None else n


Int = Annotated[int, BeforeValidator(_as_int), Strict(), Ge(INT64_MIN), Le(INT64_MAX)]
"""An integer field of a request model (pydantic): the rule above; Field(ge=, le=) narrows it."""


def integer(value: Any, name: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """A request value that must be an integer in [lo, hi] (else INVALID_PARAMETER_VALUE)."""
    n = to_int(value)
    if n is None:
        raise InvalidParameterValue(f"{name} must be an integer.")
    if not lo <= n <= hi:
        raise InvalidParameterValue(f"{name} must be between {lo} and {hi}.")
    return n
