"""The pure quota rules (shared/domain/quotas.py)."""

from __future__ import annotations

import pytest

from shared.domain import quotas as q
from shared.domain import schedule as sched
from shared.domain.cluster import AutoScale, ClusterSpec
from shared.errors import InvalidParameterValue, QuotaExceeded, ResourceExhausted
from shared.services.quotas import default_quotas
from shared.settings import Settings

Q = q.Quotas(
    max_clusters=2,
    max_total_workers=10,
    max_workers_per_cluster=6,
    max_concurrent_runs=3,
    max_jobs=2,
    min_schedule_period_s=300,
    max_pools=1,
    max_pool_capacity=8,
    max_tokens_per_user=2,
    max_file_store_bytes=1000,
)


def test_defaults_are_documented_values() -> None:
    d = q.Quotas()
    assert d.wire() == {
        "max_clusters": 50,
        "max_total_workers": 200,
        "max_workers_per_cluster": 100,
        "max_concurrent_runs": 100,
        "max_jobs": 1000,
        "min_schedule_period_s": 10,
        "max_pools": 20,
        "max_pool_capacity": 100,
        "max_tokens_per_user": 100,
        "max_file_store_bytes": 10 * 2**30,
    }
    assert tuple(d.wire()) == q.NAMES


def test_parse_overrides_a_base_and_refuses_unknown_or_bad_values() -> None:
    assert q.parse({"max_jobs": 5}, Q).max_jobs == 5
    assert q.parse({"max_jobs": 5}, Q).max_clusters == 2
    for bad in ({"max_job": 1}, {"max_jobs": -1}, {"max_jobs": "5"}, {"max_jobs": True}):
        with pytest.raises(InvalidParameterValue):
            q.parse(bad, Q)
    with pytest.raises(InvalidParameterValue):
        q.parse([], Q)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterValue):
        q.parse({"max_pool_capacity": 0})


def test_cluster_workers_counts_the_autoscale_maximum() -> None:
    assert q.cluster_workers(ClusterSpec(spark_version="v", num_workers=3)) == 3
    assert q.cluster_workers(ClusterSpec(spark_version="v")) == 0
    auto = ClusterSpec(spark_version="v", autoscale=AutoScale(min_workers=1, max_workers=9))
    assert q.cluster_workers(auto) == 9


def test_stored_workers_reads_a_stored_spec_as_cluster_workers_does() -> None:
    for spec in (
        ClusterSpec(spark_version="v", num_workers=3),
        ClusterSpec(spark_version="v"),
        ClusterSpec(spark_version="v", autoscale=AutoScale(min_workers=1, max_workers=9)),
    ):
        assert q.stored_workers(spec.model_dump(mode="json")) == q.cluster_workers(spec)


def test_clusters_count_number_total_workers_and_workers_per_cluster() -> None:
    q.check_clusters(Q, q.ClusterUsage(1, 4), [6])  # exactly at every limit
    with pytest.raises(QuotaExceeded, match="number of clusters"):
        q.check_clusters(Q, q.ClusterUsage(2, 0), [0])
    with pytest.raises(QuotaExceeded, match="total number of workers"):
        q.check_clusters(Q, q.ClusterUsage(1, 5), [6])
    with pytest.raises(QuotaExceeded, match="workers of one cluster"):
        q.check_clusters(Q, q.ClusterUsage(0, 0), [7])
    # a run's several job clusters count together
    with pytest.raises(QuotaExceeded, match="number of clusters"):
        q.check_clusters(Q, q.ClusterUsage(1, 0), [1, 1])
    q.check_clusters(Q, q.ClusterUsage(2, 10), [])  # a run with no new cluster
    with pytest.raises(QuotaExceeded) as e:
        q.check_workers_per_cluster(Q, 7)
    assert e.value.status == 400 and e.value.error_code == "QUOTA_EXCEEDED"
    assert "The current quota is 6" in e.value.message


def test_jobs_runs_pools_tokens_and_files() -> None:
    q.check_jobs(Q, 1)
    with pytest.raises(QuotaExceeded, match="number of jobs"):
        q.check_jobs(Q, 2)
    q.check_runs(Q, 2)
    with pytest.raises(ResourceExhausted) as e:
        q.check_runs(Q, 3)
    assert e.value.status == 429 and e.value.error_code == "RESOURCE_EXHAUSTED"
    assert e.value.retry_after_s >= 1
    q.check_pools(Q, 0)
    with pytest.raises(QuotaExceeded, match="instance pools"):
        q.check_pools(Q, 1)
    q.check_tokens(Q, 1)
    with pytest.raises(QuotaExceeded, match="tokens"):
        q.check_tokens(Q, 2)
    q.check_file_bytes(Q, 400, 600)
    with pytest.raises(QuotaExceeded, match="bytes"):
        q.check_file_bytes(Q, 401, 600)


def test_pool_capacity_defaults_to_the_quota_and_is_bounded_by_it() -> None:
    assert q.pool_capacity(Q, 0, None) == 8
    assert q.pool_capacity(Q, 2, 4) == 4
    with pytest.raises(QuotaExceeded, match="capacity"):
        q.pool_capacity(Q, 0, 9)
    with pytest.raises(QuotaExceeded, match="min_idle_instances"):
        q.pool_capacity(Q, 9, None)


@pytest.mark.parametrize(
    ("cron", "ok"),
    [
        ("0 0/5 * * * ?", True),  # every 5 min = the quota
        ("0 0/4 * * * ?", False),
        ("* * * * * ?", False),  # every second
        ("0 0,1 * * * ?", False),  # twice an hour, one minute apart
        ("0 0 3 * * ?", True),
    ],
)
def test_schedule_period_is_the_shortest_gap_between_fires(cron: str, ok: bool) -> None:
    s = sched.compile_schedule(cron, "UTC")
    fires = sched.fire_times(s, 1_700_000_000_000, 100)
    if ok:
        q.check_schedule(Q, fires)
    else:
        with pytest.raises(QuotaExceeded, match="minimum period"):
            q.check_schedule(Q, fires)


def test_min_period_of_too_few_fires_is_none() -> None:
    assert q.min_period_ms([]) is None
    assert q.min_period_ms([5]) is None
    assert q.min_period_ms([0, 10, 15, 40]) == 5


def test_quota_defaults_setting_overrides_the_defaults_and_refuses_bad_values() -> None:
    from pydantic import ValidationError

    assert default_quotas(Settings(quota_defaults="")) == q.Quotas()
    got = default_quotas(Settings(quota_defaults='{"max_clusters": 4}'))
    assert got.max_clusters == 4 and got.max_jobs == 1000
    for bad in ('{"max_x": 1}', '{"max_jobs": -1}', "not json", "[]"):
        with pytest.raises(ValidationError, match="quota_defaults"):
            Settings(quota_defaults=bad)
