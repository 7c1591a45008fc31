from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devhost.process import DevhostProcess


@pytest.fixture
def devhost(tmp_path: Path) -> Iterator[DevhostProcess]:
    """A devhost subprocess with the record provisioner (fast boots) on a free port."""
    h = DevhostProcess(tmp_path / "data").start()
    try:
        yield h
    finally:
        h.close()


# databricks-sdk's waits (`create_and_wait`, `run_now_and_wait`, `wait_get_...`) poll after 1,
# 2, 3 ... up to 10 s, plus up to 1 s at random: a record cluster RUNNING 0.4 s after its create
# is seen after about 1.5 s, a local Spark cluster RUNNING after 30 s at up to 36 s. The tests
# keep the SDK's waits (their deadlines, states and errors) but poll at least every
# SDK_POLL_MAX_S; the SDK's retries of failed requests keep their own pauses.
SDK_POLL_MAX_S = 0.5


class _SdkTime:
    """The `time` module as databricks-sdk's service modules see it, sleeps capped."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, SDK_POLL_MAX_S))


@pytest.fixture(autouse=True, scope="session")
def _sdk_waits_poll_often() -> Iterator[None]:
    from databricks.sdk.service import compute, jobs

    with pytest.MonkeyPatch.context() as mp:
        for module in (compute, jobs):
            mp.setattr(module, "time", _SdkTime())
        yield


# How `make test` spreads tests over its workers (pytest-xdist, --dist loadgroup): a module's
# tests stay together on one worker, in their order (tests of a module may share its host and
# build on each other, as they were written for one process); real-Spark tests go to one of
# SPARK_LANES lanes, so at most that many local Spark clusters run at once on a 2-core machine
# while the other workers take everything else. Three lanes were tried: the run went to load
# average 52 and the live autoscaling replay (tests/e2e/test_autoscale_live_bench.py) missed
# its scale-up in 2 of 4 CI runs (docs/testing.md, "Fourth round").
SPARK_LANES = 2

# The lanes are balanced at collection (`_spark_lanes`, longest first onto the least loaded
# lane) by these seconds of one module's tests, setup and teardown included, from one run of
# the real-Spark tests alone (`pytest -m spark -n 2 --dist loadgroup --junitxml`, summed per
# module; a loaded 2-core machine, so the ratios count, not the seconds). A module not listed
# counts NEW_SPARK_MODULE_S until it is.
SPARK_SECONDS = {
    "tests/contract/test_provisioner_pools_contract.py": 551,
    "tests/e2e/test_pools_spark.py": 288,
    "tests/e2e/test_jobs_spark.py": 257,
    "tests/e2e/test_autoscale_live_bench.py": 161,
    "tests/e2e/test_job_prewarm_spark.py": 155,
    "tests/e2e/test_local_spark_provisioner.py": 133,
    "tests/e2e/test_autoscale_live.py": 130,
    "tests/contract/test_provisioner_pool_credentials_contract.py": 78,
    "tests/e2e/test_spark_clusters_sdk.py": 66,
    "tests/e2e/test_workspace_deletion_spark.py": 22,
}
NEW_SPARK_MODULE_S = 60
# Modules whose tests each build their own provisioner (no module-scoped fixture, no test
# building on another): their tests are spread over the lanes one by one, each counting an
# equal share of its module's seconds.
SPARK_SPREAD = {
    "tests/contract/test_provisioner_pools_contract.py",
    "tests/contract/test_provisioner_pool_credentials_contract.py",
}

# The groups are handed out in the order of the items (xdist's reordering by test count is
# turned off below): the Spark lanes first, then the modules that take longest, so that no
# long module starts last while the other workers have nothing left. Seconds of one module's
# tests (setup and teardown included), from one `make test-fast`-like run on 3 workers of a
# loaded 2-core machine (`pytest -m "not spark" -n 3 --dist loadgroup --junitxml`, summed per
# module); the modules not listed took under 12 s and follow in their collection order.
LONG_MODULES = {
    "tests/integration/test_jobs_sdk.py": 74,
    "tests/contract/test_store_contract.py": 65,
    "tests/integration/test_chaos.py": 56,
    "tests/integration/test_schemathesis_clusters.py": 47,
    "tests/integration/test_tokens_admin.py": 46,
    "tests/integration/test_clusters_sdk.py": 44,
    "tests/integration/test_files_sdk.py": 41,
    "tests/integration/test_cli.py": 40,
    "tests/browser/test_console.py": 38,
    "tests/integration/test_pools_sdk.py": 31,
    "tests/integration/test_schemathesis.py": 28,
    "tests/integration/test_workspace_deletion.py": 28,
    "tests/integration/test_airflow.py": 27,
    "tests/integration/test_crash_recovery.py": 20,
    "tests/contract/test_files_contract.py": 20,
    "tests/unit/test_infra.py": 19,
    "tests/unit/test_delivery_order_property.py": 16,
    "tests/integration/test_readable_run.py": 16,
    "tests/integration/test_quotas.py": 15,
}


def pytest_configure(config: pytest.Config) -> None:
    # xdist would hand out the groups with the most tests first (a 2-test module of a minute
    # would start last); keep the order pytest_collection_modifyitems gives them.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group each test by module, or by Spark lane; Spark lanes first, then the longest modules."""
    spark: list[pytest.Item] = []
    rest: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker("spark") is None:
            item.add_marker(pytest.mark.xdist_group(_module(item)))
            rest.append(item)
        else:
            spark.append(item)
    lanes = _spark_lanes(spark)
    for item in spark:
        item.add_marker(pytest.mark.xdist_group(lanes[item.nodeid]))
    # sorted() is stable: a module's tests keep their order.
    rest.sort(key=lambda item: -LONG_MODULES.get(_module(item), 0))
    items[:] = spark + rest


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _spark_lanes(spark: list[pytest.Item]) -> dict[str, str]:
    """Node id -> lane ("spark-0" ...): the units (a module, or a test of a SPARK_SPREAD
    module) longest first, each onto the lane with the fewest seconds so far."""
    units: dict[str, list[pytest.Item]] = {}
    for item in spark:
        module = _module(item)
        units.setdefault(item.nodeid if module in SPARK_SPREAD else module, []).append(item)
    per_module = Counter(_module(item) for item in spark)

    def seconds(unit: list[pytest.Item]) -> float:
        module = _module(unit[0])
        total = SPARK_SECONDS.get(module, NEW_SPARK_MODULE_S)
        return total / per_module[module] if module in SPARK_SPREAD else total

    load = [0.0] * SPARK_LANES
    lanes: dict[str, str] = {}
    for unit in sorted(units.values(), key=seconds, reverse=True):  # stable: ties keep order
        lane = load.index(min(load))
        load[lane] += seconds(unit)
        lanes.update((item.nodeid, f"spark-{lane}") for item in unit)
    return lanes
