"""Class-data-sharing archives per role: a JVM that maps the classes a Master, a Worker, a
Spark Connect server or an executor loads from an archive, instead of parsing and verifying
them from the jars, starts in about half the time (docs/local-spark.md has the measurements).

    make spark-cds

builds them once under `.sparkplane/cds/spark-<version>-java-<version>/`: it starts one
cluster (a driver and a worker) with `-XX:ArchiveClassesAtExit`, waits until it is ready (a
query ran: the Connect server and its executor loaded what a query needs), stops it, and each
JVM writes its archive as it exits (the executor is stopped first and waited for: see
`_stop_executors`). A new Spark or Java version has a directory of its own, so
it is built again; the provisioner uses the archives of the versions it runs, when they are
there, and starts without them otherwise.

An archive is valid only for the class path it was made with, so every node that uses one
runs with the same SPARK_CONF_DIR, an empty directory beside the archives, and reads its own
spark-defaults.conf through `--properties-file` (a directory on a class path must be empty for
the JVM to map an archive). A cluster with configuration files of its own (`conf_files`) needs
its own conf directory on the class path: its nodes start without archives.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

from shared.adapters.local_spark.java import (
    JavaInfo,
    check_java,
    check_spark_home,
    default_spark_home,
)

log = logging.getLogger("sparkplane.local_spark")

ROLES = ("master", "worker", "connect", "executor")
DEFAULT_ROOT = Path(__file__).resolve().parents[3] / ".sparkplane" / "cds"


def archive_dir(root: Path, spark_version: str, java: JavaInfo) -> Path:
    return root / f"spark-{spark_version}-java-{java.version}"


def missing(directory: Path) -> frozenset[str]:
    return frozenset(role for role in ROLES if not (directory / f"{role}.jsa").is_file())


def complete(directory: Path) -> bool:
    """Every role's archive is there (a build that stopped half-way is not used)."""
    return not missing(directory)


def build(root: Path = DEFAULT_ROOT, *, timeout_s: float = 600, attempts: int = 3) -> Path:
    """The archives of the installed Spark and Java (built when missing). A JVM writes its
    archive as it exits, and a Worker kills its executor 10 s after asking it to stop (Spark's
    ExecutorRunner): on a loaded machine the executor can be killed before its archive is
    written. So a build starts the cluster again for the roles still missing, the others
    mapping the archives they have (less to do at exit), up to `attempts` times."""
    target: Path | None = None
    for attempt in range(1, attempts + 1):
        target = _attempt(root, timeout_s)
        if complete(target):
            return target
        log.warning(
            "class-data-sharing archives missing after a build",
            extra={"roles": sorted(missing(target)), "attempt": attempt},
        )
    assert target is not None
    raise RuntimeError(
        f"no archive written for {', '.join(sorted(missing(target)))} under {target}"
    )


def _attempt(root: Path, timeout_s: float) -> Path:
    """One cluster (a driver and a worker) started and stopped, writing the archives of the
    roles that have none yet."""
    from shared.adapters.local_spark.provisioner import LocalSparkProvisioner
    from shared.ports import NodeRequest

    spark_version, _ = check_spark_home(default_spark_home())
    target = archive_dir(root, spark_version, check_java())
    roles = missing(target)
    if not roles:
        return target
    if roles == frozenset(ROLES):  # nothing of an earlier build is kept
        shutil.rmtree(target, ignore_errors=True)
    (target / "conf").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sp-cds-") as tmp:
        p = LocalSparkProvisioner(Path(tmp), kill_grace_s=120, cds_root=root, cds_dump=roles)
        req = NodeRequest(
            cluster_id="cds-build",
            workspace_id="",
            node_type_id="local-small",
            driver_node_type_id="local-small",
            spark_version="",
            spark_conf={},
            spark_env_vars={},
            tags={},
        )
        p.start_driver(req)
        p.add_workers(req, 1)
        deadline = time.monotonic() + timeout_s
        while not all(n.status == "RUNNING" for n in p.observe("cds-build")) or (
            len(p.observe("cds-build")) < 2
        ):
            if time.monotonic() > deadline:
                p.stop_cluster("cds-build")
                raise TimeoutError("the archive cluster did not become ready")
            time.sleep(0.5)
        kept = _stop_executors(Path(tmp), target, deadline) if "executor" in roles else None
        p.stop_cluster("cds-build")
        while p.cluster_ids():
            if time.monotonic() > deadline:
                raise TimeoutError("the archive cluster did not stop")
            time.sleep(0.5)
        p.close()
    if kept is not None:
        kept.replace(target / "executor.jsa")
    return target


def _stop_executors(tmp: Path, target: Path, deadline: float) -> Path | None:
    """Stop the build's executor JVMs (SIGTERM) and wait until they have exited, their archive
    written: stopped with the cluster, the Worker would kill them 10 s after asking (Spark's
    ExecutorRunner), before a loaded machine has written it. The archive is set aside until the
    cluster is gone (returned: where), as the Worker starts another executor for the
    application, whose exit would write over it."""
    executors = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmd, cwd = proc.info["cmdline"] or [], proc.info["cwd"] or ""
        if cwd.startswith(str(tmp)) and any("CoarseGrainedExecutorBackend" in a for a in cmd):
            executors.append(proc)
    for proc in executors:
        with contextlib.suppress(psutil.NoSuchProcess):  # it ended on its own meanwhile
            proc.terminate()
    psutil.wait_procs(executors, timeout=max(1.0, deadline - time.monotonic()))
    archive = target / "executor.jsa"
    if not archive.is_file():
        return None
    return archive.replace(target / "executor.jsa.kept")


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    try:
        print(build())
    except (RuntimeError, TimeoutError) as e:
        print(f"class-data-sharing archives not built: {e}", file=sys.stderr)
        sys.exit(1)
