"""The node's task runner: detached process groups, state on disk, cancel, an allowlisted
environment."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.task_runner import TaskRunner, task_env
from tests.support import wait_for

SLEEP = b"import sys, time\nprint('sleeping', flush=True)\ntime.sleep(float(sys.argv[1]))\n"
FAIL = b"import sys\nprint('starting')\nraise ValueError('bad input: ' + sys.argv[1])\n"
ENV = b"import os, json\nprint(json.dumps(dict(os.environ)))\n"


def test_tasks_are_found_again_by_a_restarted_agent_and_cancel_kills_the_group(
    tmp_path: Path,
) -> None:
    r = TaskRunner(tmp_path / "tasks", kill_grace_s=0.5)
    env = task_env(os.environ, {})
    r.submit("long", file_name="s.py", program=SLEEP, argv=["60"], env=env)
    r.submit("long", file_name="s.py", program=FAIL, argv=["60"], env=env)  # once per key
    r.submit("bad", file_name="f.py", program=FAIL, argv=["7"], env=env)
    assert r.status("nope") is None and not r.known("nope") and r.known("long")
    assert (tmp_path / "tasks/long/s.py").read_bytes() == SLEEP
    assert (tmp_path / "tasks/long/s.py").stat().st_mode & 0o777 == 0o600

    again = TaskRunner(tmp_path / "tasks", kill_grace_s=0.5)
    wait_for("output", lambda: "sleeping" in again.status("long").stdout_tail)
    assert again.status("long").state == "RUNNING"
    bad = wait_for("the failure", lambda: (st := again.status("bad")).state != "RUNNING" and st)
    assert bad.state == "FAILED" and bad.exit_code == 1
    assert "ValueError: bad input: 7" in bad.stderr_tail and bad.ended_ms
    pid = int(json.loads((tmp_path / "tasks/long/cmd.json").read_text())["pid"])
    again.cancel("long")
    st = wait_for("the cancel", lambda: (x := again.status("long")).state != "RUNNING" and x)
    assert st.state == "CANCELED" and st.exit_code in (None, 143, -15)
    assert r.status("long").state == "CANCELED"  # (reaps the wrapper, our child)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone


def test_a_stopping_node_ends_its_tasks(tmp_path: Path) -> None:
    r = TaskRunner(tmp_path / "tasks", kill_grace_s=0.5)
    r.submit("a", file_name="s.py", program=SLEEP, argv=["60"], env=task_env(os.environ, {}))
    wait_for("output", lambda: "sleeping" in r.status("a").stdout_tail)
    pid = int(json.loads((tmp_path / "tasks/a/cmd.json").read_text())["pid"])
    r.stop_all(2.0)
    wait_for("the end", lambda: r.status("a").state != "RUNNING")
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_a_task_sees_only_the_allowlisted_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "SPARKPLANE_AGENT_TOKEN_FILE": "/secret/agent-token",
        "AZURE_CLIENT_SECRET": "s3cret",
        "LD_PRELOAD": "/evil.so",
    }
    r = TaskRunner(tmp_path / "tasks")
    env = task_env(node, {"SPARK_REMOTE": "sc://127.0.0.1:1", "A": "1"})
    r.submit("e", file_name="e.py", program=ENV, argv=[], env=env)
    st = wait_for("the end", lambda: (x := r.status("e")).state != "RUNNING" and x)
    assert st.state == "SUCCEEDED", st.stderr_tail
    seen = json.loads(st.stdout_tail.strip().splitlines()[-1])
    assert seen["SPARK_REMOTE"] == "sc://127.0.0.1:1" and seen["A"] == "1"
    assert seen["HOME"] == str(tmp_path)
    for name in ("SPARKPLANE_AGENT_TOKEN_FILE", "AZURE_CLIENT_SECRET", "LD_PRELOAD"):
        assert name not in seen


@pytest.mark.parametrize("name", ["../x.py", "a/b.py", "", ".."])
def test_a_file_name_cannot_leave_the_task_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        TaskRunner(tmp_path / "tasks").submit("k", file_name=name, program=b"", argv=[], env={})
