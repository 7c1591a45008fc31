"""A GET's parameters as a JSON body (functions/http.py `with_body_params`): aiohttp clients,
Airflow's triggerer among them, send them so, and Databricks reads them."""

from __future__ import annotations

import azure.functions as func
import pytest

from functions.http import with_body_params
from shared.errors import InvalidParameterValue, MalformedRequest


def get(body: bytes, params: dict[str, str] | None = None, method: str = "GET") -> func.HttpRequest:
    return func.HttpRequest(
        method,
        "http://127.0.0.1/api/2.2/jobs/runs/get",
        headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        params=params or {},
        route_params={"version": "2.2", "op": "get"},
        body=body,
    )


def test_a_json_body_gives_a_get_its_parameters_as_query_text() -> None:
    body = (
        b'{"run_id": 123, "expand_tasks": true, "page_token": "x", "limit": 2.5,'
        b' "filter_by": {"cluster_states": ["RUNNING", "PENDING"], "is_pinned": false},'
        b' "offset": null}'
    )
    out = with_body_params(get(body))
    assert dict(out.params) == {
        "run_id": "123",
        "expand_tasks": "true",
        "page_token": "x",
        "limit": "2.5",  # the handler's integer rule refuses it, as it would in a query
        "filter_by.cluster_states": "RUNNING,PENDING",
        "filter_by.is_pinned": "false",
    }
    # The rest of the request is unchanged.
    assert out.method == "GET" and out.url.endswith("/jobs/runs/get")
    assert out.headers["authorization"] == "Bearer t"
    assert dict(out.route_params) == {"version": "2.2", "op": "get"}


def test_the_query_string_wins_over_the_body() -> None:
    out = with_body_params(get(b'{"run_id": 1, "limit": 5}', {"run_id": "2"}))
    assert dict(out.params) == {"run_id": "2", "limit": "5"}


@pytest.mark.parametrize("body", [b"", b"  \n", b"{}"])
def test_no_body_leaves_the_query_string_alone(body: bytes) -> None:
    assert dict(with_body_params(get(body, {"run_id": "2"})).params) == {"run_id": "2"}


def test_a_post_is_returned_as_it_is() -> None:
    req = get(b'{"run_id": 1}', method="POST")
    assert with_body_params(req) is req


@pytest.mark.parametrize("body", [b"{", b"[1]", b'"run_id"', b"run_id=1", b"\xff"])
def test_a_body_that_is_not_a_json_object_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedRequest):
        with_body_params(get(body))


def test_a_list_of_objects_is_no_query_parameter() -> None:
    with pytest.raises(InvalidParameterValue, match="run_ids"):
        with_body_params(get(b'{"run_ids": [{"a": 1}]}'))
