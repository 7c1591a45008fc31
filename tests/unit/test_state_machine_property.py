"""Property: random command sequences interleaved with reconciles and node failures never reach
an illegal state or transition, and a quiet system always converges to its desired state."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.domain import cluster as dom
from shared.domain import reconcile as rec
from shared.domain.states import ACTIVE, State, can_move
from shared.errors import ApiError
from shared.ports import Node

SPEC = dom.validate_spec(
    dom.parse_spec({"spark_version": "v", "node_type_id": "n", "num_workers": 1}),
    node_types={"n"},
    spark_versions={"v"},
)


class World:
    """A fake provisioner that boots nodes on the next step; the model of observed reality."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.seq = 0

    def apply(self, actions: list[rec.Action]) -> None:
        for a in actions:
            match a:
                case rec.StopCluster():
                    for k, n in self.nodes.items():
                        self.nodes[k] = Node(n.node_id, n.role, "STOPPING", n.start_ms)
                case rec.StartDriver():
                    self.add("driver")
                case rec.AddWorkers(count=c):
                    for _ in range(c):
                        self.add("worker")
                case rec.RemoveWorkers(node_ids=ids):
                    for i in ids:
                        n = self.nodes[i]
                        self.nodes[i] = Node(n.node_id, n.role, "STOPPING", n.start_ms)

    def add(self, role: str) -> None:
        self.seq += 1
        nid = f"{role}{self.seq}"
        self.nodes[nid] = Node(nid, role, "STARTING", self.seq)  # type: ignore[arg-type]

    def tick(self) -> None:
        for k, n in list(self.nodes.items()):
            if n.status == "STOPPING":
                del self.nodes[k]
            elif n.status == "STARTING":
                self.nodes[k] = Node(n.node_id, n.role, "RUNNING", n.start_ms)

    def lose(self, role: str) -> None:
        for k, n in self.nodes.items():
            if n.role == role and n.status == "RUNNING":
                self.nodes[k] = Node(n.node_id, n.role, "LOST", n.start_ms)
                return

    def observe(self) -> list[Node]:
        return sorted(self.nodes.values(), key=lambda n: (n.role != "driver", n.start_ms))


commands = st.lists(
    st.one_of(
        st.tuples(st.just("reconcile"), st.none()),
        st.tuples(st.just("tick"), st.none()),
        st.tuples(st.just("settle"), st.integers(1, 4)),
        st.tuples(st.just("resize"), st.integers(0, 4)),
        st.tuples(st.just("autoscale"), st.integers(0, 3)),
        st.tuples(st.sampled_from(["restart", "start", "delete", "edit", "pin"]), st.none()),
        st.tuples(st.sampled_from(["lose_worker", "lose_driver"]), st.none()),
    ),
    max_size=60,
)


def run_command(c: dom.Cluster, name: str, arg: int | None, now: int) -> dom.Cluster:
    match name:
        case "resize":
            return dom.resize(c, num_workers=arg, autoscale=None, user="u", now=now)
        case "autoscale":
            assert arg is not None
            auto = dom.AutoScale(min_workers=arg, max_workers=arg + 2)
            return dom.resize(c, num_workers=None, autoscale=auto, user="u", now=now)
        case "restart":
            return dom.restart(c, user="u", now=now)
        case "start":
            return dom.start(c, user="u", now=now)
        case "delete":
            return dom.terminate(c, reason=dom.USER_REQUEST, user="u", now=now)
        case "edit":
            return dom.edit(c, SPEC, user="u", now=now)
        case "pin":
            return dom.pin(c, pinned=not c.pinned, user="u", now=now)
    raise AssertionError(name)


@settings(max_examples=300, deadline=None)
@given(commands)
def test_no_illegal_state_and_convergence(cmds: list[tuple[str, int | None]]) -> None:
    world = World()
    c = dom.create(cluster_id="c", workspace_id="w", spec=SPEC, user="u", now=0)
    now = 0
    for name, arg in cmds:
        now += 1000
        before = c.state
        if name == "reconcile":
            p = rec.plan(c, world.observe(), now=now)
            world.apply(p.actions)
            c = p.cluster
        elif name == "tick":
            world.tick()
        elif name == "settle":
            assert arg is not None
            for _ in range(arg):
                p = rec.plan(c, world.observe(), now=now)
                world.apply(p.actions)
                assert can_move(c.state, p.cluster.state)
                c = p.cluster
                world.tick()
            before = c.state  # each step was checked above
        elif name == "lose_worker":
            world.lose("worker")
        elif name == "lose_driver":
            world.lose("driver")
        else:
            try:
                c = run_command(c, name, arg, now)
            except ApiError:
                assert c.state == before  # a refused command changes nothing
        assert can_move(before, c.state), f"{before} -> {c.state} after {name}"
        assert c.state not in (State.UNKNOWN,)
        assert c.target_workers >= 0
        if c.spec.autoscale is not None and c.state in ACTIVE:
            assert c.spec.autoscale.min_workers <= c.target_workers <= c.spec.autoscale.max_workers
    # quiet period: reconcile and let nodes boot until converged
    for _ in range(10):
        now += 1000
        before = c.state
        p = rec.plan(c, world.observe(), now=now)
        world.apply(p.actions)
        c = p.cluster
        assert can_move(before, c.state)
        world.tick()
    if c.desired == "TERMINATED":
        assert c.state == State.TERMINATED and not world.nodes
    else:
        assert c.state == State.RUNNING
        running = [n for n in world.observe() if n.status == "RUNNING"]
        assert sum(n.role == "driver" for n in running) == 1
        assert sum(n.role == "worker" for n in running) == c.target_workers
