"""The instance pool rule and request validation (pure)."""

from __future__ import annotations

import pytest

from shared.domain import pools
from shared.domain.pools import Pool, PoolSpec
from shared.errors import InvalidParameterValue
from shared.ports import PoolNode

MIN = 60_000


def pool(**spec: object) -> Pool:
    base = {"instance_pool_name": "p", "node_type_id": "n", **spec}
    return Pool(instance_pool_id="P", workspace_id="w", spec=PoolSpec.model_validate(base))


def node(i: int, status: str, idle_since: int = 0, cluster: str = "") -> PoolNode:
    return PoolNode(f"n{i}", status, cluster_id=cluster, idle_since_ms=idle_since)  # type: ignore[arg-type]


def test_an_empty_pool_starts_its_min_idle_nodes() -> None:
    p = pools.plan(pool(min_idle_instances=2), [], now=0)
    assert (p.add_idle, p.remove_idle, p.requeue) == (2, [], True)


def test_max_capacity_bounds_the_idle_top_up_counting_used_nodes() -> None:
    nodes = [node(1, "USED", cluster="c"), node(2, "PENDING_USED", cluster="c")]
    p = pools.plan(pool(min_idle_instances=2, max_capacity=3), nodes, now=0)
    assert p.add_idle == 1
    full = [*nodes, node(3, "IDLE")]
    assert pools.plan(pool(min_idle_instances=2, max_capacity=3), full, now=0).add_idle == 0


def test_nodes_being_removed_do_not_count_toward_capacity_or_idle() -> None:
    nodes = [node(1, "STOPPING"), node(2, "STOPPING")]
    p = pools.plan(pool(min_idle_instances=2, max_capacity=2), nodes, now=0)
    assert p.add_idle == 2


def test_extra_idle_nodes_go_after_the_idle_timeout_longest_idle_first() -> None:
    nodes = [node(1, "IDLE", idle_since=0), node(2, "IDLE", idle_since=5 * MIN), node(3, "IDLE")]
    spec = {"min_idle_instances": 1, "idle_instance_autotermination_minutes": 10}
    assert pools.plan(pool(**spec), nodes, now=9 * MIN).remove_idle == []
    # two extra; n1 and n3 idle since 0 have expired at 10 min, n2 not yet
    assert pools.plan(pool(**spec), nodes, now=10 * MIN).remove_idle == ["n1", "n3"]
    assert pools.plan(pool(**spec), nodes, now=15 * MIN).remove_idle == ["n1", "n3"]


def test_zero_minutes_removes_extra_idle_nodes_at_once_and_min_idle_is_kept() -> None:
    nodes = [node(i, "IDLE", idle_since=100) for i in range(4)]
    spec = {"min_idle_instances": 3, "idle_instance_autotermination_minutes": 0}
    assert len(pools.plan(pool(**spec), nodes, now=100).remove_idle) == 1


def test_the_default_idle_timeout_is_sixty_minutes() -> None:
    nodes = [node(1, "IDLE", idle_since=0)]
    assert pools.plan(pool(), nodes, now=59 * MIN).remove_idle == []
    assert pools.plan(pool(), nodes, now=60 * MIN).remove_idle == ["n1"]


def test_a_pending_idle_node_is_never_expired_and_lost_idle_nodes_are_removed() -> None:
    nodes = [node(1, "PENDING_IDLE", idle_since=0), node(2, "LOST")]
    p = pools.plan(pool(idle_instance_autotermination_minutes=0), nodes, now=10 * MIN)
    assert p.remove_idle == ["n2"]
    assert p.requeue


def test_a_deleted_pool_removes_idle_nodes_and_waits_for_used_ones() -> None:
    nodes = [node(1, "IDLE"), node(2, "PENDING_IDLE"), node(3, "USED", cluster="c")]
    p = pools.plan(pool(min_idle_instances=3).model_copy(update={"state": "DELETED"}), nodes, now=0)
    assert sorted(p.remove_idle) == ["n1", "n2"]
    assert (p.add_idle, p.gone, p.requeue) == (0, False, True)
    gone = pools.plan(pool().model_copy(update={"state": "DELETED"}), [], now=0)
    assert gone.gone and not gone.requeue


def test_a_settled_pool_needs_no_follow_up() -> None:
    nodes = [node(1, "IDLE"), node(2, "USED", cluster="c")]
    p = pools.plan(pool(min_idle_instances=1), nodes, now=0)
    assert (p.add_idle, p.remove_idle, p.requeue) == (0, [], False)


def test_stats_count_returning_nodes_as_pending_idle() -> None:
    nodes = [
        node(1, "IDLE"),
        node(2, "PENDING_IDLE"),
        node(3, "RETURNING", cluster="c"),
        node(4, "USED", cluster="c"),
        node(5, "PENDING_USED", cluster="c"),
        node(6, "STOPPING"),
    ]
    assert pools.stats(nodes) == {
        "used_count": 1,
        "idle_count": 1,
        "pending_used_count": 1,
        "pending_idle_count": 2,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"node_type_id": "n"}, "Missing required field: instance_pool_name"),
        ({"instance_pool_name": "p"}, "Missing required field: node_type_id"),
        ({"instance_pool_name": "p", "node_type_id": "x"}, "Node type x is not supported"),
        (
            {
                "instance_pool_name": "p",
                "node_type_id": "n",
                "min_idle_instances": 3,
                "max_capacity": 2,
            },
            "must not exceed max_capacity",
        ),
        # A number as a decimal string is one (Databricks, Airflow); anything else is not.
        *(
            (
                {"instance_pool_name": "p", "node_type_id": "n", "min_idle_instances": v},
                "min_idle_instances",
            )
            for v in ("2.5", "two", "", True, 2.0)
        ),
        (
            {"instance_pool_name": "p", "node_type_id": "n", "max_capacity": "10001"},
            "max_capacity",
        ),
        (
            {"instance_pool_name": "p", "node_type_id": "n", "max_capacity": 0},
            "max_capacity",
        ),
        (
            {"instance_pool_name": "p", "node_type_id": "n", "preloaded_spark_versions": ["9"]},
            "Invalid spark version 9",
        ),
        ({"instance_pool_name": "x" * 101, "node_type_id": "n"}, "instance_pool_name"),
        # regression: lax booleans (0, "yes", "off") were accepted
        *(
            (
                {"instance_pool_name": "p", "node_type_id": "n", "enable_elastic_disk": v},
                "enable_elastic_disk",
            )
            for v in (0, 1, "yes", "off", "true")
        ),
    ],
)
def test_bad_requests_are_refused_with_the_field_named(body: dict, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        pools.parse_spec(body, node_types={"n"}, spark_versions={"v"})


def test_server_fields_in_a_request_are_ignored_and_unknown_ones_kept() -> None:
    spec = pools.parse_spec(
        {
            "instance_pool_name": "p",
            "node_type_id": "n",
            "stats": {"idle_count": 99},
            "state": "DELETED",
            "azure_attributes": {"availability": "SPOT_AZURE"},
        },
        node_types={"n"},
        spark_versions=set(),
    )
    assert "stats" not in spec.wire() and "state" not in spec.wire()
    assert spec.wire()["azure_attributes"] == {"availability": "SPOT_AZURE"}


def test_pool_ids_have_the_databricks_shape() -> None:
    pid = pools.new_pool_id(0)
    assert pid.startswith("0101-000000-") and "-pool-" in pid


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Missing required field: instance_pool_id"),
        ("", "Missing required field: instance_pool_id"),
        (5, "instance_pool_id: must be a string"),
    ],
)
def test_bad_pool_ids_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        pools.pool_id_of(value)
    assert pools.pool_id_of("0101-000000-abc-pool-x") == "0101-000000-abc-pool-x"


def test_numbers_sent_as_strings_are_stored_as_numbers() -> None:
    """Airflow's operators send every number as a string; Databricks accepts them."""
    spec = pools.parse_spec(
        {
            "instance_pool_name": "p",
            "node_type_id": "n",
            "min_idle_instances": "2",
            "max_capacity": "4",
            "idle_instance_autotermination_minutes": "0",
        },
        node_types={"n"},
        spark_versions=set(),
    )
    wire = spec.wire()
    assert (wire["min_idle_instances"], wire["max_capacity"]) == (2, 4)
    assert wire["idle_instance_autotermination_minutes"] == 0
