"""The local Spark provisioner: every cluster is a real Apache Spark standalone cluster made of
local processes (the default provisioner of `make run`).

- A driver node is a standalone Master plus a Spark Connect server: a Spark application in
  client mode attached to that master. Attaching with `SparkSession.builder.remote(connect_url)`
  is this system's "notebook attached to the cluster".
- A worker node is one standalone Worker process (its executors and Python workers are its
  child processes).
- Spark is the one bundled in the installed `pyspark` package (bin/spark-class,
  bin/spark-submit, jars/). Java 17+ is checked when the provisioner is built.
- Every process binds 127.0.0.1 and runs in a session (and process group) of its own: nodes
  outlive a crash of the control plane, and a whole node (the JVM, its executors, their Python
  workers) is signalled at once.
- Every process starts from an environment built from nothing (`node_environment`,
  shared/domain/node_env.py): PATH (this interpreter's bin dir, JAVA_HOME/bin, the system's),
  HOME (the node's directory), LANG=C.UTF-8, PYSPARK_PYTHON (this interpreter), the cluster's
  accepted spark_env_vars (not for the agent), then the node's Spark and SPARKPLANE_* settings.
  Nothing of the control plane's own environment (its settings, cloud keys, tokens) reaches a
  node. The processes run with umask 077.
- A request with credentials (`NodeRequest.spark_auth_secret`, `connect_token`;
  shared/domain/spark_auth.py) makes an authenticated cluster: `spark.authenticate` and the
  secret in every process's 0600 spark-defaults.conf (executors get it from their Worker), the
  Connect token in the Connect server's environment, the connect URL on `localhost` (where
  pyspark sends a token without TLS). A pool node's hot master, started before its cluster,
  has a random secret of the node's own, made anew each time the node becomes idle; the
  cluster that takes the node as its driver keeps that master and uses its secret as the
  cluster's (docs/pools.md, "Hot nodes"). An idle pool node may instead run a hot Worker
  registered with an idle master of its pool, with that master's secret; the cluster that
  takes the master takes it with it (docs/pools.md, "Hot Workers").
- Everything the provisioner knows is on disk (SQLite under `data_dir`), so a new instance
  re-adopts the nodes still running (pid and process create time checked) and reports the dead
  ones LOST. Ports come from an allocation table in the same file and are checked free before
  use, so clusters never collide, across restarts too.

Node lifecycle (the `phase` column): `active` (STARTING until ready, then RUNNING; LOST when a
process died), `decommissioning` (a worker that got SIGPWR: Spark moves its blocks away and its
executors exit), `terminating`/`stopping` (SIGTERM sent; SIGKILL after a grace period). Removed
nodes disappear once no process of theirs is left. The slow steps are carried on by `observe`,
`cluster_ids` and a small background thread, so every public call returns quickly.

Files under `data_dir` (0700, and so is every directory made here; files 0600):

    local_spark.sqlite              nodes and port allocations
    logs/<cluster_id>/<node_id>/    <process>.out and <process>.err (Spark logs to stderr)
    nodes/<cluster_id>/<node_id>/   conf-<process>/spark-defaults.conf, work/ (SPARK_WORKER_DIR,
                                    executor logs), scratch/ (SPARK_LOCAL_DIRS, shuffle files),
                                    spark-secret (a pool node's own Spark secret, or its
                                    hot Worker's master's)
    launches.json                   Spark launcher answers per process shape (launch.py)

The package, by concern (each module's doc says more):

    provisioner.py   the Provisioner port: observe, start_driver, add/remove workers, stop
    node_start.py    a node's processes started: master, Connect server, Worker, agent
    pools.py         pool nodes: warm idle nodes, taken by clusters and given back
    hot_workers.py   idle pool nodes that run a Worker of an idle master of their pool
    supervision.py   node status (alive, ready, lost) and removal step by step, the reaper
    processes.py     starting node processes, finding and signalling them
    conf.py          Spark settings, JVM options and command lines (configuration rendering)
    launch.py        node JVMs started without a launcher JVM in front (its answers kept)
    cds.py           class-data-sharing archives per role (`make spark-cds`)
    store.py         the SQLite file of nodes and port allocations
    java.py          Java and the Spark distribution

The decisions (node types, ports and memory per role, which pool nodes a cluster takes, when a
node is ready) are pure functions in shared/domain/node_rules.py.
"""

from shared.adapters.local_spark.conf import (
    CONNECT_HOST,
    DAEMON_JAVA_OPTS,
    DECOMMISSION_SIGNAL,
    DEFAULT_CONF,
    EXECUTOR_JAVA_OPTS,
    LOOPBACK,
    PINNED_CONF,
)
from shared.adapters.local_spark.java import (
    MIN_JAVA,
    JavaInfo,
    JavaRequirementError,
    SparkHomeError,
    check_java,
    default_spark_home,
    spark_build,
)
from shared.adapters.local_spark.processes import ENV_CLUSTER, ENV_DATA_DIR, ENV_NODE
from shared.adapters.local_spark.provisioner import LocalSparkProvisioner
from shared.domain.node_rules import (
    DAEMON_MEMORY,
    DRIVER_MEMORY,
    NODE_TYPES,
    PORTS_DRIVER,
    PORTS_POOL,
    PORTS_WORKER,
)

__all__ = [
    "CONNECT_HOST",
    "DAEMON_JAVA_OPTS",
    "DAEMON_MEMORY",
    "DECOMMISSION_SIGNAL",
    "DEFAULT_CONF",
    "DRIVER_MEMORY",
    "ENV_CLUSTER",
    "ENV_DATA_DIR",
    "ENV_NODE",
    "EXECUTOR_JAVA_OPTS",
    "LOOPBACK",
    "MIN_JAVA",
    "NODE_TYPES",
    "PINNED_CONF",
    "PORTS_DRIVER",
    "PORTS_POOL",
    "PORTS_WORKER",
    "JavaInfo",
    "JavaRequirementError",
    "LocalSparkProvisioner",
    "SparkHomeError",
    "check_java",
    "default_spark_home",
    "spark_build",
]
