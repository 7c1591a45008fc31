"""The Azure node rules (shared/domain/azure_nodes.py): statuses, scale-set sizing, node ids
and readiness."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.domain.azure_nodes import (
    EXECUTOR_WAIT_S,
    GIB,
    NOT_READY,
    READY_TIMEOUT_S,
    VM_FAILED,
    DataDiskLimit,
    Slot,
    WorkerBook,
    book_add,
    book_drop,
    book_match,
    capacity_after,
    driver_ready_status,
    driver_vm_name,
    local_storage_bytes,
    new_data_disks,
    pending_slots,
    worker_ready_status,
)


def test_pending_slots_are_the_capacity_above_the_live_instances() -> None:
    assert pending_slots(3, ["RUNNING"], set_deleting=False) == 2
    # An instance being deleted no longer counts in the capacity.
    assert pending_slots(2, ["RUNNING", "STOPPING"], set_deleting=False) == 1
    assert pending_slots(1, ["RUNNING", "RUNNING"], set_deleting=False) == 0
    assert pending_slots(5, [], set_deleting=True) == 0


def test_capacity_never_goes_below_zero() -> None:
    assert capacity_after(2, 3) == 5
    assert capacity_after(2, -3) == 0


def test_local_storage_is_the_temporary_disk_plus_the_data_disks() -> None:
    props = {"storageProfile": {"dataDisks": [{"lun": 0, "diskSizeGB": 100}]}}
    assert local_storage_bytes(props, "Standard_D4ds_v5") == 250 * GIB
    assert local_storage_bytes({}, "Standard_D4ds_v5") is None


def test_the_data_disk_limit_is_a_domain_refusal() -> None:
    disks = [{"lun": i, "diskSizeGB": 10} for i in range(8)]
    with pytest.raises(DataDiskLimit, match="at most 8"):
        new_data_disks(disks, 10_000 * GIB, max_disks=8, vm_size="Standard_D4ds_v5")


# ---- node ids: the driver's from the cluster id, workers' slots matched to instances


def test_the_driver_vm_name_is_what_the_cluster_template_makes() -> None:
    import json
    from pathlib import Path

    template = json.loads(
        (Path(__file__).resolve().parents[2] / "infra/templates/cluster.json").read_text()
    )
    v = template["variables"]
    assert v["prefix"] == "[concat('sp-', toLower(parameters('clusterId')))]"
    assert v["driverName"] == "[concat(variables('prefix'), '-driver')]"
    assert driver_vm_name("0101-120000-ABcd") == "sp-0101-120000-abcd-driver"


def test_new_instances_take_the_oldest_pending_slots_and_keep_them() -> None:
    book = book_add(WorkerBook(), "c", 2, now_ms=5)
    assert [(s.node_id, s.instance) for s in book.slots] == [("c-worker-0", ""), ("c-worker-1", "")]
    m = book_match(book, "c", [("set_7", "STARTING")], capacity=2, set_deleting=False, now_ms=9)
    assert m.ids == {"set_7": "c-worker-0"} and m.short == 0
    assert [s.node_id for s in m.book.pending] == ["c-worker-1"]
    # Listed again, in another order, with a newer instance: each keeps its slot.
    listed = [("set_9", "STARTING"), ("set_7", "RUNNING")]
    m = book_match(m.book, "c", listed, capacity=2, set_deleting=False, now_ms=9)
    assert m.ids == {"set_7": "c-worker-0", "set_9": "c-worker-1"} and not m.book.pending
    # The stored form reads back the same.
    assert WorkerBook.from_body(m.book.to_body()) == m.book


def test_a_gone_instance_takes_its_slot_with_it_and_ids_are_never_reused() -> None:
    book = book_add(WorkerBook(), "c", 2, now_ms=0)
    listed = [("set_0", "RUNNING"), ("set_1", "RUNNING")]
    book = book_match(book, "c", listed, capacity=2, set_deleting=False, now_ms=0).book
    m = book_match(book, "c", [("set_1", "RUNNING")], capacity=1, set_deleting=False, now_ms=0)
    assert m.ids == {"set_1": "c-worker-1"}
    again = book_add(m.book, "c", 1, now_ms=0)
    assert again.slots[-1].node_id == "c-worker-2"


def test_slots_asked_before_the_capacity_make_it_short_and_capacity_from_elsewhere_gets_slots() -> (
    None
):
    book = book_add(WorkerBook(), "c", 3, now_ms=0)  # asked while the set did not exist
    m = book_match(book, "c", [], capacity=0, set_deleting=False, now_ms=0)
    assert m.short == 3 and len(m.book.pending) == 3
    # A capacity nobody here asked for (set by another instance): ids for the workers coming.
    m = book_match(
        WorkerBook(), "c", [("set_0", "RUNNING")], capacity=3, set_deleting=False, now_ms=0
    )
    assert m.ids == {"set_0": "c-worker-0"}
    assert [s.node_id for s in m.book.pending] == ["c-worker-1", "c-worker-2"] and m.short == 0
    # A set being deleted owes nothing: its pending slots go.
    m = book_match(book, "c", [], capacity=3, set_deleting=True, now_ms=0)
    assert m.book.pending == [] and m.short == 0


def test_dropping_a_worker_drops_only_a_pending_slot() -> None:
    book = book_add(WorkerBook(), "c", 2, now_ms=0)
    book = book_match(
        book, "c", [("set_0", "RUNNING")], capacity=2, set_deleting=False, now_ms=0
    ).book
    assert book_drop(book, ["c-worker-0", "c-worker-1"]).slots == (Slot("c-worker-0", "set_0", 0),)


# ---- readiness: RUNNING means ready, in Azure too


def test_a_running_driver_vm_is_starting_until_its_agent_reports_ready() -> None:
    assert driver_ready_status("RUNNING", reported=False, created_for_s=60) == ("STARTING", None)
    assert driver_ready_status("RUNNING", reported=True, created_for_s=60) == ("RUNNING", None)
    assert driver_ready_status("STARTING", reported=True, created_for_s=60) == ("STARTING", None)
    assert driver_ready_status("STOPPING", reported=True, created_for_s=60) == ("STOPPING", None)


def test_a_driver_never_ready_is_a_permanent_failure_a_failed_vm_a_temporary_one() -> None:
    status, failure = driver_ready_status("RUNNING", reported=False, created_for_s=READY_TIMEOUT_S)
    assert status == "LOST" and failure is NOT_READY and failure.kind == "permanent"
    assert failure.code == "SPARK_STARTUP_FAILURE"
    status, failure = driver_ready_status("LOST", reported=True, created_for_s=1)
    assert status == "LOST" and failure is VM_FAILED and failure.kind == "temporary"
    assert failure.code == "CLOUD_PROVIDER_LAUNCH_FAILURE"


def test_workers_are_running_as_executors_register() -> None:
    def status(rank: int, executors: int, created_for_s: float = 10, ready: bool = True) -> str:
        return worker_ready_status(
            "RUNNING",
            driver_ready=ready,
            rank=rank,
            executors=executors,
            created_for_s=created_for_s,
        )[0]

    assert [status(r, executors=1) for r in range(2)] == ["RUNNING", "STARTING"]
    assert status(0, executors=1, ready=False) == "STARTING"  # no driver, no executor
    # None within the wait (spark_conf capping the application's cores): ready anyway.
    assert status(1, executors=1, created_for_s=EXECUTOR_WAIT_S) == "RUNNING"
    assert worker_ready_status("LOST", driver_ready=True, rank=0, executors=1, created_for_s=1) == (
        "LOST",
        VM_FAILED,
    )


def test_a_named_failure_of_a_starting_driver_is_the_termination_reason() -> None:
    from shared.domain import cluster as dom
    from shared.domain import reconcile as rec
    from shared.ports import Node

    body = {"spark_version": "4.1.x-scala2.13", "node_type_id": "small", "num_workers": 0}
    spec = dom.validate_spec(
        dom.parse_spec(body), node_types={"small"}, spark_versions={"4.1.x-scala2.13"}
    )
    c = dom.create(cluster_id="c1", workspace_id="w", spec=spec, user="u", now=1000)
    for failure, type_ in ((NOT_READY, "SERVICE_FAULT"), (VM_FAILED, "CLOUD_FAILURE")):
        attrs = {"failure": failure.code, "failure_kind": failure.kind}
        p = rec.plan(c, [Node("d", "driver", "LOST", 1, attrs=attrs)], now=5000)
        reason = p.cluster.termination_reason
        assert reason is not None and (reason.code, reason.type) == (failure.code, type_)
        assert reason.parameters == {"failure_kind": failure.kind}
        assert [e["type"] for e in p.cluster.pending_events][-1] == "TERMINATING"
    # Without a named failure: as before.
    p = rec.plan(c, [Node("d", "driver", "LOST", 1)], now=5000)
    assert p.cluster.termination_reason.code == "SPARK_STARTUP_FAILURE"  # type: ignore[union-attr]


def test_a_reused_instance_name_is_a_new_worker() -> None:
    """Azure may give a new instance a deleted one's id: the provisioner keys instances by
    name and creation time, so the new one gets a slot of its own."""
    book = book_add(WorkerBook(), "c", 1, now_ms=0)
    book = book_match(
        book, "c", [("set_1@100", "RUNNING")], capacity=1, set_deleting=False, now_ms=0
    ).book
    m = book_match(book, "c", [("set_1@200", "STARTING")], capacity=1, set_deleting=False, now_ms=0)
    assert m.ids == {"set_1@200": "c-worker-1"}


# ---- the book in the store (shared/adapters/arm/nodebook.py)


@pytest.mark.parametrize("with_store", [True, False], ids=["store", "memory"])
def test_the_book_keeps_the_newest_ready_report_and_decides_again_on_a_concurrent_write(
    tmp_path: Path, with_store: bool
) -> None:
    from shared.adapters.arm.nodebook import NodeBook
    from shared.adapters.sqlite_store import SqliteStore
    from shared.domain.azure_nodes import ReadyReport

    book = NodeBook(SqliteStore(tmp_path / "store.db") if with_store else None)
    book.report_ready("c", ReadyReport("d", 2, at_ms=200))
    book.report_ready("c", ReadyReport("d", 1, at_ms=100))  # an older one, late: ignored
    assert book.ready("c") == ReadyReport("d", 2, 200)

    # Another instance adds a slot while this one decides: the step runs again on its book.
    calls: list[int] = []

    def step(b: WorkerBook) -> WorkerBook:
        if not calls:
            book.change("c", lambda other: book_add(other, "c", 1, now_ms=0))
        calls.append(len(b.slots))
        return book_add(b, "c", 1, now_ms=0)

    out = book.change("c", step)
    assert calls == [0, 1]
    assert [s.node_id for s in out.slots] == ["c-worker-0", "c-worker-1"]
    assert book.slots("c") == out
    book.forget("c")
    assert book.slots("c") == WorkerBook() and book.ready("c") is None
