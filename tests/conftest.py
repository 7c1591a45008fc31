from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


# How `make test` spreads tests over its workers (pytest-xdist, --dist loadgroup): a module's
# tests stay together on one worker, in their order (tests of a module may share its host and
# build on each other, as they were written for one process); real-Spark tests go to one of two
# lanes, so at most two local Spark clusters boot at once on a 2-core machine while the other
# workers take everything else. The lanes are balanced by the modules' measured times
# (`pytest --durations`); a new module goes to lane "spark-b" until it is placed.
SPARK_LANES = {
    "tests/e2e/test_jobs_spark.py": "spark-a",
    "tests/e2e/test_pools_spark.py": "spark-a",
    "tests/e2e/test_workspace_deletion_spark.py": "spark-a",
    "tests/e2e/test_autoscale_live_bench.py": "spark-a",
    "tests/e2e/test_autoscale_live.py": "spark-b",
    "tests/e2e/test_spark_clusters_sdk.py": "spark-b",
    "tests/e2e/test_local_spark_provisioner.py": "spark-b",
    "tests/contract/test_provisioner_pools_contract.py": "spark-b",
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
        module = item.nodeid.split("::", 1)[0]
        if item.get_closest_marker("spark") is None:
            item.add_marker(pytest.mark.xdist_group(module))
            rest.append(item)
        else:
            item.add_marker(pytest.mark.xdist_group(SPARK_LANES.get(module, "spark-b")))
            spark.append(item)
    # sorted() is stable: a module's tests keep their order.
    rest.sort(key=lambda item: -LONG_MODULES.get(item.nodeid.split("::", 1)[0], 0))
    items[:] = spark + rest
