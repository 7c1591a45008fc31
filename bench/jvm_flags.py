"""JVM options of a Spark daemon, measured: a standalone Master from spawn to ALIVE (its JSON
answers), and its RSS, per option set, the sets alternating run by run.

    .venv/bin/python -m bench.jvm_flags --runs 5 --json bench/out/jvm_flags.json

The sets: the JVM's defaults; the options local nodes ran with before per-role options (C1
only, the serial collector, a small initial heap: shared/adapters/local_spark/conf.py
DAEMON_JAVA_OPTS); the same with the master's class-data-sharing archive (`make spark-cds`),
which this JVM relocates to a random address; the defaults with the archive; and the master as
nodes run it now: the archive mapped where it was made for (CDS_MAP_OPTS) and the master's
small young generation (ROLE_JAVA_OPTS). Every start uses the archives' shared empty conf
directory, as nodes that map an archive do.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench.report import emit
from bench.start_timeline import free_port, get_json
from shared.adapters.local_spark import (
    DAEMON_JAVA_OPTS,
    cds,
    check_java,
    default_spark_home,
    spark_build,
)
from shared.adapters.local_spark.conf import CDS_MAP_OPTS, ROLE_JAVA_OPTS


def master_start(
    spark_home: Path, java_home: Path, conf_dir: Path, opts: str
) -> tuple[float, float]:
    """(seconds to ALIVE, RSS in MB once ALIVE) of one Master with JVM options `opts`."""
    port, ui = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="sp-jvm-"))
    env = {
        "PATH": f"{java_home}/bin:/usr/bin:/bin",
        "JAVA_HOME": str(java_home),
        "SPARK_HOME": str(spark_home),
        "SPARK_CONF_DIR": str(conf_dir),
        "SPARK_LOG_DIR": str(tmp),
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_DAEMON_JAVA_OPTS": opts,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "HOME": str(tmp),
    }
    argv = [str(spark_home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)]
    t0 = time.perf_counter()
    with open(tmp / "master.log", "ab") as out:
        p = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while (get_json(f"http://127.0.0.1:{ui}/json/") or {}).get("status") != "ALIVE":
            if time.perf_counter() - t0 > 180:
                raise TimeoutError("master did not start")
            time.sleep(0.05)
        took = time.perf_counter() - t0
        proc = psutil.Process(p.pid)
        rss = max(c.memory_info().rss for c in [proc, *proc.children(recursive=True)])
        return round(took, 2), round(rss / 2**20)
    finally:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=60)


def run(runs: int) -> dict[str, object]:
    spark_home, java = default_spark_home(), check_java()
    archives = cds.archive_dir(cds.DEFAULT_ROOT, spark_build(spark_home)[0], java)
    if not cds.complete(archives):
        raise SystemExit("no class-data-sharing archives: run `make spark-cds` first")
    share = f"-XX:SharedArchiveFile={archives / 'master.jsa'} -Xshare:auto"
    sets = {
        "defaults": "",
        "node options": DAEMON_JAVA_OPTS,
        "node options + archive": f"{DAEMON_JAVA_OPTS} {share}",
        "defaults + archive": share,
        "node options + archive unrelocated + master's young generation": (
            f"{DAEMON_JAVA_OPTS} {ROLE_JAVA_OPTS['master']} {share} {CDS_MAP_OPTS}"
        ),
    }
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in sets}
    for _ in range(runs):
        for name, opts in sets.items():
            rows[name].append(master_start(spark_home, java.home, archives / "conf", opts))
    return {
        "runs": runs,
        **{
            name: {
                "median_start_s": statistics.median(r[0] for r in rs),
                "median_rss_mb": statistics.median(r[1] for r in rs),
                "starts_s": [r[0] for r in rs],
            }
            for name, rs in rows.items()
        },
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    emit(f"Spark master start per JVM option set, {args.runs} runs", run(args.runs), args.json)


if __name__ == "__main__":
    main()
