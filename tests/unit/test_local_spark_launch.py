"""Node JVMs started without a launcher JVM in front (shared/adapters/local_spark/launch.py):
the launcher's answer is asked once per process shape and reused, on disk too. A stand-in
`java` speaks spark-class's protocol (lines, a NUL, the command NUL-separated) and counts its
runs."""

from __future__ import annotations

from pathlib import Path

from shared.adapters.local_spark.launch import SUBMIT_CLASS, Launches

# Prints what org.apache.spark.launcher.Main prints: the java command, then the arguments after
# "org.apache.spark.launcher.Main" (spark-submit's launcher appends the resource once more).
FAKE_JAVA = r"""#!/bin/bash
echo run >> "$(dirname "$0")/runs"
while [ "$1" != "org.apache.spark.launcher.Main" ]; do shift; done
shift
printf '\0\n'
printf '%s\0' "$0" -cp "$SPARK_CONF_DIR/:jars/*" "-Xmx$SPARK_DAEMON_MEMORY" "$@"
if [ "$1" = "org.apache.spark.deploy.SparkSubmit" ]; then printf '%s\0' "${@: -1}"; fi
"""


def setup(tmp_path: Path) -> tuple[Launches, dict[str, str], Path]:
    java_home = tmp_path / "java"
    (java_home / "bin").mkdir(parents=True)
    java = java_home / "bin" / "java"
    java.write_text(FAKE_JAVA)
    java.chmod(0o755)
    spark_home = tmp_path / "spark"
    (spark_home / "bin").mkdir(parents=True)
    conf = tmp_path / "conf"
    conf.mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "SPARK_CONF_DIR": str(conf),
        "SPARK_DAEMON_MEMORY": "256m",
        "HOME": str(tmp_path / "node-a"),
        "SPARK_LOG_DIR": str(tmp_path / "logs-a"),
    }
    cache = tmp_path / "launches.json"
    return Launches(spark_home, java_home, "2.13", "4.1.4", cache_file=cache), env, java_home


def runs(java_home: Path) -> int:
    f = java_home / "bin" / "runs"
    return len(f.read_text().splitlines()) if f.exists() else 0


def test_the_launcher_runs_once_per_shape_and_its_options_are_reused(tmp_path: Path) -> None:
    launches, env, java_home = setup(tmp_path)
    spark_class = str(launches.spark_home / "bin" / "spark-class")
    master = "org.apache.spark.deploy.master.Master"
    cmd, cmd_env = launches.command([spark_class, master, "--port", "1"], env, {}) or ([], {})
    java = str(java_home / "bin" / "java")
    class_path = f"{env['SPARK_CONF_DIR']}/:jars/*"
    assert cmd == [java, "-cp", class_path, "-Xmx256m", master, "--port", "1"]
    assert cmd_env["SPARK_ENV_LOADED"] == "1" and cmd_env["SPARK_SCALA_VERSION"] == "2.13"
    # Another node (other ports, home, log dir): the same options, no launcher run.
    other = {**env, "HOME": str(tmp_path / "node-b"), "SPARK_LOG_DIR": str(tmp_path / "b")}
    cmd2, _ = launches.command([spark_class, master, "--port", "2"], other, {}) or ([], {})
    assert cmd2 == [*cmd[:-1], "2"] and runs(java_home) == 1
    # Another heap is another shape: asked again.
    bigger = {**env, "SPARK_DAEMON_MEMORY": "512m"}
    cmd3, _ = launches.command([spark_class, master, "--port", "3"], bigger, {}) or ([], {})
    assert "-Xmx512m" in cmd3 and runs(java_home) == 2
    # A restarted control plane reads the answers from the data directory.
    again = Launches(launches.spark_home, java_home, "2.13", "4.1.4", launches.cache_file)
    assert again.command([spark_class, master, "--port", "1"], env, {}) == (cmd, cmd_env)
    assert runs(java_home) == 2


def test_spark_submit_keeps_the_launchers_additions_and_keys_on_driver_settings(
    tmp_path: Path,
) -> None:
    launches, env, java_home = setup(tmp_path)
    submit = str(launches.spark_home / "bin" / "spark-submit")
    args = ["--properties-file", "/n/a.conf", "--class", "C", "--name", "a", "spark-internal"]
    cmd, cmd_env = launches.command([submit, *args], env, {"spark.app.name": "a"}) or ([], {})
    assert cmd[-len(args) - 2 :] == [SUBMIT_CLASS, *args, "spark-internal"]
    assert cmd_env["PYTHONHASHSEED"] == "0"
    args_b = ["--properties-file", "/n/b.conf", "--class", "C", "--name", "b", "spark-internal"]
    cmd_b, _ = launches.command([submit, *args_b], env, {"spark.app.name": "b"}) or ([], {})
    assert cmd_b[-len(args_b) - 2 :] == [SUBMIT_CLASS, *args_b, "spark-internal"]
    assert runs(java_home) == 1
    launches.command([submit, *args_b], env, {"spark.driver.extraJavaOptions": "-Dx=1"})
    assert runs(java_home) == 2


def test_the_scripts_run_when_a_conf_dir_has_spark_env_or_a_test_switch_is_set(
    tmp_path: Path,
) -> None:
    launches, env, java_home = setup(tmp_path)
    spark_class = str(launches.spark_home / "bin" / "spark-class")
    argv = [spark_class, "org.apache.spark.deploy.worker.Worker"]
    assert launches.command(argv, {**env, "SPARK_TESTING": "1"}, {}) is None
    assert launches.command(["/elsewhere/bin/spark-class", *argv[1:]], env, {}) is None
    (Path(env["SPARK_CONF_DIR"]) / "spark-env.sh").write_text("export X=1\n")
    assert launches.command(argv, env, {}) is None
    assert runs(java_home) == 0
