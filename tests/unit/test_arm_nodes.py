"""The Azure node rules (shared/domain/azure_nodes.py): statuses, scale-set sizing."""

from __future__ import annotations

import pytest

from shared.domain.azure_nodes import (
    GIB,
    DataDiskLimit,
    capacity_after,
    local_storage_bytes,
    new_data_disks,
    pending_slots,
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
