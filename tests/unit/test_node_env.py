"""The node environment rule (shared/domain/node_env.py): which spark_env_vars a cluster may set,
and the environment a node process starts with."""

from __future__ import annotations

import pytest

from shared.domain import node_env as ne
from shared.domain.node_env import (
    NODE_LOCALE,
    SYSTEM_PATH,
    accepted_spark_env,
    node_environment,
    node_path,
    spark_env_problem,
)

# (name, a word of the message): one or more names of every refused family.
REFUSED = [
    # 1. not a variable name (bash's exported functions among them)
    ("BASH_FUNC_ls%%", "not an environment variable name"),
    ("1X", "not an environment variable name"),
    ("A-B", "not an environment variable name"),
    ("A B", "not an environment variable name"),
    ("", "not an environment variable name"),
    ("X" * 129, "not an environment variable name"),
    # 2. the control plane's prefix
    ("SPARKPLANE_AGENT_TOKEN", "set by sparkplane"),
    ("SPARKPLANE_ANYTHING", "set by sparkplane"),
    # 3. set by sparkplane on every node
    *((name, "set by sparkplane") for name in sorted(ne.PINNED_SPARK_ENV)),
    # 4. shells
    *(
        (name, "shells")
        for name in (
            "BASH_ENV",
            "ENV",
            "BASH_FUNC_ls",
            "BASH_XTRACEFD",
            "BASH_LOADABLES_PATH",
            "SHELLOPTS",
            "BASHOPTS",
            "PS0",
            "PS1",
            "PS4",
            "PROMPT_COMMAND",
            "IFS",
            "CDPATH",
            "GLOBIGNORE",
            "SHELL",
            "ZDOTDIR",
        )
    ),
    # 5. the loader and libc
    *(
        (name, "loader")
        for name in (
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "LD_DEBUG_OUTPUT",
            "DYLD_INSERT_LIBRARIES",
            "GCONV_PATH",
            "GLIBC_TUNABLES",
        )
    ),
    # 6. OpenSSL
    *((name, "OpenSSL") for name in ("OPENSSL_CONF", "OPENSSL_MODULES", "OPENSSL_ENGINES")),
    # 7. the JVM
    *(
        (name, "JVM")
        for name in (
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
            "IBM_JAVA_OPTIONS",
            "OPENJ9_JAVA_OPTIONS",
            "CLASSPATH",
        )
    ),
    # 8. Spark's JVM options, class path and submit arguments
    *(
        (name, "Spark's launcher")
        for name in (
            "SPARK_MASTER_OPTS",
            "SPARK_WORKER_OPTS",
            "SPARK_SUBMIT_OPTS",
            "SPARK_EXECUTOR_OPTS",
            "SPARK_HISTORY_OPTS",
            "SPARK_SHUFFLE_OPTS",
            "SPARK_LAUNCHER_OPTS",
            "SPARK_BEELINE_OPTS",
            "SPARK_JAVA_OPTS",
            "SPARK_DIST_CLASSPATH",
            "SPARK_DAEMON_CLASSPATH",
            "SPARK_EXECUTOR_CLASSPATH",
            "SPARK_CLASSPATH",
            "HADOOP_CONF_DIR",
            "YARN_CONF_DIR",
            "SPARK_PREPEND_CLASSES",
            "SPARK_SCALA_SHELL",
            "SPARK_CONNECT_BEELINE",
            "PYSPARK_SUBMIT_ARGS",
            "SPARKR_SUBMIT_ARGS",
            "PYSPARK_DRIVER_PYTHON_OPTS",
        )
    ),
    # 9. what steers Spark's scripts
    *(
        (name, "Spark's launch scripts")
        for name in (
            "SPARK_ENV_LOADED",
            "SPARK_SCALA_VERSION",
            "SPARK_TESTING",
            "SPARK_SQL_TESTING",
            "SPARK_MASTER",
        )
    ),
    # 10. Python
    *(
        (name, "Python")
        for name in (
            "PYTHONPATH",
            "PYTHONHOME",
            "PYTHONSTARTUP",
            "PYTHONINSPECT",
            "PYTHONUSERBASE",
            "PYTHONBREAKPOINT",
            "PYTHONWARNINGS",
            "PYTHONPYCACHEPREFIX",
            "PYTHONPLATLIBDIR",
            "PYTHONEXECUTABLE",
            "PYTHON_GIL",
            "PYTHONSOMETHINGNEW",
            "PYSPARK_PANDAS_USAGE_LOGGER",
            "KOALAS_USAGE_LOGGER",
        )
    ),
    # 11. other interpreters
    *(
        (name, "Perl, Ruby or Node.js")
        for name in (
            "PERL5OPT",
            "PERL5LIB",
            "PERLLIB",
            "PERL5DB",
            "RUBYOPT",
            "RUBYLIB",
            "NODE_OPTIONS",
            "NODE_PATH",
        )
    ),
]

ALLOWED = {
    "MY_FLAG": "a b=c",
    "LANG": "de_DE.UTF-8",
    "LC_ALL": "en_US.UTF-8",
    "TZ": "Europe/Berlin",
    "TMPDIR": "/mnt/tmp",
    "HTTPS_PROXY": "http://proxy:3128",
    "NO_PROXY": "localhost,127.0.0.1",
    "JAVA_OPTS": "-Xss4m",
    "SPARK_WORKER_MEMORY": "28000m",
    "SPARK_DRIVER_MEMORY": "2g",
    "SPARK_PRINT_LAUNCH_COMMAND": "1",
    "HADOOP_USER_NAME": "etl",
    "DATABRICKS_TOKEN": "{{secrets/scope/key}}",
    "PYSPARK_PYTHON": "/databricks/python3/bin/python3",
    "PYSPARK_DRIVER_PYTHON": "python3",
    "PYTHONHASHSEED": "0",
    "PYTHONUNBUFFERED": "1",
    "PYTHONIOENCODING": "utf-8",
    "LDAP_URI": "ldap://x",  # LD_ is a prefix of names, not of words
    "BASHFUL": "yes",
    "PS": "x",
    "PSQL_HOST": "db",
    "SPARK_OPTS_FILE": "x",
    "EMPTY": "",
}

# Values a shell would run: data here (never interpolated into a command line).
SHELL_LOOKING_VALUES = [
    "$(touch /tmp/sparkplane-pwned)",
    "`touch /tmp/sparkplane-pwned`",
    'a"; rm -rf /',
    "'; rm -rf / '",
    "${IFS}x;$HOME",
    "() { :; }; touch /tmp/x",
    "ünï ✓ \t tab",
]


@pytest.mark.parametrize(("name", "why"), REFUSED, ids=lambda x: str(x)[:40])
def test_refused_names(name: str, why: str) -> None:
    problem = spark_env_problem(name, "x")
    assert problem is not None and why in problem, problem
    assert name not in accepted_spark_env({name: "x", "FINE": "1"})


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_allowed_names(name: str) -> None:
    assert spark_env_problem(name, ALLOWED[name]) is None


@pytest.mark.parametrize("value", SHELL_LOOKING_VALUES)
def test_values_that_look_like_shell_code_are_inert_data(value: str) -> None:
    assert spark_env_problem("MY_SETTING", value) is None
    assert accepted_spark_env({"MY_SETTING": value}) == {"MY_SETTING": value}


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b", "a\ud800b"])
def test_values_with_line_breaks_nul_or_lone_surrogates_are_refused(value: str) -> None:
    problem = spark_env_problem("MY_SETTING", value)
    assert problem is not None and "line break" in problem


@pytest.mark.parametrize("value", ["python3 -c import os", "/usr/bin/py*", "py?", "[x]", "a\tb"])
def test_pyspark_python_names_one_program(value: str) -> None:
    for name in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"):
        problem = spark_env_problem(name, value)
        assert problem is not None and "one program" in problem
    assert spark_env_problem("OTHER", value) is None


def test_every_harmless_python_setting_is_allowed_and_no_other() -> None:
    for name in ne.HARMLESS_PYTHON:
        assert name.startswith("PYTHON") and spark_env_problem(name, "1") is None
    assert spark_env_problem("PYTHONX", "1") is not None


def test_the_families_do_not_hide_a_pinned_name() -> None:
    # Every pinned name says "set by sparkplane" (rule 3 comes before the families).
    for name in ne.PINNED_SPARK_ENV:
        assert "set by sparkplane" in (spark_env_problem(name, "x") or "")


# ---------------------------------------------------------------------------------------------
# node_environment

PYTHON = "/opt/venv/bin/python"
JAVA = "/usr/lib/jvm/java-17"


def _env(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "python": PYTHON,
        "java_home": JAVA,
        "home": "/data/nodes/c1/n1",
        "settings": {"SPARK_HOME": "/opt/spark", "SPARKPLANE_NODE_ID": "n1"},
    }
    args.update(kw)
    return node_environment(**args)  # type: ignore[arg-type]


def test_node_environment_is_built_from_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARKPLANE_SECRET_PROBE", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("BASH_ENV", "/tmp/evil")
    env = _env()
    assert env == {
        "LANG": NODE_LOCALE,
        "PYSPARK_PYTHON": PYTHON,
        "PATH": f"/opt/venv/bin:{JAVA}/bin:{SYSTEM_PATH}",
        "HOME": "/data/nodes/c1/n1",
        "JAVA_HOME": JAVA,
        "SPARK_HOME": "/opt/spark",
        "SPARKPLANE_NODE_ID": "n1",
    }


def test_node_environment_layers_defaults_cluster_and_platform() -> None:
    env = _env(
        spark_env_vars={
            "LANG": "de_DE.UTF-8",  # a default: the cluster's wins
            "PYSPARK_PYTHON": "/usr/bin/python3",
            "MY_FLAG": "$(touch /tmp/x)",
            "HOME": "/tmp",  # pinned: dropped (the API refuses it first)
            "BASH_ENV": "/tmp/evil.sh",
            "LD_PRELOAD": "/tmp/evil.so",
            "SPARKPLANE_NODE_ID": "other",
        }
    )
    assert env["LANG"] == "de_DE.UTF-8"
    assert env["PYSPARK_PYTHON"] == "/usr/bin/python3"
    assert env["MY_FLAG"] == "$(touch /tmp/x)"
    assert env["HOME"] == "/data/nodes/c1/n1"
    assert env["SPARKPLANE_NODE_ID"] == "n1"
    assert "BASH_ENV" not in env and "LD_PRELOAD" not in env


def test_a_platform_setting_a_cluster_could_set_too_is_a_bug() -> None:
    with pytest.raises(ValueError, match="MY_SETTING"):
        _env(settings={"MY_SETTING": "1"})
    # PYTHONPATH (for the agent) is a refused name: fine as a platform setting.
    assert _env(settings={"PYTHONPATH": "/src"})["PYTHONPATH"] == "/src"


def test_a_node_without_java() -> None:
    env = _env(java_home=None)
    assert "JAVA_HOME" not in env and env["PATH"] == f"/opt/venv/bin:{SYSTEM_PATH}"


def test_node_path() -> None:
    assert node_path("/v/bin/python", "/j") == f"/v/bin:/j/bin:{SYSTEM_PATH}"
    # No directory twice: the system's Python and a JDK under /usr.
    parts = node_path("/usr/bin/python3", "/usr").split(":")
    assert parts[0] == "/usr/bin" and len(parts) == len(set(parts)) == 6
    assert set(parts) == set(SYSTEM_PATH.split(":"))
