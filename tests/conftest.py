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
    "tests/e2e/test_autoscale_live.py": "spark-b",
    "tests/e2e/test_spark_clusters_sdk.py": "spark-b",
    "tests/e2e/test_local_spark_provisioner.py": "spark-b",
    "tests/contract/test_provisioner_pools_contract.py": "spark-b",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group each test by module, or by Spark lane; Spark lanes first (the longest work)."""
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
    items[:] = spark + rest
