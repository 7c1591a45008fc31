"""The Serverless Pool profile and the local-storage autoscaling rule."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.domain import serverless, storage
from shared.domain.cluster import AutoScale, ClusterSpec, parse_spec, validate_spec
from shared.domain.storage import DiskReport, StorageParams
from shared.errors import InvalidParameterValue
from shared.ports import NodeType

SMALL = NodeType("local-small", 1, 1024, "1 core")
MEDIUM = NodeType("local-medium", 2, 2048, "2 cores")
LARGE = NodeType("local-large", 4, 4096, "4 cores")
TYPES = {t.node_type_id: t for t in (SMALL, MEDIUM, LARGE)}


def body(**kw: Any) -> dict[str, Any]:
    return {
        "spark_version": "",
        "cluster_name": "shared",
        "node_type_id": "local-medium",
        "autoscale": {"min_workers": 1, "max_workers": 4},
        "spark_conf": {"spark.databricks.cluster.profile": "serverless"},
        **kw,
    }


def prep(spec: ClusterSpec) -> ClusterSpec:
    worker = TYPES[spec.node_type_id or "local-medium"]
    driver = TYPES[spec.driver_node_type_id] if spec.driver_node_type_id else None
    return serverless.prepare(spec, worker=worker, driver=driver, default_spark_version="4.1.x")


# -- serverless ------------------------------------------------------------------------------


def test_is_serverless_by_profile_or_tag() -> None:
    assert serverless.is_serverless(parse_spec(body()))
    tagged = parse_spec(body(spark_conf={}, custom_tags={"ResourceClass": "Serverless"}))
    assert serverless.is_serverless(tagged)
    assert not serverless.is_serverless(parse_spec(body(spark_conf={})))
    other = {"spark.databricks.cluster.profile": "singleNode"}
    assert not serverless.is_serverless(parse_spec(body(spark_conf=other)))
    assert serverless.PROFILE_KEY == "spark.databricks.cluster.profile"
    # The same test on a raw body (before parsing; spark_version may be missing).
    assert serverless.is_serverless_body({"spark_conf": {serverless.PROFILE_KEY: "serverless"}})
    assert serverless.is_serverless_body({"custom_tags": {"ResourceClass": "Serverless"}})
    assert not serverless.is_serverless_body({"custom_tags": {"ResourceClass": "Standard"}})
    assert not serverless.is_serverless_body({"spark_conf": "serverless", "custom_tags": None})


def test_prepare_fills_the_profile() -> None:
    user_conf = {
        "spark.databricks.cluster.profile": "serverless",
        "spark.sql.ansi.enabled": "false",
        # Owned by the profile: replaced.
        "spark.scheduler.mode": "FIFO",
        "spark.executor.memory": "100g",
    }
    spec = prep(parse_spec(body(spark_conf=user_conf, custom_tags={"team": "a"})))
    assert spec.spark_version == "4.1.x"
    assert spec.node_type_id == "local-medium"
    assert spec.driver_node_type_id == "local-medium"
    assert spec.autotermination_minutes == 120
    assert spec.enable_elastic_disk is True
    assert spec.custom_tags == {"team": "a", "ResourceClass": "Serverless"}
    assert spec.autoscale == AutoScale(min_workers=1, max_workers=4)
    assert spec.num_workers is None
    assert spec.spark_conf == {
        "spark.databricks.cluster.profile": "serverless",
        "spark.sql.ansi.enabled": "false",
        "spark.scheduler.mode": "FAIR",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.skewJoin.enabled": "true",
        "spark.sql.shuffle.partitions": "16",  # 2 x 4 workers x 2 cores
        "spark.executor.cores": "2",
        "spark.executor.memory": "1664m",  # 2048 - 384
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.timeout": "300s",
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": "4",
        "spark.dynamicAllocation.executorIdleTimeout": "60s",
        "spark.dynamicAllocation.schedulerBacklogTimeout": "1s",
    }
    # The result is a valid cluster spec.
    checked = validate_spec(spec, node_types=set(TYPES), spark_versions={"4.1.x"})
    assert checked == spec


def test_prepare_keeps_what_the_user_set() -> None:
    spec = prep(
        parse_spec(
            body(
                spark_version="4.0.x",
                driver_node_type_id="local-large",
                autotermination_minutes=0,
                enable_elastic_disk=False,
                spark_conf={},
                custom_tags={"ResourceClass": "Serverless"},
            )
        )
    )
    assert spec.spark_version == "4.0.x"
    assert spec.driver_node_type_id == "local-large"
    assert spec.autotermination_minutes == 0  # disabled stays disabled
    assert spec.enable_elastic_disk is True  # a serverless pool always has elastic disk
    assert spec.spark_conf["spark.databricks.cluster.profile"] == "serverless"
    spec2 = prep(parse_spec(body(autotermination_minutes=30)))
    assert spec2.autotermination_minutes == 30


def test_fixed_size_pool_based_and_unsized_specs_are_refused() -> None:
    with pytest.raises(InvalidParameterValue, match=r"sized by autoscale only.*num_workers"):
        prep(parse_spec(body(autoscale=None, num_workers=2)))
    with pytest.raises(InvalidParameterValue, match=r"sized by autoscale only.*num_workers"):
        prep(parse_spec(body(num_workers=0)))
    with pytest.raises(InvalidParameterValue, match="needs autoscale"):
        prep(parse_spec(body(autoscale=None)))
    with pytest.raises(
        InvalidParameterValue, match=r"cannot be combined with an instance pool.*instance_pool_id"
    ):
        prep(parse_spec(body(instance_pool_id="pool-1")))
    with pytest.raises(InvalidParameterValue, match="driver_instance_pool_id"):
        prep(parse_spec(body(driver_instance_pool_id="pool-1")))
    with pytest.raises(InvalidParameterValue) as err:
        prep(parse_spec(body(instance_pool_id="pool-1")))
    assert err.value.body() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "A Serverless Pool cannot be combined with an instance pool: "
        "remove instance_pool_id.",
    }


def test_prepare_refuses_node_types_that_do_not_match_the_spec() -> None:
    spec = parse_spec(body())
    with pytest.raises(ValueError, match="worker is local-large"):
        serverless.prepare(spec, worker=LARGE, driver=None, default_spark_version="4.1.x")
    spec = parse_spec(body(driver_node_type_id="local-small"))
    with pytest.raises(ValueError, match="driver is local-large"):
        serverless.prepare(spec, worker=MEDIUM, driver=LARGE, default_spark_version="4.1.x")


def test_executor_sizing_edges() -> None:
    tiny = NodeType("tiny", 0.5, 512, "")
    conf = serverless.spark_conf(tiny, 1)
    assert conf["spark.executor.cores"] == "1"  # at least one core
    assert conf["spark.executor.memory"] == "256m"  # 512 - 384 = 128, raised to the floor
    assert conf["spark.sql.shuffle.partitions"] == "8"  # 2 x 1 core, raised to the floor
    big = NodeType("big", 16.0, 65536, "")
    conf = serverless.spark_conf(big, 10)
    assert conf["spark.executor.cores"] == "16"
    assert conf["spark.executor.memory"] == f"{65536 - 6553}m"  # 10% > 384 MiB
    assert conf["spark.sql.shuffle.partitions"] == "320"
    assert conf["spark.dynamicAllocation.maxExecutors"] == "10"
    # Fractional cores round down: the executor never asks for more than the worker offers.
    assert serverless.spark_conf(NodeType("x", 2.5, 4096, ""), 1)["spark.executor.cores"] == "2"
    assert serverless.spark_conf(LARGE, 3)["spark.executor.memory"] == "3687m"  # 4096 - 409


node_types = st.builds(
    NodeType,
    node_type_id=st.sampled_from(["a", "b", "c"]),
    num_cores=st.sampled_from([0.5, 1.0, 2.0, 3.5, 4.0, 8.0, 64.0]),
    memory_mb=st.integers(min_value=256, max_value=512 * 1024),
    description=st.just(""),
)


@st.composite
def specs(draw: st.DrawFn) -> tuple[ClusterSpec, NodeType, NodeType | None]:
    worker = draw(node_types)
    driver = draw(st.none() | node_types)
    lo = draw(st.integers(min_value=0, max_value=50))
    hi = draw(st.integers(min_value=lo + 1, max_value=200))
    user_conf = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "spark.sql.ansi.enabled",
                    "spark.executor.memory",
                    "spark.dynamicAllocation.maxExecutors",
                    "spark.scheduler.mode",
                ]
            ),
            st.sampled_from(["1", "x", "true"]),
        )
    )
    marker = draw(st.sampled_from(["conf", "tag"]))
    tags = {"ResourceClass": "Serverless"} if marker == "tag" else {}
    if marker == "conf":
        user_conf[serverless.PROFILE_KEY] = "serverless"
    spec = ClusterSpec(
        spark_version=draw(st.sampled_from(["", "4.1.x"])),
        node_type_id=draw(st.sampled_from([None, worker.node_type_id])),
        driver_node_type_id=driver.node_type_id if driver is not None else None,
        autoscale=AutoScale(min_workers=lo, max_workers=hi),
        autotermination_minutes=draw(st.sampled_from([None, 0, 10, 120, 500])),
        enable_elastic_disk=draw(st.sampled_from([None, True, False])),
        spark_conf=user_conf,
        custom_tags=tags,
    )
    return spec, worker, driver


def _prep(spec: ClusterSpec, worker: NodeType, driver: NodeType | None) -> ClusterSpec:
    return serverless.prepare(spec, worker=worker, driver=driver, default_spark_version="9.9.x")


@given(specs(), node_types, st.integers(min_value=1, max_value=300))
def test_prepare_is_idempotent_also_after_changes(
    case: tuple[ClusterSpec, NodeType, NodeType | None], new_worker: NodeType, new_max: int
) -> None:
    spec, worker, driver = case
    once = _prep(spec, worker, driver)
    assert serverless.is_serverless(once)
    assert _prep(once, worker, driver) == once
    # The driver type is fixed by the first prepare (None -> the spec's own field from now on).
    assert _prep(once, worker, None) == once

    # Change the node type and max_workers of the prepared spec: the derived keys follow, as if
    # the user had sent the changed spec in the first place.
    lo = min(once.autoscale.min_workers if once.autoscale else 0, new_max - 1)
    change = {
        "node_type_id": new_worker.node_type_id,
        "autoscale": AutoScale(min_workers=lo, max_workers=new_max),
    }
    again = _prep(once.model_copy(update=change), new_worker, None)
    fresh = _prep(spec.model_copy(update=change), new_worker, driver)
    assert again.spark_conf == fresh.spark_conf
    derived = serverless.spark_conf(new_worker, new_max)
    assert {k: again.spark_conf[k] for k in derived} == derived
    assert again.model_copy(update={"driver_node_type_id": None}) == fresh.model_copy(
        update={"driver_node_type_id": None}
    )
    assert _prep(again, new_worker, None) == again


def test_fair_scheduler_file() -> None:
    xml = serverless.fair_scheduler_xml()
    root = ET.fromstring(xml)
    assert root.tag == "allocations"
    pools = root.findall("pool")
    assert [p.get("name") for p in pools] == ["default"]
    (pool,) = pools
    assert pool.findtext("schedulingMode") == "FAIR"
    assert pool.findtext("weight") == "1"
    assert pool.findtext("minShare") == "0"
    assert serverless.FAIR_SCHEDULER_FILE == "fairscheduler.xml"
    assert serverless.conf_files(prep(parse_spec(body()))) == {"fairscheduler.xml": xml}
    assert serverless.conf_files(parse_spec(body(spark_conf={}, num_workers=1))) == {}


# -- storage ---------------------------------------------------------------------------------

GiB = storage.GiB
P = StorageParams(grow_at_fraction=0.7, min_step_bytes=10 * GiB, max_total_bytes=100 * GiB)


def rep(used: int, total: int) -> DiskReport:
    return DiskReport(node_id="n1", used_bytes=used, total_bytes=total, ts_ms=1)


def test_elastic() -> None:
    assert storage.elastic(parse_spec(body(enable_elastic_disk=True)))
    assert not storage.elastic(parse_spec(body(enable_elastic_disk=False)))
    assert not storage.elastic(parse_spec(body()))
    assert storage.elastic(prep(parse_spec(body())))


def test_defaults() -> None:
    d = StorageParams()
    assert d.grow_at_fraction == 0.7 and d.max_total_bytes == 5 * storage.TiB
    assert d.step(0) == d.min_step_bytes and d.step(10 * d.min_step_bytes) == 10 * d.min_step_bytes
    with pytest.raises(ValueError):
        StorageParams(grow_at_fraction=0)
    with pytest.raises(ValueError):
        StorageParams(min_step_bytes=0)
    with pytest.raises(ValueError):
        rep(-1, 10)


def test_below_threshold_nothing_to_do() -> None:
    d = storage.decide(rep(6 * GiB, 10 * GiB), None, P)
    assert d == storage.StorageDecision(
        grow_to=None, at_limit=False, reapply=False, free_bytes=4 * GiB
    )
    assert d.ask_bytes(None) is None


def test_exactly_at_threshold_grows_by_min_step_or_doubling() -> None:
    # 7 of 10 is exactly 0.7 (no floating-point miss: 0.7 * 10 == 7.000000000000001).
    d = storage.decide(rep(7, 10), None, P)
    assert d.grow_to == 10 + 10 * GiB  # the min step
    assert storage.decide(rep(6, 10), None, P).grow_to is None
    d = storage.decide(rep(14 * GiB, 20 * GiB), None, P)
    assert d.grow_to == 40 * GiB  # doubling
    assert d.free_bytes == 6 * GiB and not d.at_limit and not d.reapply
    assert d.ask_bytes(None) == 40 * GiB


def test_growth_is_capped_then_at_limit() -> None:
    d = storage.decide(rep(60 * GiB, 80 * GiB), None, P)
    assert d.grow_to == 100 * GiB and not d.at_limit
    d = storage.decide(rep(90 * GiB, 100 * GiB), None, P)
    assert d.grow_to is None and d.at_limit and d.free_bytes == 10 * GiB
    # Below the threshold at the limit is no news.
    d = storage.decide(rep(10 * GiB, 100 * GiB), None, P)
    assert not d.at_limit and d.grow_to is None
    # A node bigger than the limit (made before the limit was lowered) is at the limit too.
    assert storage.decide(rep(150 * GiB, 200 * GiB), None, P).at_limit
    # The target counts: the growth asked for already reached the limit.
    d = storage.decide(rep(75 * GiB, 80 * GiB), 100 * GiB, P)
    assert d.at_limit and d.grow_to is None and d.reapply
    assert d.ask_bytes(100 * GiB) == 100 * GiB


def test_target_above_report_reapplies_and_counts() -> None:
    # The last growth (to 40) has not landed: ask again, and do not grow on the old size.
    d = storage.decide(rep(15 * GiB, 20 * GiB), 40 * GiB, P)
    assert d.reapply and d.grow_to is None and d.free_bytes == 5 * GiB
    assert d.ask_bytes(40 * GiB) == 40 * GiB
    # Full even for the pending size: grow beyond it.
    d = storage.decide(rep(28 * GiB, 20 * GiB), 40 * GiB, P)
    assert d.reapply and d.grow_to == 80 * GiB and d.free_bytes == 0
    # Landed (the node reports the target or more): nothing to reapply.
    d = storage.decide(rep(15 * GiB, 40 * GiB), 40 * GiB, P)
    assert not d.reapply and d.grow_to is None
    # An old target below the reported size does not count.
    d = storage.decide(rep(15 * GiB, 20 * GiB), 10 * GiB, P)
    assert not d.reapply and d.grow_to == 40 * GiB


def test_zero_total() -> None:
    d = storage.decide(rep(0, 0), None, P)
    assert d.grow_to == 10 * GiB and not d.at_limit and d.free_bytes == 0
    # Zero total, growth pending: wait for it.
    d = storage.decide(rep(0, 0), 10 * GiB, P)
    assert d.reapply and d.grow_to is None


@given(
    used=st.integers(min_value=0, max_value=200 * GiB),
    total=st.integers(min_value=0, max_value=200 * GiB),
    target=st.none() | st.integers(min_value=0, max_value=200 * GiB),
)
def test_decision_invariants(used: int, total: int, target: int | None) -> None:
    d = storage.decide(rep(used, total), target, P)
    effective = max(total, target or 0)
    assert not (d.grow_to is not None and d.at_limit)
    if d.grow_to is not None:
        assert effective < d.grow_to <= P.max_total_bytes
        assert used * 10 >= 7 * effective
    else:
        assert d.at_limit or used * 10 < 7 * effective
    assert d.reapply == (target is not None and total < target)
    assert d.free_bytes == max(0, total - used)
