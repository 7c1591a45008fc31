"""The task documents between the runs and a driver node's agent (shared/services/tasks.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from shared.adapters.sqlite_store import SqliteStore
from shared.errors import InvalidParameterValue, InvalidState, ResourceDoesNotExist
from shared.services.auth import Principal
from shared.services.tasks import TaskService
from tests.support import FakeClock


def agent(cluster_id: str) -> Principal:
    return Principal(f"agent:{cluster_id}", "agent", "t-" + cluster_id, "agent", cluster_id)


@pytest.fixture
def svc(tmp_path: Path) -> TaskService:
    files = {("ws", "dbfs:/a.py"): b"print(1)\n"}

    def read(ws: str, python_file: str) -> bytes:
        if (ws, python_file) not in files:
            raise ResourceDoesNotExist(f"{python_file} does not exist.")
        return files[(ws, python_file)]

    return TaskService(SqliteStore(tmp_path / "s.db"), FakeClock(1_000_000), read)


def submit(
    svc: TaskService, key: str = "11", cluster: str = "c1", file: str = "dbfs:/a.py"
) -> None:
    svc.submit(
        key,
        cluster_id=cluster,
        workspace_id="ws",
        python_file=file,
        parameters=["x"],
        env={"A": "1"},
    )


def test_a_task_is_claimed_once_run_and_reported(svc: TaskService) -> None:
    submit(svc)
    submit(svc)  # a replayed advance hands it over once
    [t] = svc.assigned(agent("c1"))["tasks"]
    assert (t["key"], t["state"], t["parameters"], t["env"]) == ("11", "PENDING", ["x"], {"A": "1"})
    assert svc.status("c1", "11", cluster_gone=False).state == "PENDING"  # not picked up yet
    assert svc.report(agent("c1"), "11", {"state": "RUNNING", "started_ms": 5}) == {
        "cancel_requested": False
    }
    got = svc.file(agent("c1"), "11")
    assert base64.b64decode(got["contents"]) == b"print(1)\n"
    svc.report(agent("c1"), "11", {"state": "SUCCEEDED", "exit_code": 0, "stdout_tail": "1\n"})
    st = svc.status("c1", "11", cluster_gone=False)
    assert (st.state, st.exit_code, st.stdout_tail, st.started_ms) == ("SUCCEEDED", 0, "1\n", 5)
    assert svc.assigned(agent("c1"))["tasks"] == []  # finished tasks are not listed
    with pytest.raises(InvalidState):
        svc.report(agent("c1"), "11", {"state": "RUNNING"})  # never started twice
    with pytest.raises(InvalidState):
        svc.file(agent("c1"), "11")


def test_an_agent_sees_only_its_own_clusters_tasks(svc: TaskService) -> None:
    submit(svc, cluster="c1")
    assert svc.assigned(agent("c2"))["tasks"] == []
    for call in (
        lambda: svc.file(agent("c2"), "11"),
        lambda: svc.report(agent("c2"), "11", {"state": "FAILED"}),
    ):
        with pytest.raises(ResourceDoesNotExist):
            call()
    user = Principal("ws", "me", "tok")
    with pytest.raises(InvalidParameterValue):
        svc.file(user, "11")


def test_cancel_before_the_claim_ends_the_task_and_it_never_starts(svc: TaskService) -> None:
    submit(svc)
    svc.cancel("c1", "11")
    assert svc.status("c1", "11", cluster_gone=False).state == "CANCELED"
    with pytest.raises(InvalidState, match="must not run"):
        svc.report(agent("c1"), "11", {"state": "RUNNING"})


def test_cancel_of_a_running_task_is_passed_to_the_agent(svc: TaskService) -> None:
    submit(svc)
    svc.report(agent("c1"), "11", {"state": "RUNNING"})
    svc.cancel("c1", "11")
    assert svc.assigned(agent("c1"))["tasks"][0]["cancel_requested"] is True
    assert svc.report(agent("c1"), "11", {"state": "RUNNING"}) == {"cancel_requested": True}
    svc.report(agent("c1"), "11", {"state": "CANCELED", "exit_code": -15})
    assert svc.status("c1", "11", cluster_gone=False).state == "CANCELED"


def test_a_missing_file_and_a_gone_cluster(svc: TaskService) -> None:
    submit(svc, file="dbfs:/missing.py")
    svc.report(agent("c1"), "11", {"state": "RUNNING"})
    with pytest.raises(ResourceDoesNotExist, match="does not exist"):
        svc.file(agent("c1"), "11")
    assert svc.status("c1", "11", cluster_gone=True).state == "LOST"
    assert svc.status("c1", "nope", cluster_gone=False) is None


@pytest.mark.parametrize(
    "body",
    [{"state": "DONE"}, {"state": "FAILED", "stdout_tail": "x" * 70_000}, {"oops": 1}],
)
def test_bad_reports_are_refused(svc: TaskService, body: dict) -> None:
    submit(svc)
    with pytest.raises(InvalidParameterValue, match="Invalid report"):
        svc.report(agent("c1"), "11", body)


def test_a_forgotten_task_is_gone(svc: TaskService) -> None:
    submit(svc)
    svc.forget("c1", "11")
    svc.forget("c1", "11")  # again: nothing to do
    assert svc.status("c1", "11", cluster_gone=False) is None
    assert svc.assigned(agent("c1"))["tasks"] == []
