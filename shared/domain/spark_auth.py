"""Credentials of a cluster's Spark endpoints (pure: no I/O).

Every cluster has two secrets of its own, derived from the control plane's key
(`Settings.spark_secret_key`) and the cluster id, so the lifecycle, GET cluster and any
instance of the app compute the same ones and no document stores them:

- the Spark authentication secret (`spark.authenticate=true` + `spark.authenticate.secret`):
  the standalone master refuses a worker or an application without it, and executors get it
  from their worker (in their environment, never on a command line);
- the Spark Connect token (`SPARK_CONNECT_AUTHENTICATE_TOKEN`): the Connect server refuses a
  client without it. GET cluster gives it to the cluster's workspace in the connect URL's
  `;token=` parameter, so `SparkSession.builder.remote(url)` works as is.

An empty key means no credentials (clusters of the record provisioner, which runs no Spark).

**Adopted credentials.** The id the credentials are derived from is the cluster's own, unless
its driver is a hot pool node: such a node runs its master and Spark Connect server while idle,
with credentials derived from a credential id of its own (`pool_node_credential_id`: the node
id and a nonce drawn each time the node becomes idle), and the one cluster that takes it as its
driver adopts that id (`adopted_credential_id`), so the running server need not restart. The
cluster document stores the id (`Cluster.credential_id`, not a secret); `credentials_of` is what
GET cluster, the lifecycle and the workers use. A node's id is never another cluster's: a new
nonce each idle period, and a reported id that is not a pool node's is ignored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

AUTHENTICATE_CONF = "spark.authenticate"
SECRET_CONF = "spark.authenticate.secret"
CONNECT_TOKEN_CONF = "spark.connect.authenticate.token"
CONNECT_TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
# What Spark's own processes use to hand the secret on (the Worker to its executors).
SECRET_ENV = "_SPARK_AUTH_SECRET"
# spark_conf keys a cluster may not set: they would turn authentication off or pick the secret.
RESERVED_CONF = frozenset(
    {AUTHENTICATE_CONF, SECRET_CONF, CONNECT_TOKEN_CONF, "spark.authenticate.secret.file"}
)
RESERVED_CONF_PREFIXES = ("spark.authenticate.secret.",)
# Environment names a cluster's spark_env_vars may not set, for the same reason.
RESERVED_ENV = frozenset({CONNECT_TOKEN_ENV, SECRET_ENV})


@dataclass(frozen=True, slots=True)
class SparkCredentials:
    """A cluster's Spark secret and Connect token (never printed by repr)."""

    auth_secret: str = field(repr=False)
    connect_token: str = field(repr=False)


def _derive(key: str, purpose: str, cluster_id: str) -> str:
    msg = f"sparkplane:{purpose}:{cluster_id}".encode()
    return hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()


def cluster_credentials(key: str, cluster_id: str) -> SparkCredentials | None:
    """The cluster's credentials, or None without a key. Two independent values: knowing the
    Connect token does not give the standalone secret (and the other way round)."""
    if not key:
        return None
    return SparkCredentials(
        auth_secret=_derive(key, "spark-authenticate", cluster_id),
        connect_token=_derive(key, "spark-connect", cluster_id),
    )


# The driver node's attribute that names the credential id it runs with (a hot pool node's).
CREDENTIAL_ID_ATTR = "credential_id"
POOL_NODE_PREFIX = "pool-node:"


def pool_node_credential_id(node_id: str, nonce: str) -> str:
    """The credential id of a pool node for one idle period (`nonce`: new each period)."""
    if not node_id or not nonce:
        raise ValueError("a pool node's credential id needs its node id and a nonce")
    return f"{POOL_NODE_PREFIX}{node_id}:{nonce}"


def adopted_credential_id(cluster_id: str, reported: str | None) -> str:
    """Which id a cluster's credentials come from, given what its driver node reports: a pool
    node's credential id is adopted; anything else (none, the cluster's own id, another
    cluster's id) means the cluster's own id, stored as ""."""
    if reported and reported.startswith(POOL_NODE_PREFIX) and reported != POOL_NODE_PREFIX:
        return reported
    return ""


def credentials_of(key: str, cluster_id: str, credential_id: str = "") -> SparkCredentials | None:
    """The credentials a cluster uses: from its adopted credential id, else its own id."""
    return cluster_credentials(key, credential_id or cluster_id)


def auth_conf(secret: str) -> dict[str, str]:
    """The spark-defaults.conf settings of every process of a cluster (master, workers, the
    Connect server and through it its executors); none without a secret."""
    if not secret:
        return {}
    return {AUTHENTICATE_CONF: "true", SECRET_CONF: secret}


def reserved_conf(key: str) -> bool:
    """A spark_conf key the provisioner owns (authentication)."""
    return key in RESERVED_CONF or key.startswith(RESERVED_CONF_PREFIXES)


def without_reserved(conf: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in conf.items() if not reserved_conf(k)}


def connect_url(base: str, token: str) -> str:
    """`base` (sc://host:port, maybe with `/;param=value` parameters) with Spark Connect's
    `token` parameter; `base` itself without a token. pyspark sends the token as a bearer
    header, over TLS unless the host is `localhost`."""
    if not base or not token:
        return base
    url = strip_token(base)
    sep = ";" if "/;" in url else "/;"
    return f"{url.rstrip('/') if sep == '/;' else url}{sep}token={quote(token, safe='')}"


def strip_token(url: str) -> str:
    """The URL without its token parameter (what logs may show)."""
    if "/;" not in url:
        return url
    head, _, params = url.partition("/;")
    kept = [p for p in params.split(";") if p and not p.lower().startswith("token=")]
    return f"{head}/;{';'.join(kept)}" if kept else head
