"""The "Serverless Pool" cluster kind (Azure Databricks' historic serverless pool, the
high-concurrency profile): a cluster many users share interactively, sized by autoscale only.

Pure functions, no I/O. A cluster is serverless when its spark_conf has
`spark.databricks.cluster.profile = serverless` or its custom_tags have
`ResourceClass = Serverless`. The user gives only `autoscale` and `node_type_id`; `prepare`
checks that and fills in the rest: the runtime, the driver type, auto-termination after 120
minutes, autoscaling local storage, the tag, and the Spark configuration of `spark_conf`.

The keys `spark_conf` returns are owned by the profile: they are derived from the node type and
`max_workers` and recomputed on every `prepare`, so a user value for one of them is replaced
(and an edit of the node type or of max_workers takes effect). Other user keys are kept.

Every key was checked against the installed Spark 4.1 jars (the string constants of
org.apache.spark.internal.config.package$ in spark-core and of
org.apache.spark.sql.internal.SQLConf$ in spark-catalyst).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.domain.cluster import ClusterSpec
from shared.domain.nodes import NodeType
from shared.errors import InvalidParameterValue

PROFILE_KEY = "spark.databricks.cluster.profile"
PROFILE_VALUE = "serverless"
RESOURCE_CLASS_TAG = "ResourceClass"
RESOURCE_CLASS_VALUE = "Serverless"

# Auto-termination of a serverless pool when the user sets none (0 stays 0: disabled).
DEFAULT_AUTOTERMINATION_MINUTES = 120

# Executor memory: the node's memory minus a reserve for the JVM's off-heap use (metaspace,
# thread stacks, direct buffers, netty). It is Spark's own overhead rule for YARN and
# Kubernetes (spark.executor.memoryOverhead = max(384 MiB, 10%)); a standalone worker does not
# add it on top of spark.executor.memory, so it is taken out of the node's memory instead: the
# executor's whole process then fits in the node.
OVERHEAD_MIN_MB = 384
OVERHEAD_FRACTION = 0.10
MIN_EXECUTOR_MEMORY_MB = 256

# spark.sql.shuffle.partitions = 2 x the cluster's cores at max_workers, at least 8. Two waves
# of tasks per core at full size balance uneven partitions; adaptive execution coalesces small
# partitions after each shuffle, so the count sized for the largest cluster costs little when
# the pool is smaller. The floor keeps a one-core pool from shuffling into one or two huge
# partitions (which spill) before adaptive execution can split a skewed one.
SHUFFLE_PARTITIONS_PER_CORE = 2
MIN_SHUFFLE_PARTITIONS = 8

# Dynamic allocation releases an executor idle this long (Spark's default, stated so it is part
# of the profile). Tasks waiting this long ask for executors (Spark's default too).
EXECUTOR_IDLE_TIMEOUT = "60s"
SCHEDULER_BACKLOG_TIMEOUT = "1s"
# An executor that holds shuffle files of an idle query is released after this long. Spark's
# default is infinite, and the shuffle files of a finished Spark Connect query live until the
# driver's garbage collector drops its references (the ContextCleaner's periodic GC runs every
# 30 minutes): without a timeout a shared pool would keep executors of long-finished queries.
# Five minutes covers a user re-running related notebook cells (which reuse the shuffle
# output), and is well inside the control plane's own autoscaling window for workers that hold
# state (15 minutes, shared.domain.autoscale), so Spark frees the slots first.
SHUFFLE_TRACKING_TIMEOUT = "300s"

FAIR_SCHEDULER_FILE = "fairscheduler.xml"


def is_serverless(spec: ClusterSpec) -> bool:
    return (
        spec.spark_conf.get(PROFILE_KEY) == PROFILE_VALUE
        or spec.custom_tags.get(RESOURCE_CLASS_TAG) == RESOURCE_CLASS_VALUE
    )


def is_serverless_body(body: Mapping[str, Any]) -> bool:
    """`is_serverless` of a raw create/edit body, before parsing (a serverless body may omit
    spark_version, which parsing requires); tolerates fields of the wrong type."""
    conf = body.get("spark_conf")
    tags = body.get("custom_tags")
    return (isinstance(conf, Mapping) and conf.get(PROFILE_KEY) == PROFILE_VALUE) or (
        isinstance(tags, Mapping) and tags.get(RESOURCE_CLASS_TAG) == RESOURCE_CLASS_VALUE
    )


def executor_cores(worker: NodeType) -> int:
    """The node's cores, rounded down and at least 1: never more than its worker offers."""
    return max(1, int(worker.num_cores))


def executor_memory_mb(worker: NodeType) -> int:
    """The node's memory minus max(384 MiB, 10%), at least 256 MiB (see OVERHEAD_MIN_MB)."""
    reserve = max(OVERHEAD_MIN_MB, int(worker.memory_mb * OVERHEAD_FRACTION))
    return max(MIN_EXECUTOR_MEMORY_MB, worker.memory_mb - reserve)


def shuffle_partitions(worker: NodeType, max_workers: int) -> int:
    cores = max(1, max_workers) * executor_cores(worker)
    return max(MIN_SHUFFLE_PARTITIONS, SHUFFLE_PARTITIONS_PER_CORE * cores)


def spark_conf(worker: NodeType, max_workers: int) -> dict[str, str]:
    """The Spark configuration of a pool shared by concurrent interactive users.

    FAIR scheduling (with `fair_scheduler_xml`, jobs of different sessions share the slots
    instead of queueing behind each other); adaptive query execution; one executor per worker
    node using all of its cores and its memory less the overhead reserve; dynamic allocation
    between 0 and max_workers executors, tracking shuffle files (no external shuffle service).
    """
    return {
        "spark.scheduler.mode": "FAIR",
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.adaptive.skewJoin.enabled": "true",
        "spark.sql.shuffle.partitions": str(shuffle_partitions(worker, max_workers)),
        "spark.executor.cores": str(executor_cores(worker)),
        "spark.executor.memory": f"{executor_memory_mb(worker)}m",
        "spark.dynamicAllocation.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.enabled": "true",
        "spark.dynamicAllocation.shuffleTracking.timeout": SHUFFLE_TRACKING_TIMEOUT,
        "spark.dynamicAllocation.minExecutors": "0",
        "spark.dynamicAllocation.maxExecutors": str(max_workers),
        "spark.dynamicAllocation.executorIdleTimeout": EXECUTOR_IDLE_TIMEOUT,
        "spark.dynamicAllocation.schedulerBacklogTimeout": SCHEDULER_BACKLOG_TIMEOUT,
    }


def prepare(
    spec: ClusterSpec,
    *,
    worker: NodeType,
    driver: NodeType | None,
    default_spark_version: str,
) -> ClusterSpec:
    """Check a serverless spec and fill in what the profile decides (idempotent).

    `worker` is the node type of spec.node_type_id (or the type to use when the spec has none),
    `driver` the node type of spec.driver_node_type_id (None: the driver is a worker-type node);
    the caller resolves them and reports unknown ids. An empty spark_version means "none given"
    and becomes `default_spark_version`. Call it before `validate_spec` (which then checks the
    result as for any cluster).
    """
    if spec.node_type_id is not None and spec.node_type_id != worker.node_type_id:
        raise ValueError(f"worker is {worker.node_type_id}, the spec has {spec.node_type_id}")
    if (
        driver is not None
        and spec.driver_node_type_id is not None
        and spec.driver_node_type_id != driver.node_type_id
    ):
        raise ValueError(
            f"driver is {driver.node_type_id}, the spec has {spec.driver_node_type_id}"
        )
    if spec.num_workers is not None:
        raise InvalidParameterValue(
            "A Serverless Pool is sized by autoscale only: remove num_workers and give "
            "autoscale.min_workers and autoscale.max_workers."
        )
    if spec.autoscale is None:
        raise InvalidParameterValue(
            "A Serverless Pool needs autoscale (min_workers and max_workers)."
        )
    for field in ("instance_pool_id", "driver_instance_pool_id"):
        if getattr(spec, field) is not None:
            raise InvalidParameterValue(
                f"A Serverless Pool cannot be combined with an instance pool: remove {field}."
            )
    conf = {
        **spec.spark_conf,
        **spark_conf(worker, spec.autoscale.max_workers),
        PROFILE_KEY: PROFILE_VALUE,
    }
    updates: dict[str, Any] = {
        "spark_version": spec.spark_version or default_spark_version,
        "node_type_id": worker.node_type_id,
        "driver_node_type_id": spec.driver_node_type_id
        or (driver.node_type_id if driver is not None else worker.node_type_id),
        "autotermination_minutes": DEFAULT_AUTOTERMINATION_MINUTES
        if spec.autotermination_minutes is None
        else spec.autotermination_minutes,
        "enable_elastic_disk": True,
        "custom_tags": {**spec.custom_tags, RESOURCE_CLASS_TAG: RESOURCE_CLASS_VALUE},
        "spark_conf": conf,
    }
    return spec.model_copy(update=updates)


def fair_scheduler_xml() -> str:
    """The fair scheduler's allocation file: the `default` pool shares FAIR among its jobs.

    Jobs without a `spark.scheduler.pool` local property (Spark Connect sessions set none) run
    in the pool named `default`. Without an allocation file Spark creates that pool with
    schedulingMode FIFO, so even with spark.scheduler.mode=FAIR one user's long job would hold
    every slot; here it is FAIR, weight 1, minShare 0.

    Checked in the installed Spark 4.1 (javap of org.apache.spark.scheduler.
    FairSchedulableBuilder in spark-core): when spark.scheduler.allocation.file is unset it
    reads the resource "fairscheduler.xml" with Utils.getSparkClassLoader.getResourceAsStream
    (the class path, which the launcher's AbstractCommandBuilder.buildClassPath starts with
    the conf dir); the pool name is the attribute "name" of the element "pool", the
    properties are the elements "schedulingMode", "weight" and "minShare"; the default pool's
    built-in mode is FIFO.
    """
    return (
        '<?xml version="1.0"?>\n'
        "<allocations>\n"
        '  <pool name="default">\n'
        "    <schedulingMode>FAIR</schedulingMode>\n"
        "    <weight>1</weight>\n"
        "    <minShare>0</minShare>\n"
        "  </pool>\n"
        "</allocations>\n"
    )


def conf_files(spec: ClusterSpec) -> dict[str, str]:
    """Files for the Spark conf directory of the cluster's nodes (NodeRequest.conf_files)."""
    return {FAIR_SCHEDULER_FILE: fair_scheduler_xml()} if is_serverless(spec) else {}
