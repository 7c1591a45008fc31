"""The clusters' Spark credentials (shared/domain/spark_auth.py) and where they go."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.domain import spark_auth as sa
from shared.domain.node_env import spark_env_problem
from shared.settings import Settings


def test_credentials_are_per_cluster_and_per_purpose() -> None:
    a = sa.cluster_credentials("k1", "c-1")
    b = sa.cluster_credentials("k1", "c-2")
    a_again = sa.cluster_credentials("k1", "c-1")
    other_key = sa.cluster_credentials("k2", "c-1")
    assert a is not None and b is not None and other_key is not None
    assert a == a_again
    assert a.auth_secret != a.connect_token
    assert a.auth_secret != b.auth_secret and a.connect_token != b.connect_token
    assert a.connect_token != other_key.connect_token
    assert len(a.auth_secret) == 64  # 256 bits, hex


def test_no_key_no_credentials() -> None:
    assert sa.cluster_credentials("", "c-1") is None
    assert sa.auth_conf("") == {}


def test_repr_hides_the_secrets() -> None:
    creds = sa.cluster_credentials("k", "c")
    assert creds is not None
    assert creds.auth_secret not in repr(creds) and creds.connect_token not in repr(creds)


def test_auth_conf() -> None:
    assert sa.auth_conf("s3cr3t") == {
        "spark.authenticate": "true",
        "spark.authenticate.secret": "s3cr3t",
    }


@pytest.mark.parametrize(
    ("base", "token", "want"),
    [
        ("sc://localhost:15002", "abc", "sc://localhost:15002/;token=abc"),
        ("sc://localhost:15002/", "abc", "sc://localhost:15002/;token=abc"),
        ("sc://h:1/;use_ssl=true", "abc", "sc://h:1/;use_ssl=true;token=abc"),
        ("sc://h:1/;token=old;user_id=u", "new", "sc://h:1/;user_id=u;token=new"),
        ("sc://h:1", "", "sc://h:1"),
        ("", "abc", ""),
        ("sc://h:1", "a/b;c", "sc://h:1/;token=a%2Fb%3Bc"),
    ],
)
def test_connect_url(base: str, token: str, want: str) -> None:
    assert sa.connect_url(base, token) == want


def test_connect_url_is_what_pyspark_reads() -> None:
    from pyspark.sql.connect.client.core import DefaultChannelBuilder

    b = DefaultChannelBuilder(sa.connect_url("sc://localhost:15002", "tok"))
    assert b.token == "tok" and b.host == "localhost" and not b.use_ssl


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("sc://h:1/;token=x", "sc://h:1"),
        ("sc://h:1/;use_ssl=true;TOKEN=x", "sc://h:1/;use_ssl=true"),
        ("sc://h:1", "sc://h:1"),
    ],
)
def test_strip_token(url: str, want: str) -> None:
    assert sa.strip_token(url) == want


@pytest.mark.parametrize(
    "key",
    [
        "spark.authenticate",
        "spark.authenticate.secret",
        "spark.authenticate.secret.file",
        "spark.authenticate.secret.driver.file",
        "spark.connect.authenticate.token",
    ],
)
def test_reserved_conf(key: str) -> None:
    assert sa.reserved_conf(key)
    assert sa.without_reserved({key: "x", "spark.sql.shuffle.partitions": "4"}) == {
        "spark.sql.shuffle.partitions": "4"
    }


def test_authenticate_enable_sasl_is_not_reserved() -> None:
    assert not sa.reserved_conf("spark.network.crypto.enabled")


@pytest.mark.parametrize("name", sorted(sa.RESERVED_ENV))
def test_clusters_cannot_set_the_token_or_secret_env(name: str) -> None:
    assert spark_env_problem(name, "x") is not None


def test_node_request_carries_the_cluster_credentials() -> None:
    from shared.domain.cluster import Cluster
    from shared.services.lifecycle import node_request

    c = Cluster.model_validate(
        {
            "cluster_id": "c-9",
            "workspace_id": "w",
            "spec": {"cluster_name": "x", "spark_version": "4.1.x", "node_type_id": "n"},
        }
    )
    req = node_request(c, "key")
    creds = sa.cluster_credentials("key", "c-9")
    assert creds is not None
    assert (req.spark_auth_secret, req.connect_token) == (creds.auth_secret, creds.connect_token)
    assert creds.auth_secret not in repr(req) and creds.connect_token not in repr(req)
    bare = node_request(c)
    assert bare.spark_auth_secret == "" and bare.connect_token == ""


def test_local_key_made_once_private(tmp_path: Path) -> None:
    from shared.wiring import _with_spark_key

    s = Settings(data_dir=tmp_path, provisioner="records")
    first = _with_spark_key(s).spark_secret_key
    assert len(first) == 64
    assert (tmp_path / "spark-secret-key").stat().st_mode & 0o777 == 0o600
    assert _with_spark_key(s).spark_secret_key == first
    assert _with_spark_key(s.model_copy(update={"spark_secret_key": "set"})).spark_secret_key == (
        "set"
    )
    assert "k3y-value" not in repr(s.model_copy(update={"spark_secret_key": "k3y-value"}))


def test_arm_needs_the_key_setting(tmp_path: Path) -> None:
    from shared.wiring import _with_spark_key

    with pytest.raises(ValueError, match="SPARKPLANE_SPARK_SECRET_KEY"):
        _with_spark_key(Settings(data_dir=tmp_path, provisioner="arm"))


def test_get_cluster_gives_the_workspace_the_connect_url_with_its_token() -> None:
    """details() (GET and list, reached only for the caller's own workspace) adds the cluster's
    token to driver.connect_url and the SparkConnectUrl tag; the document keeps the bare URL."""
    from shared.domain.cluster import Cluster
    from shared.services.cluster_wire import ClusterWire

    c = Cluster.model_validate(
        {
            "cluster_id": "c-7",
            "workspace_id": "w",
            "spec": {"cluster_name": "x", "spark_version": "4.1.x", "node_type_id": "n"},
            "driver": {"connect_url": "sc://localhost:20001", "master_url": "spark://x:1"},
        }
    )
    out = ClusterWire({}, {}, spark_secret_key="k").details(c)
    creds = sa.cluster_credentials("k", "c-7")
    assert creds is not None
    want = f"sc://localhost:20001/;token={creds.connect_token}"
    assert out["driver"]["connect_url"] == want
    assert out["default_tags"]["SparkConnectUrl"] == want
    assert out["default_tags"]["SparkMasterUrl"] == "spark://x:1"
    assert c.driver is not None and c.driver["connect_url"] == "sc://localhost:20001"
    assert creds.auth_secret not in repr(out)
