"""The environment of a node process: what a cluster's `spark_env_vars` may set, and the rest.

Pure: no I/O, no reads of `os.environ`. The API (`validate_spec`, at create, edit and for a
job's `new_cluster`) refuses a cluster whose spark_env_vars break the rule with
INVALID_PARAMETER_VALUE; the local provisioner (`node_environment`) and the ARM provisioner
(`spark_env_value`) apply the same function again as their last line of defence, and the ARM
node's bootstrap (infra/bootstrap/cloud-init.yaml, write_spark_conf.py) carries a copy that a
unit test keeps equal to this one.

spark_env_vars are settings, never code. Every node runs bash (Spark's bin/spark-class,
load-spark-env.sh and spark-submit are bash scripts, and so are the provisioners' wrappers), the
dynamic loader, a JVM started by Spark's launcher (org.apache.spark.launcher), and Python (the
executors' Python workers, the cluster agent, a job's task). A name is refused when one of them
reads it as code, as options or arguments that can name code, or as a place to load code from,
whether at the node's start or in a process the node starts later (a Python worker, a task, a
tool they call); and when sparkplane sets it on the node itself. On a local cluster every node
runs as the control plane's own user, so a name that runs code at start would run it on the
control plane's host before any user code was submitted. Refused (`spark_env_problem`), in this
order (the first that matches gives the message):

1. Not a variable name: letters, digits and '_', not starting with a digit, at most 128. (This
   also refuses bash's exported functions, `BASH_FUNC_f%%`, and every other name with `%`.)
2. `SPARKPLANE_*`: the control plane's own settings and the node's (agent URL, ids, dirs).
3. Set by sparkplane on every node (`PINNED_SPARK_ENV`): JAVA_HOME, SPARK_HOME, SPARK_CONF_DIR
   (load-spark-env.sh runs `spark-env.sh` from it), the node's addresses, ports and directories,
   SPARK_DAEMON_MEMORY and SPARK_DAEMON_JAVA_OPTS, PATH (which `java`, `python3`, `bash`, `ps`
   the scripts run), HOME (Python's user site-packages, Ivy's jar cache), SPARK_REMOTE (a job's
   task joins the cluster's own Spark Connect server).
4. Shells: BASH_ENV and ENV (a file every non-interactive bash / interactive sh runs first),
   SHELLOPTS and BASHOPTS (e.g. xtrace, which expands PS4 with command substitution), PS0-PS9,
   PROMPT_COMMAND, IFS, CDPATH, GLOBIGNORE (how a script splits words, finds directories and
   expands globs), SHELL (what programs run `$SHELL -c` with), ZDOTDIR (zsh's .zshenv), and
   every `BASH_*` (bash's own variables: BASH_XTRACEFD, BASH_LOADABLES_PATH, BASH_COMPAT ...).
5. The dynamic loader and libc: every `LD_*` (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT ...) and
   `DYLD_*`, GCONV_PATH (iconv loads shared libraries from it), GLIBC_TUNABLES.
6. OpenSSL (Python's ssl module loads it): OPENSSL_CONF, OPENSSL_MODULES, OPENSSL_ENGINES
   (its configuration loads providers and engines, which are shared libraries).
7. The JVM: JAVA_TOOL_OPTIONS, _JAVA_OPTIONS, JDK_JAVA_OPTIONS (read by every `java`: -javaagent,
   -XX:OnOutOfMemoryError=<command> ...), IBM_JAVA_OPTIONS and OPENJ9_JAVA_OPTIONS (the same on
   an OpenJ9 JVM, which a local host may have), CLASSPATH.
8. JVM options and class path of Spark's processes: every `SPARK_*OPTS` (SPARK_MASTER_OPTS,
   SPARK_WORKER_OPTS, SPARK_SUBMIT_OPTS, SPARK_EXECUTOR_OPTS, SPARK_HISTORY_OPTS,
   SPARK_SHUFFLE_OPTS, SPARK_LAUNCHER_OPTS (spark-class splits it into the launcher's own JVM
   options), SPARK_JAVA_OPTS ...), every `SPARK_*CLASSPATH` (SPARK_DIST_CLASSPATH,
   SPARK_DAEMON_CLASSPATH, SPARK_EXECUTOR_CLASSPATH, SPARK_CLASSPATH), HADOOP_CONF_DIR and
   YARN_CONF_DIR (the launcher puts both on the class path), SPARK_PREPEND_CLASSES,
   SPARK_SCALA_SHELL and SPARK_CONNECT_BEELINE (which jars the launcher adds), PYSPARK_SUBMIT_ARGS
   and SPARKR_SUBMIT_ARGS (spark-submit arguments: --jars, --conf ...extraJavaOptions),
   PYSPARK_DRIVER_PYTHON_OPTS (options of the driver's Python: `-c <code>`). A cluster changes
   Spark through spark_conf, as on Databricks.
9. What steers Spark's scripts: SPARK_ENV_LOADED (load-spark-env.sh skips its setup),
   SPARK_SCALA_VERSION (load-spark-env.sh sets it), SPARK_TESTING and SPARK_SQL_TESTING
   (test-only code paths), SPARK_MASTER (sbin/spark-daemon.sh rsyncs Spark's install from it).
10. Python: every `PYTHON*` name but the harmless ones in `HARMLESS_PYTHON` (PYTHONHASHSEED,
   PYTHONUNBUFFERED, PYTHONIOENCODING, PYTHONUTF8, PYTHONDONTWRITEBYTECODE, PYTHONFAULTHANDLER,
   ...). Many load or run code: PYTHONPATH, PYTHONHOME, PYTHONSTARTUP, PYTHONINSPECT,
   PYTHONUSERBASE (its .pth files), PYTHONBREAKPOINT (imports a callable), PYTHONWARNINGS (imports
   a warning category's module), PYTHONPYCACHEPREFIX (where compiled modules are read from),
   PYTHONPLATLIBDIR, PYTHONEXECUTABLE; new Pythons add more, so the family is refused and the
   harmless names listed. Also PYSPARK_PANDAS_USAGE_LOGGER and KOALAS_USAGE_LOGGER (pyspark.pandas
   imports the module they name).
11. Other interpreters a node's tools or a task may start: PERL5OPT, PERL5LIB, PERLLIB, PERL5DB,
   RUBYOPT, RUBYLIB, NODE_OPTIONS, NODE_PATH.

Allowed with a condition: PYSPARK_PYTHON and PYSPARK_DRIVER_PYTHON (Databricks clusters set
PYSPARK_PYTHON) name one program: their value has no blank and no `*?[`, since Spark's
bin/pyspark and bin/find-spark-home expand them unquoted (split into words and globbed). Spark
itself runs the value as one argument, never through a shell.

Values: any text without a line break, a NUL or a lone surrogate (the ARM node's environment
file is line-based; an environment cannot carry NUL). A value is data: no provisioner ever puts
it in a shell command line or sources it (locally it is passed in the process's environment;
on ARM, systemd's EnvironmentFile reads it, double-quoted with `\\ " ` $` escaped), so
`$(touch /tmp/x)` or `a"; rm -rf /` arrive as those characters.

Everything else is allowed: data to every program above, or read only by programs the node
does not start (LANG and LC_*, TZ, TMPDIR, HTTP(S)_PROXY and NO_PROXY, JAVA_OPTS (read by
neither `java` nor Spark's scripts), SPARK_WORKER_MEMORY, SPARK_DRIVER_MEMORY (one -Xmx argument),
HADOOP_USER_NAME, a job's own settings ...).

The environment of a node process (`node_environment`) is built from nothing, never from the
control plane's own: sparkplane's defaults that a cluster may change (LANG=C.UTF-8, and
PYSPARK_PYTHON = the node's Python), then the cluster's accepted spark_env_vars, then what
sparkplane sets (PATH = the node's Python's bin dir, JAVA_HOME/bin and the system dirs; HOME;
JAVA_HOME; the provisioner's settings), which a cluster can never set (rule 2 or 3: checked, so
a new setting cannot silently be overridden). Nothing of the control plane's environment (its
SPARKPLANE_* settings, AZURE_*, DATABRICKS_*, cloud keys, tokens) reaches a node.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

SPARK_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
RESERVED_SPARK_ENV_PREFIX = "SPARKPLANE_"

# Rule 3: what sparkplane sets on every node (locally: LocalSparkProvisioner; on Azure:
# cloud-init's spark.env and the units' users).
PINNED_SPARK_ENV = frozenset(
    {
        "JAVA_HOME",
        "SPARK_HOME",
        "SPARK_CONF_DIR",
        "SPARK_LOCAL_IP",
        "SPARK_LOCAL_HOSTNAME",
        "SPARK_PUBLIC_DNS",
        "SPARK_LOCAL_DIRS",
        "SPARK_WORKER_DIR",
        "SPARK_LOG_DIR",
        "SPARK_PID_DIR",
        "SPARK_NO_DAEMONIZE",
        "SPARK_MASTER_HOST",
        "SPARK_MASTER_PORT",
        "SPARK_MASTER_WEBUI_PORT",
        "SPARK_WORKER_PORT",
        "SPARK_WORKER_WEBUI_PORT",
        "SPARK_DAEMON_MEMORY",
        "SPARK_DAEMON_JAVA_OPTS",
        "SPARK_REMOTE",
        # The cluster's Spark Connect token and the secret a Worker hands its executors
        # (shared/domain/spark_auth.py): a cluster cannot pick or blank them.
        "SPARK_CONNECT_AUTHENTICATE_TOKEN",
        "_SPARK_AUTH_SECRET",
        "PATH",
        "HOME",
    }
)

# Rule 10's exceptions: Python settings that load and run nothing.
HARMLESS_PYTHON = frozenset(
    {
        "PYTHONASYNCIODEBUG",
        "PYTHONCOERCECLOCALE",
        "PYTHONDEVMODE",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONFAULTHANDLER",
        "PYTHONHASHSEED",
        "PYTHONINTMAXSTRDIGITS",
        "PYTHONIOENCODING",
        "PYTHONMALLOC",
        "PYTHONNODEBUGRANGES",
        "PYTHONNOUSERSITE",
        "PYTHONOPTIMIZE",
        "PYTHONPROFILEIMPORTTIME",
        "PYTHONSAFEPATH",
        "PYTHONTRACEMALLOC",
        "PYTHONUNBUFFERED",
        "PYTHONUTF8",
        "PYTHONVERBOSE",
        "PYTHONWARNDEFAULTENCODING",
    }
)

# Rules 4-11: (why, exact names, name prefixes, a name pattern).
_FAMILIES: tuple[tuple[str, frozenset[str], tuple[str, ...], re.Pattern[str] | None], ...] = (
    (
        "shells read it as code or as how to run a script",
        frozenset(
            {
                "BASH_ENV",
                "ENV",
                "SHELLOPTS",
                "BASHOPTS",
                "PROMPT_COMMAND",
                "IFS",
                "CDPATH",
                "GLOBIGNORE",
                "SHELL",
                "ZDOTDIR",
            }
        ),
        ("BASH_",),
        re.compile(r"PS\d"),
    ),
    (
        "the dynamic loader or libc loads code with it",
        frozenset({"GCONV_PATH", "GLIBC_TUNABLES"}),
        ("LD_", "DYLD_"),
        None,
    ),
    (
        "OpenSSL loads shared libraries it names",
        frozenset({"OPENSSL_CONF", "OPENSSL_MODULES", "OPENSSL_ENGINES"}),
        (),
        None,
    ),
    (
        "every JVM reads it as options or class path",
        frozenset(
            {
                "JAVA_TOOL_OPTIONS",
                "_JAVA_OPTIONS",
                "JDK_JAVA_OPTIONS",
                "IBM_JAVA_OPTIONS",
                "OPENJ9_JAVA_OPTIONS",
                "CLASSPATH",
            }
        ),
        (),
        None,
    ),
    (
        "Spark's launcher reads it as JVM options, class path or spark-submit arguments "
        "(set Spark's settings in spark_conf)",
        frozenset(
            {
                "HADOOP_CONF_DIR",
                "YARN_CONF_DIR",
                "SPARK_PREPEND_CLASSES",
                "SPARK_SCALA_SHELL",
                "SPARK_CONNECT_BEELINE",
                "PYSPARK_SUBMIT_ARGS",
                "SPARKR_SUBMIT_ARGS",
                "PYSPARK_DRIVER_PYTHON_OPTS",
            }
        ),
        (),
        re.compile(r"SPARK_\w*OPTS|SPARK_\w*CLASSPATH"),
    ),
    (
        "it steers Spark's launch scripts",
        frozenset(
            {
                "SPARK_ENV_LOADED",
                "SPARK_SCALA_VERSION",
                "SPARK_TESTING",
                "SPARK_SQL_TESTING",
                "SPARK_MASTER",
            }
        ),
        (),
        None,
    ),
    (
        "Python loads or runs code with it (of the PYTHON* settings, the harmless ones such as "
        "PYTHONHASHSEED and PYTHONUNBUFFERED are allowed)",
        frozenset({"PYSPARK_PANDAS_USAGE_LOGGER", "KOALAS_USAGE_LOGGER"}),
        ("PYTHON",),
        None,
    ),
    (
        "Perl, Ruby or Node.js load code with it",
        frozenset(
            {
                "PERL5OPT",
                "PERL5LIB",
                "PERLLIB",
                "PERL5DB",
                "RUBYOPT",
                "RUBYLIB",
                "NODE_OPTIONS",
                "NODE_PATH",
            }
        ),
        (),
        None,
    ),
)

# The same families flattened (the ARM node's copy of the rule is compared with these).
REFUSED_NAMES = frozenset().union(*(names for _, names, _, _ in _FAMILIES))
REFUSED_PREFIXES = tuple(p for _, _, prefixes, _ in _FAMILIES for p in prefixes)
REFUSED_PATTERN = re.compile("|".join(f"(?:{p.pattern})" for _, _, _, p in _FAMILIES if p))

# Names a cluster may set to a program (one word: Spark's scripts expand them unquoted).
PROGRAM_SPARK_ENV = frozenset({"PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON"})
PROGRAM_VALUE = re.compile(r"[^\s*?\[]*")

# What every node process gets: the locale (a cluster may change it), the system's programs.
NODE_LOCALE = "C.UTF-8"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _refusal(name: str) -> str | None:
    """Rules 4-11: why name cannot be set by a cluster (None: it can)."""
    if name in HARMLESS_PYTHON:
        return None
    for why, names, prefixes, pattern in _FAMILIES:
        if name in names or name.startswith(prefixes) or (pattern and pattern.fullmatch(name)):
            return why
    return None


def spark_env_problem(name: str, value: str) -> str | None:
    """Why a cluster's spark_env_vars cannot carry name=value to its nodes (None: they can).
    The rule is the module's docstring."""
    if not SPARK_ENV_NAME.fullmatch(name):
        return (
            f"{name!r} is not an environment variable name (letters, digits and '_', not "
            "starting with a digit)"
        )
    if name in PINNED_SPARK_ENV or name.startswith(RESERVED_SPARK_ENV_PREFIX):
        return f"{name} is set by sparkplane on the nodes"
    why = _refusal(name)
    if why:
        return f"{name} cannot be set: {why}"
    if any(c in value for c in "\n\r\0") or any("\ud800" <= c <= "\udfff" for c in value):
        return f"the value of {name} has a line break, a NUL character or invalid Unicode"
    if name in PROGRAM_SPARK_ENV and not PROGRAM_VALUE.fullmatch(value):
        return f"{name} names one program: its value cannot hold blanks or any of *?["
    return None


def accepted_spark_env(spark_env_vars: Mapping[str, str]) -> dict[str, str]:
    """The variables of spark_env_vars that `spark_env_problem` accepts."""
    return {k: v for k, v in spark_env_vars.items() if spark_env_problem(k, v) is None}


def node_path(python: str, java_home: str | None) -> str:
    """PATH of a node process: the node's Python's bin dir (its venv), JAVA_HOME/bin (a node
    with Java), then the system's directories."""
    java_bin = posixpath.join(java_home, "bin") if java_home else ""
    dirs = [posixpath.dirname(python), java_bin, *SYSTEM_PATH.split(":")]
    return ":".join(dict.fromkeys(d for d in dirs if d))


def node_environment(
    *,
    python: str,
    java_home: str | None,
    home: str,
    settings: Mapping[str, str],
    spark_env_vars: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of a node process, from nothing: LANG and PYSPARK_PYTHON (defaults
    a cluster may change), the cluster's accepted spark_env_vars, then PATH, HOME, JAVA_HOME
    (None: a node without Java, the record provisioner's agent) and the provisioner's
    `settings`. Raises ValueError when a name of `settings` is one a cluster could set (it
    belongs in PINNED_SPARK_ENV, or under SPARKPLANE_)."""
    pinned = {
        "PATH": node_path(python, java_home),
        "HOME": home,
        **({"JAVA_HOME": java_home} if java_home else {}),
        **settings,
    }
    open_names = sorted(k for k in pinned if spark_env_problem(k, "") is None)
    if open_names:
        raise ValueError(
            f"{', '.join(open_names)}: set on the nodes but not refused to clusters; pin them "
            "(PINNED_SPARK_ENV) or name them SPARKPLANE_*"
        )
    return {
        "LANG": NODE_LOCALE,
        "PYSPARK_PYTHON": python,
        **accepted_spark_env(spark_env_vars or {}),
        **pinned,
    }
