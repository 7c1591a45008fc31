"""The `sparkplane` command (python -m sparkplane_cli, as the console script runs it) against a
real devhost: workspaces, quotas, operator tokens, dead letters, status, bootstrap, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devhost.process import DevhostProcess
from shared.adapters.embedded_bus import EmbeddedBus
from shared.ports import OutMessage
from tests.support import http, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevhostProcess]:
    h = DevhostProcess(tmp_path_factory.mktemp("cli") / "data").start()
    try:
        yield h
    finally:
        h.close()


def sparkplane(
    h: DevhostProcess, *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPARKPLANE_")}
    done = subprocess.run(
        [sys.executable, "-m", "sparkplane_cli", *args],
        cwd=ROOT,
        env={
            **base,
            "SPARKPLANE_URL": h.url,
            "SPARKPLANE_DATA_DIR": str(h.data_dir),
            "COLUMNS": "250",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def test_workspaces_create_list_delete(host: DevhostProcess) -> None:
    r = sparkplane(host, "workspaces", "create", "Analytics", "--id", "analytics")
    assert "workspace analytics (Analytics) created" in r.stdout
    token = r.stdout.rsplit(": ", 1)[1].strip()
    clusters = http.get(
        host.url + "/api/2.1/clusters/list", headers={"Authorization": f"Bearer {token}"}
    )
    assert clusters.status_code == 200, "the printed first token works"
    assert "analytics" in sparkplane(host, "workspaces", "list").stdout
    again = sparkplane(host, "workspaces", "create", "x", "--id", "analytics", ok=False)
    assert again.returncode == 1
    assert again.stderr.strip() == (
        "sparkplane: RESOURCE_ALREADY_EXISTS: Workspace analytics already exists."
    )
    assert "DELETING" in sparkplane(host, "workspaces", "delete", "analytics").stdout


def test_quotas_get_and_set(host: DevhostProcess) -> None:
    sparkplane(host, "workspaces", "create", "q", "--id", "quota-ws", "--quota", "max_jobs=7")
    got = sparkplane(host, "quotas", "get", "quota-ws").stdout
    rows = {ln.split("│")[1].strip(): ln.split("│")[2:] for ln in got.splitlines() if "│" in ln}
    assert [c.strip() for c in rows["max_jobs"][:3]] == ["7", "set", "0"], "limit, set, usage"
    assert [c.strip() for c in rows["max_clusters"][:2]] == ["50", "default"]
    sparkplane(host, "quotas", "set", "quota-ws", "max_clusters=3", "max_jobs=default")
    op = host.operator_token
    q = http.get(
        f"{host.url}/api/admin/workspaces/quota-ws/quotas",
        headers={"Authorization": f"Bearer {op}"},
    ).json()
    assert q["overrides"] == {"max_clusters": 3}
    bad = sparkplane(host, "quotas", "set", "quota-ws", "max_nope=1", ok=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("sparkplane: INVALID_PARAMETER_VALUE: ")
    assert "Traceback" not in bad.stderr
    worse = sparkplane(host, "quotas", "set", "quota-ws", "max_jobs=many", ok=False)
    assert worse.returncode == 1 and "expected an integer" in worse.stderr


def test_operator_tokens_create_list_revoke(host: DevhostProcess) -> None:
    r = sparkplane(host, "tokens", "create", "--comment", "ci", "--lifetime-seconds", "3600")
    token_id, token = r.stdout.removeprefix("token ").strip().split(": ")
    listed = sparkplane(host, "tokens", "list").stdout
    assert token_id in listed and "ci" in listed
    assert token not in listed, "a list never shows token values"
    # the new token works as the operator token
    me = sparkplane(host, "tokens", "list", env={"SPARKPLANE_OPERATOR_TOKEN": token})
    assert token_id in me.stdout
    assert f"token {token_id} revoked" in sparkplane(host, "tokens", "revoke", token_id).stdout
    gone = sparkplane(host, "tokens", "list", env={"SPARKPLANE_OPERATOR_TOKEN": token}, ok=False)
    assert gone.returncode == 1
    assert gone.stderr.startswith("sparkplane: UNAUTHENTICATED: ")


def test_bad_token_and_no_host_are_one_line(host: DevhostProcess, tmp_path: Path) -> None:
    bad = sparkplane(
        host, "workspaces", "list", env={"SPARKPLANE_OPERATOR_TOKEN": "dapi" + "0" * 32}, ok=False
    )
    assert bad.returncode == 1 and bad.stdout == ""
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("sparkplane: UNAUTHENTICATED: ")
    user = sparkplane(host, "status", env={"SPARKPLANE_OPERATOR_TOKEN": host.token}, ok=False)
    assert user.stderr.startswith("sparkplane: PERMISSION_DENIED: ")
    missing = sparkplane(
        host, "tokens", "list", env={"SPARKPLANE_DATA_DIR": str(tmp_path)}, ok=False
    )
    [line] = missing.stderr.strip().splitlines()
    assert line.startswith(f"sparkplane: no operator token: cannot read {tmp_path}")
    down = sparkplane(
        host, "tokens", "list", env={"SPARKPLANE_URL": "http://127.0.0.1:9"}, ok=False
    )
    [line] = down.stderr.strip().splitlines()
    assert line.startswith("sparkplane: cannot reach http://127.0.0.1:9")


def test_dead_letters_list_replay_purge(host: DevhostProcess) -> None:
    bus = EmbeddedBus(host.data_dir / "bus.db")
    try:
        for i in range(3):
            body = json.dumps({"type": "explode", "cluster_id": f"x{i}", "workspace_id": "local"})
            bus.send(
                "cluster-lifecycle",
                [OutMessage(body.encode(), message_id=f"poison-{i}", session_id=f"x{i}")],
            )
        dead = wait_for("3 dead letters", lambda: len(bus.dead_letters("cluster-lifecycle")) == 3)
        assert dead
        seqs = [str(d.sequence_number) for d in bus.dead_letters("cluster-lifecycle")]
    finally:
        bus.close()
    listed = sparkplane(host, "dead-letters", "list").stdout
    assert all(f"poison-{i}" in listed for i in range(3))
    assert "MaxDeliveryCountExceeded" in listed
    status = sparkplane(host, "status").stdout
    assert any(
        "cluster-lifecycle" in ln and ln.rstrip(" │").endswith("3") for ln in status.splitlines()
    )
    assert f"{seqs[0]}: replayed" in sparkplane(host, "dead-letters", "replay", seqs[0]).stdout
    assert f"{seqs[1]}: purged" in sparkplane(host, "dead-letters", "purge", seqs[1]).stdout
    again = sparkplane(host, "dead-letters", "purge", seqs[1], ok=False)
    assert again.stderr.startswith("sparkplane: RESOURCE_DOES_NOT_EXIST: ")
    neither = sparkplane(host, "dead-letters", "purge", ok=False)
    assert neither.returncode == 1 and "--all" in neither.stderr
    # the replayed one fails again and comes back
    wait_for(
        "the replayed message back",
        lambda: "poison-0" in sparkplane(host, "dead-letters", "list").stdout,
        timeout=30,
        every=0.5,
    )
    assert "2 purged" in sparkplane(host, "dead-letters", "purge", "--all").stdout
    assert "poison" not in sparkplane(host, "dead-letters", "list").stdout


def test_status_shows_clusters(host: DevhostProcess) -> None:
    w = host.client()
    v = w.clusters.spark_versions().versions[0].key
    c = w.clusters.create(
        cluster_name="cli-status", spark_version=v, node_type_id="rec-small", num_workers=1
    ).result()
    try:
        row = wait_for(
            "the running cluster in status",
            lambda: next(
                (
                    ln
                    for ln in sparkplane(host, "status").stdout.splitlines()
                    if "cli-status" in ln and "RUNNING" in ln
                ),
                None,
            ),
            timeout=30,
        )
        assert c.cluster_id in row and "local" in row and "1/1" in row
    finally:
        w.clusters.permanent_delete(c.cluster_id)


def test_azure_bootstrap_writes_an_operator_token_the_app_accepts(host: DevhostProcess) -> None:
    """Against the devhost's own store (SQLite) instead of Cosmos DB: the same code path."""
    r = sparkplane(
        host,
        "azure",
        "bootstrap",
        "--user",
        "me@example.com",
        env={"SPARKPLANE_STORE": "sqlite", "SPARKPLANE_OPERATOR_TOKEN_FILE": "/nonexistent"},
    )
    token_id, token = r.stdout.splitlines()[0].removeprefix("operator token ").split(": ")
    assert f"{host.url} accepts it" in r.stdout
    me = sparkplane(host, "tokens", "list", env={"SPARKPLANE_OPERATOR_TOKEN": token.strip()})
    assert token_id in me.stdout and "me@example.com" in me.stdout
    none = sparkplane(
        host, "azure", "bootstrap", "--user", "me", env={"SPARKPLANE_STORE": "cosmos"}, ok=False
    )
    assert none.stderr.strip() == (
        "sparkplane: --cosmos-endpoint is needed (the account's documentEndpoint)"
    )


def test_status_watch_refreshes_until_ctrl_c(host: DevhostProcess) -> None:
    """Ctrl-C once the view has refreshed ends --watch cleanly. The output is a terminal's
    (TTY_COMPATIBLE, rich's switch), so each refresh is written as it happens and the test
    interrupts only after two frames: interrupted after a fixed 3 s, a CLI still importing
    under load died of the signal (exit -2)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPARKPLANE_")},
        "SPARKPLANE_URL": host.url,
        "SPARKPLANE_DATA_DIR": str(host.data_dir),
        "COLUMNS": "250",
        "TTY_COMPATIBLE": "1",
    }
    p = subprocess.Popen(
        [sys.executable, "-m", "sparkplane_cli", "status", "--watch", "--interval", "0.2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stderr is not None
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(p.stdout.readline, "")))
    reader.start()
    try:
        wait_for("two frames", lambda: "".join(chunks).count("Clusters") >= 2 or None)
    finally:
        p.send_signal(signal.SIGINT)
        p.wait(timeout=20)
        reader.join(timeout=20)
    stdout, stderr = "".join(chunks), p.stderr.read()
    assert p.returncode == 0, stderr
    assert "Clusters" in stdout and "cluster-lifecycle" in stdout and "Traceback" not in stderr
