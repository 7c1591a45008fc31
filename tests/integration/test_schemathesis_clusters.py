"""Generated requests for the operations of the clusters API in `docs/openapi.yaml` (the other
operations are in test_schemathesis.py), against a devhost of this module's own; then the devhost
must still be healthy. tests/integration/fuzzing.py says what is sent and checked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis

from tests.integration.fuzzing import (
    CLUSTERS_API,
    Target,
    assert_left_healthy,
    call_and_check,
    fuzz_target,
    load_schema,
)

schema = schemathesis.pytest.from_fixture("api_schema").include(path_regex=CLUSTERS_API)


@pytest.fixture(scope="module")
def api_schema() -> Any:
    return load_schema()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    yield from fuzz_target(tmp_path_factory)


@schema.parametrize()
def test_api_conforms_to_its_openapi_document(case: Any, target: Target) -> None:
    call_and_check(case, target)


def test_fuzzing_left_the_devhost_healthy(target: Target) -> None:
    """After the generated requests: the devhost is alive, answers, stayed within its memory
    bound, and neither a request nor a background function failed on what was stored."""
    assert_left_healthy(target)
