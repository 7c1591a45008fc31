"""The package Azure builds: pinned requirements that agree with pyproject, what `.funcignore`
keeps out, and settings the real Functions host accepts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from tools import requirements as reqs

ROOT = Path(__file__).resolve().parents[2]


def test_requirements_txt_pins_every_runtime_dependency_within_pyproject_ranges() -> None:
    pins = reqs.parse((ROOT / "requirements.txt").read_text())
    assert reqs.disagreements(reqs.direct_requirements(), pins) == []
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", v) for v in pins.values()), pins


def test_a_pin_outside_pyproject_range_or_missing_is_a_disagreement() -> None:
    roots = [Requirement("croniter~=7.0"), Requirement("httpx~=0.28")]
    assert reqs.disagreements(roots, {"croniter": "7.0.0", "httpx": "0.28.1"}) == []
    problems = reqs.disagreements(roots, {"croniter": "6.0.0"})
    assert problems == [
        "croniter==6.0.0 does not satisfy pyproject's croniter~=7.0",
        "httpx is a dependency in pyproject.toml but not pinned",
    ]


def test_requirements_txt_ships_nothing_of_the_local_dev_or_spark_extras() -> None:
    pins = reqs.parse((ROOT / "requirements.txt").read_text())
    for extra_only in ("starlette", "uvicorn", "rich", "pyspark", "pytest", "databricks-sdk"):
        assert extra_only not in pins


def test_the_function_app_imports_without_the_local_extras() -> None:
    # Azure installs requirements.txt only: the app must not reach devhost's or bench's packages.
    code = (
        "import sys\n"
        "for name in ('starlette', 'uvicorn', 'rich'):\n"
        "    sys.modules[name] = None\n"
        "import function_app\n"
        "print(len(function_app.app.get_functions()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10


def _funcignored(paths: list[str], tmp_path: Path) -> set[str]:
    # git's own gitignore matcher, on a scratch repository whose .gitignore is .funcignore.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text((ROOT / ".funcignore").read_text())
    done = subprocess.run(
        ["git", "-C", str(tmp_path), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths),
        capture_output=True,
        text=True,
    )
    return set(done.stdout.split())


def test_funcignore_keeps_what_the_app_reads_and_drops_the_rest(tmp_path: Path) -> None:
    kept = [
        "function_app.py",
        "host.json",
        "requirements.txt",
        "functions/clusters_api.py",
        "shared/services/clusters.py",
        "shared/adapters/arm/provisioner.py",
        "infra/templates/cluster.json",
        "infra/bootstrap/cloud-init.yaml",
        "functions/console.py",
        "console/index.html",
        "console/app.js",
        "console/style.css",
    ]
    dropped = [
        "tests/unit/test_packaging.py",
        "bench/load.py",
        "devhost/host.py",
        "docs/deploy.md",
        "tools/requirements.py",
        "local.settings.json",
        "devhost.settings.json",
        ".venv/bin/python",
        ".sparkplane/store.db",
        "shared/__pycache__/settings.cpython-311.pyc",
        "infra/main.bicep",
        "infra/modules/app.bicep",
    ]
    assert _funcignored(kept + dropped, tmp_path) == set(dropped)


def _trigger_settings() -> tuple[set[str], set[str]]:
    """The %settings% the triggers name, and the Service Bus connections they use."""
    from tests.unit.test_function_app import TRIGGERS  # get_functions() builds only once

    names: set[str] = set()
    connections: set[str] = set()
    for trigger in TRIGGERS.values():
        names.update(re.findall(r"%([A-Za-z0-9_]+)%", json.dumps(trigger, default=str)))
        if trigger["type"] == "serviceBusTrigger":
            connections.add(trigger["connection"])
    return names, connections


def test_local_settings_are_what_the_real_functions_host_needs() -> None:
    values = json.loads((ROOT / "local.settings.json").read_text())["Values"]
    names, connections = _trigger_settings()
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"]  # timers keep their schedule's leases there
    assert names <= values.keys()
    for connection in connections:
        # A connection string, or the identity-based form: never devhost's "embedded".
        value = values.get(connection, "")
        assert value.startswith("Endpoint=sb://") or f"{connection}__fullyQualifiedNamespace" in (
            values
        )
    assert values["SPARKPLANE_BUS"] == "servicebus"  # the app sends where the triggers listen


def test_devhost_settings_name_the_same_queues_and_schedules() -> None:
    host = json.loads((ROOT / "local.settings.json").read_text())["Values"]
    dev = json.loads((ROOT / "devhost.settings.json").read_text())["Values"]
    names, _ = _trigger_settings()
    assert {n: dev[n] for n in names} == {n: host[n] for n in names}


def test_host_json_logs_successful_invocations() -> None:
    # Host.Results feeds Application Insights' requests table, which docs/deploy.md queries.
    host = json.loads((ROOT / "host.json").read_text())
    assert host["logging"]["logLevel"]["Host.Results"] == "Information"
