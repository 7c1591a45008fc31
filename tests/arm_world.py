"""A control plane on the in-process ARM, for the ARM provisioner's tests: the real services
(`Container`) on a SQLite store and the embedded bus, an ARM provisioner sending to FakeArm
(one subscription) or FakeArms (several, through the sharded provisioner), one FakeClock for
both sides, and FakeAgents playing the drivers' ready reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.adapters.embedded_bus import EmbeddedBus
from shared.adapters.sqlite_store import SqliteStore
from shared.services.auth import Principal
from shared.settings import Settings
from shared.wiring import Container
from tests.fake_arm import (
    BASE,
    ArmLimits,
    FakeAgents,
    FakeArm,
    FakeArms,
    arm_provisioner,
    sharded_provisioner,
)
from tests.support import FakeClock

SPEC = {"spark_version": "4.1.x-scala2.13", "node_type_id": "Standard_D4ds_v5", "num_workers": 1}


class ArmWorld:
    """`subscriptions`: None for one FakeArm behind an ArmProvisioner, a list for FakeArms behind
    a ShardedArmProvisioner; `limits`: ARM's throttling (none unless given); `record`: whether
    FakeArm keeps every request; `provisioner`: the provisioner's settings; the other keywords:
    the control plane's. The provisioner keeps its node book in the app's store."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        subscriptions: list[str] | None = None,
        limits: ArmLimits | None = None,
        record: bool = True,
        provisioner: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        self.clock = FakeClock()
        self.bus = EmbeddedBus(tmp_path / "bus.db", clock=self.clock)
        self.store = SqliteStore(tmp_path / "store.db", clock=self.clock)
        if subscriptions is None:
            self.arm = FakeArm(limits=limits, clock=self.now, record=record)
            self.transport: FakeArm | FakeArms = self.arm
            self.prov = arm_provisioner(
                self.arm, clock=self.now, store=self.store, **(provisioner or {})
            )
        else:
            arms = [
                FakeArm(limits=limits, clock=self.now, record=record, subscription=s)
                for s in subscriptions
            ]
            self.arm = arms[0]
            self.transport = FakeArms(arms)
            self.prov = sharded_provisioner(
                self.transport, clock=self.now, store=self.store, **(provisioner or {})
            )
        self.arms = {a.sub: a for a in self.arm_list()}
        self.agents = [FakeAgents(a) for a in self.arm_list()]
        self.c = Container(
            settings=Settings(data_dir=tmp_path / "data", agent_callback_url=BASE, **settings),
            store=self.store,
            bus=self.bus,
            provisioner=self.prov,
            clock=self.clock,
        )

    def now(self) -> float:
        """The ARM side's seconds: the services' instant."""
        return self.clock.ms / 1000

    def arm_list(self) -> list[FakeArm]:
        t = self.transport
        return list(t.arms.values()) if isinstance(t, FakeArms) else [t]

    def workspaces(self, *ids: str) -> None:
        """Create the workspaces (named as their ids) and let ARM make their groups."""
        for ws in ids:
            self.c.admin.create_workspace({"name": ws, "workspace_id": ws, "region": "westeurope"})
        self.transport.tick(2)

    def create(self, ws: str, name: str, **spec: Any) -> str:
        """A cluster of SPEC (with `spec` over it) created by an admin of `ws`: its id."""
        return self.c.clusters.create(
            Principal(ws, "admin", "t"), {**SPEC, "cluster_name": name, **spec}
        )

    def drain(self) -> int:
        """Handle the lifecycle messages due now; how many."""
        n = 0
        while (d := self.bus.receive("cluster-lifecycle")) is not None:
            self.c.lifecycle.handle(d.body)
            self.bus.complete(d)
            n += 1
        return n

    def run(self, rounds: int = 12, step_ms: int = 5000) -> None:
        """`rounds` times: the due messages handled, ARM a step further, the drivers that run
        report ready, `step_ms` pass."""
        for _ in range(rounds):
            self.drain()
            self.transport.tick()
            for a in self.agents:
                a.heartbeat(self.c.utilization)
            self.clock.advance(step_ms)

    def cluster(self, ws: str, cid: str) -> Any:
        """The cluster's document (it must exist)."""
        got = self.c.repo.load(ws, cid)
        assert got is not None, cid
        return got[0]
