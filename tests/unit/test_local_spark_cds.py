"""Which nodes map class-data-sharing archives, and with which JVM options
(shared/adapters/local_spark/cds.py, processes.Launcher)."""

from __future__ import annotations

from pathlib import Path

from shared.adapters.local_spark import cds
from shared.adapters.local_spark.java import JavaInfo
from shared.adapters.local_spark.processes import Launcher
from shared.ports import NodeRequest

JAVA = JavaInfo("/usr/bin/java", "17.0.15", 17, Path("/usr/lib/jvm/java-17"))


def test_archives_are_kept_per_spark_and_java_version(tmp_path: Path) -> None:
    d = cds.archive_dir(tmp_path, "4.1.4", JAVA)
    assert d == tmp_path / "spark-4.1.4-java-17.0.15"
    d.mkdir()
    for role in cds.ROLES[:-1]:
        (d / f"{role}.jsa").write_bytes(b"")
    assert not cds.complete(d)  # a build that stopped half-way is not used
    (d / f"{cds.ROLES[-1]}.jsa").write_bytes(b"")
    assert cds.complete(d)


def launcher(tmp_path: Path, cds_dir: Path | None, dump: frozenset[str] = frozenset()) -> Launcher:
    return Launcher(
        data_dir=tmp_path,
        spark_home=tmp_path,
        java_home=tmp_path,
        store=None,  # type: ignore[arg-type]  # not used by what is tested here
        daemon_java_opts="",
        cds_dir=cds_dir,
        cds_dump=dump,
    )


def test_nodes_map_archives_unless_the_cluster_has_conf_files(tmp_path: Path) -> None:
    req = NodeRequest("c", "w", "local-small", "local-small", "")
    with_files = NodeRequest("c", "w", "local-small", "local-small", "", conf_files={"a": "b"})
    on = launcher(tmp_path, tmp_path / "cds")
    assert on.cds_for(req) and on.cds_for(None)  # None: an idle pool node's warm master
    assert not on.cds_for(with_files)
    assert not launcher(tmp_path, None).cds_for(req)
    assert on.cds_opts("worker") == (
        f"-XX:SharedArchiveFile={tmp_path / 'cds' / 'worker.jsa'} -Xshare:auto "
        "-XX:+UnlockDiagnosticVMOptions -XX:ArchiveRelocationMode=0"
    )
    # A build writes the archives it lacks and maps those it has (a second attempt's).
    building = launcher(tmp_path, tmp_path / "cds", dump=frozenset({"master"}))
    assert (
        building.cds_opts("master") == f"-XX:ArchiveClassesAtExit={tmp_path / 'cds' / 'master.jsa'}"
    )
    assert building.cds_opts("worker").startswith("-XX:SharedArchiveFile=")


def test_executors_get_the_serial_collector_unless_the_cluster_chooses_one() -> None:
    from shared.adapters.local_spark import conf as cf

    ports = {"app_ui": 1, "connect": 2}

    def executor_opts(user: str) -> str:
        conf = {"spark.executor.extraJavaOptions": user} if user else {}
        req = NodeRequest("c", "w", "local-small", "local-small", "", spark_conf=conf)
        rendered = cf.connect_conf(
            req,
            ports,
            master_url="spark://127.0.0.1:3",
            executor_memory_mb=1024,
            driver_memory="512m",
            tune_jvms=True,
        )
        return rendered["spark.executor.extraJavaOptions"]

    assert executor_opts("") == "-Xms64m -XX:+UseSerialGC"
    assert executor_opts("-Dx=1") == "-Xms64m -XX:+UseSerialGC -Dx=1"
    # The JVM refuses two collectors: the cluster's choice is the only one.
    assert executor_opts("-XX:+UseG1GC -Dx=1") == "-Xms64m -XX:+UseG1GC -Dx=1"
    assert executor_opts("-XX:+UseParallelGC") == "-Xms64m -XX:+UseParallelGC"


def test_the_driver_keeps_the_collector_its_cluster_chooses() -> None:
    from shared.adapters.local_spark import conf as cf

    opts = cf.DAEMON_JAVA_OPTS
    assert cf.daemon_opts_for(opts, None) == opts
    assert cf.daemon_opts_for(opts, {"spark.driver.extraJavaOptions": "-Dx=1"}) == opts
    chosen = cf.daemon_opts_for(opts, {"spark.driver.extraJavaOptions": "-XX:+UseG1GC"})
    assert "-XX:+UseSerialGC" not in chosen and "-XX:TieredStopAtLevel=1" in chosen
