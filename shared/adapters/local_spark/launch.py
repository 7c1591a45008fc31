"""Node JVMs started without a launcher JVM in front of each.

Spark's `bin/spark-class` (and `bin/spark-submit`, which calls it) runs a whole JVM,
`org.apache.spark.launcher.Main`, only to print the java command line of the real process
(class path, -Xmx, the JVM options, Java's module options), then execs it. That JVM costs 0.3 to
0.7 s of wall time on this 2-core machine, on the critical path of every node process, twice in
a row for a cluster (the master's, then the Workers' and the Connect server's).

The command line it prints is a function of its arguments, its environment and, for
spark-submit, the driver settings of the properties file; the process's own arguments come
after the main class unchanged (spark-submit's launcher appends the application resource once
more). So a launcher's answer is kept, keyed by everything it depends on (the arguments by
their option names: their values are the node's ports, paths and names), and the next process
of the same shape execs java directly with the same options and additions, plus the
variables the scripts would have exported (load-spark-env.sh's SPARK_ENV_LOADED and
SPARK_SCALA_VERSION, spark-submit's PYTHONHASHSEED). Identical command lines also keep the class
path an archive was made with (shared/adapters/local_spark/cds.py).

The answers are also kept in a file of the data directory (`launches.json`, keyed by a hash of
the shape, which includes the Spark home and the Java home), so a restarted control plane does
not ask again. Not kept (the scripts run as before): a conf directory with a `spark-env.sh`
(load-spark-env.sh runs it, and it may change anything), and the test-only SPARK_TESTING and
SPARK_PREPEND_CLASSES.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from shared.private_files import write_private

log = logging.getLogger("sparkplane.local_spark")

SUBMIT_CLASS = "org.apache.spark.deploy.SparkSubmit"
# Environment names that differ from node to node and that the launcher does not read.
_PER_NODE_ENV = frozenset(
    {
        "HOME",
        "SPARK_LOG_DIR",
        "SPARK_PID_DIR",
        "SPARK_LOCAL_DIRS",
        "SPARK_WORKER_DIR",
        "SPARK_CONNECT_AUTHENTICATE_TOKEN",
        "SPARKPLANE_NODE_ID",
        "SPARKPLANE_CLUSTER_ID",
    }
)
# Settings of a properties file the launcher reads for spark-submit (SparkSubmitCommandBuilder:
# the driver's memory, options, class and library paths, and whether it is in client mode).
_SUBMIT_PREFIXES = ("spark.driver.", "spark.submit.")
_SUBMIT_KEYS = frozenset({"spark.remote", "spark.api.mode"})
_NO_SHORTCUT_ENV = ("SPARK_TESTING", "SPARK_SQL_TESTING", "SPARK_PREPEND_CLASSES")


def submit_settings(conf: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The properties-file settings a spark-submit launch depends on."""
    return tuple(
        sorted(
            (k, v) for k, v in conf.items() if k.startswith(_SUBMIT_PREFIXES) or k in _SUBMIT_KEYS
        )
    )


class Launches:
    """The launcher's answers, kept per process shape (see the module doc). Thread-safe."""

    def __init__(
        self,
        spark_home: Path,
        java_home: Path,
        scala_version: str,
        spark_version: str,
        cache_file: Path | None = None,
    ) -> None:
        self.spark_home = spark_home
        self.java_home = java_home
        self.scala_version = scala_version
        self.spark_version = spark_version
        self.cache_file = cache_file
        # shape -> [the java options before the main class, what follows the arguments]
        self._prefixes: dict[str, list[list[str]]] = {}
        self._lock = threading.Lock()
        if cache_file is not None:
            try:
                loaded = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                loaded = {}  # none yet, or unreadable: asked again
            if isinstance(loaded, dict):
                self._prefixes = {
                    k: v
                    for k, v in loaded.items()
                    if isinstance(v, list)
                    and len(v) == 2
                    and all(isinstance(part, list) for part in v)
                    and all(isinstance(x, str) for part in v for x in part)
                }

    def script_env(self, argv: Sequence[str]) -> dict[str, str]:
        """What Spark's scripts export before they run the launcher."""
        env = {"SPARK_ENV_LOADED": "1", "SPARK_SCALA_VERSION": self.scala_version}
        if Path(argv[0]).name == "spark-submit":
            env["PYTHONHASHSEED"] = "0"
        return env

    def _shape(
        self, argv: Sequence[str], env: Mapping[str, str], conf: Mapping[str, str] | None
    ) -> tuple[str, str, list[str]] | None:
        """(main class, cache key, the arguments after it) of a spark-class / spark-submit
        argv, or None when the scripts must run (see the module doc)."""
        script = Path(argv[0])
        if script.parent != self.spark_home / "bin":
            return None
        if any(env.get(name) for name in _NO_SHORTCUT_ENV):
            return None
        conf_dir = env.get("SPARK_CONF_DIR")
        if not conf_dir or (Path(conf_dir) / "spark-env.sh").exists():
            return None
        if script.name == "spark-class" and len(argv) >= 2:
            main, args = argv[1], list(argv[2:])
        elif script.name == "spark-submit":
            main, args = SUBMIT_CLASS, list(argv[1:])
        else:
            return None
        relevant = sorted((k, v) for k, v in env.items() if k not in _PER_NODE_ENV)
        settings = submit_settings(conf or {}) if main == SUBMIT_CLASS else ()
        options = [a for a in args if a.startswith("-")]
        shape = [self.spark_version, str(self.java_home), main, relevant, settings, options]
        key = hashlib.sha256(json.dumps(shape).encode()).hexdigest()
        return main, key, args

    def command(
        self, argv: Sequence[str], env: Mapping[str, str], conf: Mapping[str, str] | None
    ) -> tuple[list[str], dict[str, str]] | None:
        """The java command line and environment that run `argv` (a spark-class or
        spark-submit command) without the launcher, or None: run `argv` as it is."""
        shape = self._shape(argv, env, conf)
        if shape is None:
            return None
        main, key, args = shape
        with self._lock:
            known = self._prefixes.get(key)
        full_env = {**env, **self.script_env(argv)}
        if known is None:
            known = self._ask(main, args, full_env)
            if known is None:
                return None
            with self._lock:
                self._prefixes[key] = known
                if self.cache_file is not None:
                    tmp = self.cache_file.with_suffix(".tmp")
                    write_private(tmp, json.dumps(self._prefixes))
                    tmp.replace(self.cache_file)
        prefix, extra = known
        return [*prefix, main, *args, *extra], full_env

    def _ask(self, main: str, args: list[str], env: Mapping[str, str]) -> list[list[str]] | None:
        """Run the launcher as spark-class does: [the java options it prints before `main`,
        what it prints after `args`]."""
        java = str(self.java_home / "bin" / "java")
        launcher = [java, "-Xmx128m", "-cp", f"{self.spark_home / 'jars'}/*"]
        launcher += ["org.apache.spark.launcher.Main", main, *args]
        try:
            out = subprocess.run(
                launcher, env=dict(env), capture_output=True, timeout=120, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError) as e:
            # The scripts run instead and report the problem in the node's log.
            log.warning("spark launcher failed", extra={"main": main, "error": type(e).__name__})
            return None
        # spark-class's protocol: lines to echo, a NUL, then the command, NUL-separated.
        _, _, command = out.partition(b"\0\n")
        parts = [p.decode() for p in command.split(b"\0") if p]
        tail = [main, *args]
        at = parts.index(main) if main in parts else -1
        if at < 1 or parts[at : at + len(tail)] != tail or parts[0] != java:
            log.warning("spark launcher answer not understood", extra={"main": main})
            return None
        return [parts[:at], parts[at + len(tail) :]]
