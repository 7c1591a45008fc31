"""Node processes: starting them (an environment built from nothing, a session of their own,
umask 077), finding them again (pid and create time, the node's marker), signalling them."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from shared.adapters.local_spark.conf import (
    CDS_MAP_OPTS,
    EXECUTOR_CLASS,
    LOOPBACK,
    daemon_opts_for,
    spark_defaults,
    wait_for_master,
)
from shared.adapters.local_spark.launch import Launches
from shared.adapters.local_spark.store import NodeStore, Proc, Rec
from shared.domain.node_env import node_environment, spark_env_problem
from shared.ports import NodeRequest
from shared.private_files import PRIVATE_UMASK, private, private_dir, write_private

log = logging.getLogger("sparkplane.local_spark")

ENV_NODE = "SPARKPLANE_NODE_ID"
ENV_CLUSTER = "SPARKPLANE_CLUSTER_ID"
ENV_DATA_DIR = "SPARKPLANE_DATA_DIR"

# Node processes started by this Python process, so the finished ones are reaped (a dead child
# that is not waited for stays a zombie). Shared by every provisioner of the process.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


def reap() -> None:
    with _CHILDREN_LOCK:
        for pid, popen in list(_CHILDREN.items()):
            if popen.poll() is not None:
                del _CHILDREN[pid]


def port_open(port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def live(pid: int, ctime: float) -> psutil.Process | None:
    """The process if `pid` still is the process started at `ctime` and it has not exited."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - ctime) > 0.5:
            return None  # the pid was reused
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def tree_rss(p: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        total += p.memory_info().rss
        for c in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if c.status() != psutil.STATUS_ZOMBIE:
                    total += c.memory_info().rss
    return total


def leader(r: Rec, name: str) -> psutil.Process | None:
    for pr in r.procs:
        if pr.name == name:
            return live(pr.pid, pr.ctime)
    return None


def members(r: Rec) -> list[psutil.Process]:
    """Live processes of the node: its leaders (pid and create time checked) and the
    members of their process groups that carry the node's marker in their environment
    (executors, Python workers). A node whose pids were never recorded (a crash right
    after a spawn) is found by the marker alone."""
    out: dict[int, psutil.Process] = {}
    for pr in r.procs:
        p = live(pr.pid, pr.ctime)
        if p is not None:
            out[p.pid] = p
    groups = {pr.pid for pr in r.procs}
    scan_all = len(r.procs) < r.expected_procs
    for pid in psutil.pids():
        if pid in out:
            continue
        if not scan_all:
            try:
                if os.getpgid(pid) not in groups:
                    continue
            except OSError:
                continue
        try:
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(ENV_NODE) != r.node_id:
                continue
        except psutil.Error:
            continue
        out[pid] = p
    return list(out.values())


def signal_node(r: Rec, sig: signal.Signals, found: Sequence[psutil.Process] | None = None) -> None:
    found = members(r) if found is None else found
    leaders = {pr.pid for pr in r.procs}
    for p in found:
        try:
            if p.pid in leaders:
                os.killpg(p.pid, sig)  # the leader's whole group (its session)
            else:
                p.send_signal(sig)
        except (OSError, psutil.Error):
            pass  # it exited meanwhile


def stop_process(proc: psutil.Process, grace_s: float) -> None:
    """Stop one process group now (SIGTERM, SIGKILL after `grace_s`) and wait for it."""
    with contextlib.suppress(OSError):  # the group is gone already
        os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs([proc], timeout=grace_s)
    for p in alive:
        with contextlib.suppress(OSError):  # it exited after all
            os.killpg(p.pid, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    reap()


def has_executors(found: Sequence[psutil.Process]) -> bool:
    for p in found:
        with contextlib.suppress(psutil.Error):
            if any(EXECUTOR_CLASS in part for part in p.cmdline()):
                return True
    return False


@dataclass(frozen=True, slots=True)
class Launcher:
    """Starts the processes of nodes under `data_dir` (see the package doc for the layout)."""

    data_dir: Path
    spark_home: Path
    java_home: Path
    store: NodeStore
    daemon_java_opts: str
    # Class-data-sharing archives (shared/adapters/local_spark/cds.py): their directory, and
    # the roles whose archive this launcher writes (the build) rather than maps.
    cds_dir: Path | None = None
    cds_dump: frozenset[str] = frozenset()
    # JVM options per role on top of daemon_java_opts (conf.ROLE_JAVA_OPTS).
    role_java_opts: Mapping[str, str] = field(default_factory=dict)
    # Spark's launcher answers, kept (shared/adapters/local_spark/launch.py); None: the
    # scripts run a launcher JVM for every process.
    launches: Launches | None = None

    def cds_for(self, req: NodeRequest | None) -> bool:
        """Whether the node's JVMs use the archives: they are there, and the cluster has no
        configuration files of its own (they need a conf directory of the node's own on the
        class path, where an archive needs the shared empty one)."""
        return self.cds_dir is not None and not (req is not None and req.conf_files)

    def properties_file(self, r: Rec, name: str) -> Path:
        """The spark-defaults.conf `spawn` writes for process `name` of the node."""
        return self.node_dir(r) / f"conf-{name}" / "spark-defaults.conf"

    def cds_opts(self, role: str) -> str:
        assert self.cds_dir is not None
        archive = self.cds_dir / f"{role}.jsa"
        if role in self.cds_dump:
            return f"-XX:ArchiveClassesAtExit={archive}"
        return f"-XX:SharedArchiveFile={archive} -Xshare:auto {CDS_MAP_OPTS}"

    def home(self, r: Rec) -> str:
        """A node's directories live under its cluster, or under its pool (for good)."""
        return f"pool-{r.pool_id}" if r.pool_id else r.cluster_id

    def node_dir(self, r: Rec) -> Path:
        return self.data_dir / "nodes" / self.home(r) / r.node_id

    def dirs(self, r: Rec) -> tuple[Path, Path]:
        node_dir = self.node_dir(r)
        log_dir = self.data_dir / "logs" / self.home(r) / r.node_id
        for d in (node_dir / "scratch", node_dir / "work", log_dir):
            private_dir(d)
        return node_dir, log_dir

    def spawn(
        self,
        r: Rec,
        name: str,
        argv: list[str],
        conf: Mapping[str, str] | None,
        req: NodeRequest | None,
        daemon_memory: str,
        *,
        extra_env: Mapping[str, str] | None = None,
        cds_role: str | None = None,
        after_port: tuple[int, int] | None = None,
    ) -> None:
        """Start process `name` of the node. `cds_role`: a Spark JVM that maps (or, building,
        writes) that role's class-data-sharing archive when the node uses them (`cds_for`);
        its argv then names its spark-defaults.conf with --properties-file. `after_port`
        (port, limit in s): the process starts once that port of 127.0.0.1 accepts
        connections (the master's RPC port, for a Worker or the Connect server)."""
        node_dir, log_dir = self.dirs(r)
        conf_dir = node_dir / f"conf-{name}"
        if conf is not None:  # a Spark process (the agent has no Spark configuration)
            private_dir(conf_dir)
            write_private(conf_dir / "spark-defaults.conf", spark_defaults(conf))
        for file_name, content in (req.conf_files if req and conf is not None else {}).items():
            if Path(file_name).name != file_name or file_name == "spark-defaults.conf":
                raise ValueError(f"bad configuration file name {file_name!r}")
            write_private(conf_dir / file_name, content)

        # From nothing (shared/domain/node_env.py): nothing of this process's environment.
        user_env = req.spark_env_vars if req is not None else {}
        refused = sorted(k for k, v in user_env.items() if spark_env_problem(k, v))
        if refused:  # the API refuses them: a request made elsewhere cannot set them either
            log.warning(
                "spark_env_vars not set on the node",
                extra={"cluster_id": r.cluster_id, "names": refused},
            )
        java_opts, spark_conf_dir = daemon_opts_for(self.daemon_java_opts, conf), conf_dir
        role_opts = self.role_java_opts.get(cds_role or "", "")
        if java_opts and role_opts:
            java_opts = f"{java_opts} {role_opts}"
        if cds_role is not None and self.cds_for(req):
            assert self.cds_dir is not None
            java_opts = f"{java_opts} {self.cds_opts(cds_role)}".strip()
            spark_conf_dir = self.cds_dir / "conf"
        env = node_environment(
            python=sys.executable,
            java_home=str(self.java_home),
            home=str(node_dir),
            spark_env_vars=user_env,
            settings={
                "SPARK_DAEMON_MEMORY": daemon_memory,
                "SPARK_DAEMON_JAVA_OPTS": java_opts,
                "SPARK_HOME": str(self.spark_home),
                "SPARK_CONF_DIR": str(spark_conf_dir),
                "SPARK_LOG_DIR": str(log_dir),
                "SPARK_PID_DIR": str(node_dir),
                "SPARK_LOCAL_DIRS": str(node_dir / "scratch"),
                "SPARK_LOCAL_IP": LOOPBACK,
                "SPARK_LOCAL_HOSTNAME": LOOPBACK,
                "SPARK_PUBLIC_DNS": LOOPBACK,
                "SPARK_NO_DAEMONIZE": "1",
                ENV_NODE: r.node_id,
                ENV_CLUSTER: r.cluster_id,
                ENV_DATA_DIR: str(self.data_dir),
                **(extra_env or {}),
            },
        )
        if self.launches is not None and conf is not None:
            direct = self.launches.command(argv, env, conf)
            if direct is not None:
                argv, env = direct
        if after_port is not None:
            argv = wait_for_master(name, after_port[0], after_port[1], argv)
        with (
            open(log_dir / f"{name}.out", "ab", opener=private) as out,
            open(log_dir / f"{name}.err", "ab", opener=private) as err,
        ):
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=node_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                umask=PRIVATE_UMASK,  # what the node writes under the data dir is private too
            )
        with _CHILDREN_LOCK:
            _CHILDREN[popen.pid] = popen
        try:
            ctime = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            ctime = time.time()  # exited at once: live() will call it dead
        r.procs.append(Proc(name, popen.pid, ctime))
        self.store.update(r, procs=r.procs, attrs=r.attrs)
