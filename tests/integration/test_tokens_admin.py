"""Token API, operator endpoints, rate limiting and poison messages, through devhost."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import InvalidParameterValue, PermissionDenied, Unauthenticated

from devhost.process import DevhostProcess
from shared.adapters.embedded_bus import EmbeddedBus
from shared.ports import OutMessage
from tests.support import http, wait_for

V = "4.1.x-scala2.13"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_api_with_the_sdk(devhost: DevhostProcess) -> None:
    w = devhost.client()
    created = w.tokens.create(comment="ci", lifetime_seconds=3600)
    assert created.token_value and created.token_info.comment == "ci"
    assert created.token_info.expiry_time > created.token_info.creation_time
    ids = [t.token_id for t in w.tokens.list()]
    assert created.token_info.token_id in ids
    r = http.get(devhost.url + "/api/2.1/clusters/list", headers=bearer(created.token_value))
    assert r.status_code == 200
    w.tokens.delete(created.token_info.token_id)
    r = http.get(devhost.url + "/api/2.1/clusters/list", headers=bearer(created.token_value))
    assert r.status_code == 401
    assert created.token_info.token_id not in [t.token_id for t in w.tokens.list()]
    # tokens are stored hashed: the value is nowhere in the store file
    raw = b"".join(p.read_bytes() for p in devhost.data_dir.glob("store.db*"))
    assert devhost.token.encode() not in raw and created.token_value.encode() not in raw


def test_operator_endpoints_and_workspace_isolation(devhost: DevhostProcess) -> None:
    op = devhost.operator_token
    assert (devhost.data_dir / "operator-token").stat().st_mode & 0o777 == 0o600
    url = devhost.url + "/api/admin/workspaces"
    # a user token cannot call admin endpoints, an operator token cannot call workspace APIs
    assert http.get(url, headers=bearer(devhost.token)).status_code == 403
    r = http.get(devhost.url + "/api/2.1/clusters/list", headers=bearer(op))
    assert r.status_code == 403 and r.json()["error_code"] == "PERMISSION_DENIED"
    assert http.get(url).status_code == 401

    r = http.post(url, json={"name": "team a", "workspace_id": "team-a"}, headers=bearer(op))
    assert r.status_code == 200, r.text
    ws_token = r.json()["token_value"]
    r = http.post(url, json={"name": "again", "workspace_id": "team-a"}, headers=bearer(op))
    assert r.status_code == 409 and r.json()["error_code"] == "RESOURCE_ALREADY_EXISTS"
    r = http.post(url, json={"name": "x", "workspace_id": "Bad_Id!"}, headers=bearer(op))
    assert r.status_code == 400
    listed = http.get(url, headers=bearer(op)).json()["workspaces"]
    assert {w["workspace_id"] for w in listed} == {"local", "team-a"}

    body = {"spark_version": V, "node_type_id": "rec-small", "num_workers": 0}
    r = http.post(devhost.url + "/api/2.1/clusters/create", json=body, headers=bearer(ws_token))
    cid = r.json()["cluster_id"]
    r = http.get(
        devhost.url + "/api/2.1/clusters/get",
        params={"cluster_id": cid},
        headers=bearer(devhost.token),
    )
    assert r.status_code == 404  # another workspace's cluster

    assert http.delete(url + "/team-a", headers=bearer(op)).status_code == 200
    r = http.get(devhost.url + "/api/2.1/clusters/list", headers=bearer(ws_token))
    assert r.status_code == 401  # its tokens are revoked at once
    # the deletion goes on in the lifecycle queue (DELETING meanwhile), then it is gone
    deadline = time.monotonic() + 30
    while (r := http.get(url + "/team-a", headers=bearer(op))).status_code != 404:
        assert r.json()["state"] == "DELETING" and time.monotonic() < deadline
        time.sleep(0.2)


def test_rate_limit_answers_429_with_retry_after_and_the_sdk_waits(tmp_path: Path) -> None:
    h = DevhostProcess(
        tmp_path / "data",
        env={"SPARKPLANE_RATE_LIMIT_PER_S": "2", "SPARKPLANE_RATE_LIMIT_BURST": "3"},
    ).start()
    try:
        codes = []
        with httpx.Client(base_url=h.url, headers=bearer(h.token)) as c:
            for _ in range(8):
                r = c.get("/api/2.1/clusters/list")
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
                    assert int(r.headers["Retry-After"]) >= 1
        assert codes[:3] == [200, 200, 200] and 429 in codes
        # the SDK honours Retry-After and retries until it gets through
        w = h.client()
        t0 = time.monotonic()
        for _ in range(6):
            list(w.clusters.list())
        assert time.monotonic() - t0 >= 1.0
    finally:
        h.close()


def test_poison_message_is_dead_lettered_and_blocks_no_other_cluster(
    devhost: DevhostProcess,
) -> None:
    bus = EmbeddedBus(devhost.data_dir / "bus.db")
    try:
        poison = json.dumps({"type": "explode", "cluster_id": "x", "workspace_id": "local"})
        bus.send(
            "cluster-lifecycle",
            [OutMessage(poison.encode(), message_id="poison-1", session_id="x")],
        )
        w = devhost.client()
        c = w.clusters.create_and_wait(
            spark_version=V,
            node_type_id="rec-small",
            num_workers=1,
            timeout=timedelta(seconds=60),
        )
        assert len(c.executors) == 1
        op = devhost.operator_token
        url = devhost.url + "/api/admin/dead-letters/cluster-lifecycle"
        [m] = wait_for(
            "the dead letter", lambda: http.get(url, headers=bearer(op)).json()["messages"], 30
        )
        assert m["message_id"] == "poison-1" and m["delivery_count"] == 10
        assert m["dead_letter_reason"] == "MaxDeliveryCountExceeded"
        assert "unknown lifecycle message type" in m["dead_letter_description"]
        one = http.get(f"{url}/{m['sequence_number']}", headers=bearer(op)).json()
        assert json.loads(one["body"])["type"] == "explode"
        r = http.post(f"{url}/{m['sequence_number']}/resubmit", headers=bearer(op))
        assert r.status_code == 200
        r = http.post(f"{url}/{m['sequence_number']}/resubmit", headers=bearer(op))
        assert r.status_code == 404
    finally:
        bus.close()


def test_sdk_sees_auth_errors(devhost: DevhostProcess) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.config import Config

    bad = WorkspaceClient(
        config=Config(host=devhost.url, token="dapi0000", auth_type="pat", retry_timeout_seconds=5)
    )
    with pytest.raises(Unauthenticated):
        list(bad.clusters.list())
    op = devhost.operator_token
    as_op = WorkspaceClient(
        config=Config(host=devhost.url, token=op, auth_type="pat", retry_timeout_seconds=5)
    )
    with pytest.raises(PermissionDenied):
        list(as_op.clusters.list())


def test_tokens_never_reach_the_logs(tmp_path: Path) -> None:
    h = DevhostProcess(tmp_path / "data", env={"SPARKPLANE_LOG_LEVEL": "DEBUG"}).start()
    try:
        w = h.client()
        made = w.tokens.create(comment="secret-check", lifetime_seconds=600)
        c = w.clusters.create_and_wait(
            spark_version=V,
            node_type_id="rec-small",
            num_workers=1,
            timeout=timedelta(seconds=60),
        )
        w.clusters.delete_and_wait(c.cluster_id, timeout=timedelta(seconds=60))
        http.get(h.url + "/api/2.1/clusters/list", headers=bearer("dapi" + "f" * 32))
        op = h.operator_token
        http.post(h.url + "/api/admin/workspaces", json={"name": "x"}, headers=bearer(op))
    finally:
        h.close()
    log = h.log.read_text()
    assert "cluster created" in log  # the structured log is really written
    assert h.token in h.out.read_text()  # only the banner on stdout shows the local token
    for secret in (h.token, made.token_value, op, "dapi" + "f" * 32):
        assert secret not in log


def test_token_lifetime_rules_with_the_sdk(tmp_path: Path) -> None:
    h = DevhostProcess(tmp_path / "data", env={"SPARKPLANE_TOKEN_MAX_LIFETIME_S": "3600"}).start()
    try:
        w = h.client()
        # no lifetime asked for: the maximum; a longer one than the maximum: refused
        t = w.tokens.create(comment="capped")
        life = t.token_info.expiry_time - t.token_info.creation_time
        assert 3_599_000 <= life <= 3_600_000
        with pytest.raises(InvalidParameterValue, match="maximum token lifetime"):
            w.tokens.create(comment="too long", lifetime_seconds=3601)
        # a short-lived token cannot mint a longer-lived (or non-expiring) one
        short = w.tokens.create(comment="short", lifetime_seconds=60)
        ws = WorkspaceClient(config=Config(host=h.url, token=short.token_value, auth_type="pat"))
        child = ws.tokens.create(comment="child")
        assert child.token_info.expiry_time <= short.token_info.expiry_time
        with pytest.raises(InvalidParameterValue, match="expires sooner"):
            ws.tokens.create(comment="child", lifetime_seconds=120)
    finally:
        h.close()


def test_operator_tokens_are_listed_and_revoked_and_stay_revoked_after_a_restart(
    tmp_path: Path,
) -> None:
    h = DevhostProcess(tmp_path / "data").start()
    try:
        url = h.url + "/api/admin/tokens"
        boot = h.operator_token
        listed = http.get(url, headers=bearer(boot)).json()["token_infos"]
        assert [(t["user"], t["comment"]) for t in listed] == [("operator@local", "operator")]
        boot_id = listed[0]["token_id"]
        r = http.post(
            url, json={"comment": "second", "lifetime_seconds": 600}, headers=bearer(boot)
        )
        assert r.status_code == 200, r.text
        second, info = r.json()["token_value"], r.json()["token_info"]
        assert info["user"] == "operator@local" and info["expiry_time"] > 0
        ids = {t["token_id"] for t in http.get(url, headers=bearer(second)).json()["token_infos"]}
        assert ids == {boot_id, info["token_id"]}
        # a workspace made with the short-lived operator token: its first token dies with it
        r = http.post(
            h.url + "/api/admin/workspaces",
            json={"name": "t", "workspace_id": "t"},
            headers=bearer(second),
        )
        assert r.status_code == 200, r.text
        assert 0 < r.json()["token_info"]["expiry_time"] <= info["expiry_time"]
        # a user token can neither list nor revoke them
        assert http.get(url, headers=bearer(h.token)).status_code == 403
        assert http.delete(f"{url}/{boot_id}", headers=bearer(h.token)).status_code == 403
        # the second token revokes the bootstrap one
        assert http.delete(f"{url}/{boot_id}", headers=bearer(second)).status_code == 200
        assert http.get(url, headers=bearer(boot)).status_code == 401
        assert http.delete(f"{url}/{boot_id}", headers=bearer(second)).status_code == 404
        h.stop()
        h.start()
        # the revoked bootstrap token is not re-registered; the file holds a new one
        assert http.get(url, headers=bearer(boot)).status_code == 401
        new_boot = h.operator_token
        assert new_boot != boot
        assert (h.data_dir / "operator-token").stat().st_mode & 0o777 == 0o600
        r = http.get(url, headers=bearer(new_boot))
        assert r.status_code == 200
        assert boot_id not in {t["token_id"] for t in r.json()["token_infos"]}
        assert http.get(url, headers=bearer(second)).status_code == 200
        # the same for the local user token, revoked through the Token API
        w = h.client()
        old = h.token
        w.tokens.delete(next(t.token_id for t in w.tokens.list() if t.comment == "local"))
        h.stop()
        h.start()
        assert http.get(h.url + "/api/2.1/clusters/list", headers=bearer(old)).status_code == 401
        assert h.token != old
        assert http.get(h.url + "/api/2.1/clusters/list", headers=bearer(h.token)).is_success
    finally:
        h.close()


def test_bad_tokens_are_throttled_per_client_address_through_devhost(tmp_path: Path) -> None:
    """The attacker connects from 127.0.0.2 (all of 127/8 is loopback), the good client from
    127.0.0.1: devhost appends each connection's peer to X-Forwarded-For, as the Functions
    host's front end does."""
    h = DevhostProcess(
        tmp_path / "data",
        env={
            "SPARKPLANE_BAD_AUTH_RATE_LIMIT_PER_S": "0.01",
            "SPARKPLANE_BAD_AUTH_RATE_LIMIT_BURST": "5",
        },
    ).start()
    try:
        attacker = httpx.Client(
            base_url=h.url, transport=httpx.HTTPTransport(local_address="127.0.0.2")
        )
        with attacker:
            codes = []
            for i in range(8):
                # a forged X-Forwarded-For of its own changes nothing
                r = attacker.get(
                    "/api/2.1/clusters/list",
                    headers={**bearer(f"dapi{i:032x}"), "X-Forwarded-For": f"10.0.0.{i}"},
                )
                codes.append(r.status_code)
            assert codes == [401] * 5 + [429] * 3
            assert r.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
            assert int(r.headers["Retry-After"]) >= 1
            assert attacker.get("/api/2.1/clusters/list").status_code == 429  # no token either
        # the good client on another address is served; the SDK sees its own errors as before
        w = h.client()
        assert list(w.clusters.list()) == []
        bad = WorkspaceClient(config=Config(host=h.url, token="dapi" + "f" * 32, auth_type="pat"))
        with pytest.raises(Unauthenticated):
            list(bad.clusters.list())
    finally:
        h.close()
