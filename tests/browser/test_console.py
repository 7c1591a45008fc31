"""The web console in a real browser against devhost (record provisioner, fast boots).

`SPARKPLANE_CONSOLE_SCREENSHOTS=1` also saves the main pages as PNGs in docs/console/
(`make console-screenshots`), the pictures docs/console.md shows.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

from databricks.sdk.service import compute, jobs
from playwright.sync_api import expect

from devhost.process import DevhostProcess

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"


def shot(page: Any, name: str) -> None:
    if os.environ.get("SPARKPLANE_CONSOLE_SCREENSHOTS"):
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, devhost: DevhostProcess, token: str | None = None) -> None:
    page.goto(devhost.url + "/")
    page.fill("#token", token or devhost.token)
    page.click("#signin-form button[type=submit]")


def test_sign_in_create_a_cluster_watch_it_run_see_its_events_and_terminate_it(
    page: Any, devhost: DevhostProcess
) -> None:
    served = page.goto(devhost.url + "/")
    assert "script-src 'self'" in served.headers["content-security-policy"]
    assert served.headers["content-type"] == "text/html; charset=utf-8"
    shot(page, "sign-in")
    sign_in(page, devhost)
    expect(page.locator("#view h1")).to_have_text("Clusters")
    expect(page.locator("#clusters")).to_contain_text("No clusters yet.")

    page.click("#create-cluster")
    expect(page.locator("#f-version option")).not_to_have_count(0)
    expect(page.locator("#f-node option")).not_to_have_count(0)
    page.fill("#f-name", "console-demo")
    page.check("#f-autoscale")
    page.fill("#f-min", "1")
    page.fill("#f-max", "3")
    shot(page, "create-cluster")
    page.click("#f-submit")

    expect(page.locator("#cluster-title")).to_have_text("console-demo")
    expect(page.locator("#cluster-summary [data-state]")).to_have_text("RUNNING")
    expect(page.locator("#cluster-summary")).to_contain_text("autoscale 1\u20133")
    expect(page.locator("#events [data-event-type=CREATING]")).to_have_count(1)
    expect(page.locator("#events [data-event-type=RUNNING]")).to_have_count(1)
    # The record provisioner's nodes have no Spark endpoints (real clusters show their URLs).
    expect(page.locator("#cluster-endpoints")).to_contain_text("Spark Connect")
    expect(page.locator("#cluster-config")).to_contain_text('"cluster_name": "console-demo"')
    shot(page, "cluster")

    page.click("#nav a[href='#/clusters']")
    row = page.locator("#clusters tr", has_text="console-demo")
    expect(row.locator("[data-state]")).to_have_text("RUNNING")
    expect(row).to_contain_text("autoscale 1\u20133")
    shot(page, "clusters")

    row.locator("a").click()
    page.fill("#resize-min", "2")
    page.fill("#resize-max", "4")
    page.click("#resize-form button[type=submit]")
    expect(page.locator("#cluster-summary")).to_contain_text("autoscale 2\u20134")
    expect(page.locator("#cluster-summary [data-state]")).to_have_text("RUNNING")
    page.click("#terminate")
    expect(page.locator("#cluster-summary [data-state]")).to_have_text("TERMINATED")
    expect(page.locator("#events [data-event-type=TERMINATING]")).to_have_count(1)
    expect(page.locator("#start")).to_be_enabled()
    page.click("#start")
    expect(page.locator("#cluster-summary [data-state]")).to_have_text("RUNNING")
    page.click("#delete")
    expect(page.locator("#view h1")).to_have_text("Clusters")
    expect(page.locator("#clusters")).not_to_contain_text("console-demo")


def test_a_bad_token_shows_the_api_message_and_stays_on_sign_in(
    page: Any, devhost: DevhostProcess
) -> None:
    sign_in(page, devhost, token="dapi-not-a-token")
    expect(page.locator("#error")).to_have_text("Sign-in failed: Invalid access token.")
    expect(page.locator("#signin")).to_be_visible()
    expect(page.locator("#nav")).to_be_hidden()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_token_refused_mid_session_signs_out_with_the_api_message(
    page: Any, devhost: DevhostProcess
) -> None:
    sign_in(page, devhost)
    expect(page.locator("#view h1")).to_have_text("Clusters")
    # As when the token is revoked or expires while the tab is open.
    page.evaluate("sessionStorage.setItem('sparkplane.token', 'dapi-revoked')")
    expect(page.locator("#error")).to_have_text("Invalid access token.")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_api_errors_show_the_api_message(page: Any, devhost: DevhostProcess) -> None:
    sign_in(page, devhost)
    expect(page.locator("#view h1")).to_have_text("Clusters")
    page.goto(devhost.url + "/#/clusters/no-such-cluster")
    expect(page.locator("#error")).to_contain_text("does not exist")


def test_a_refused_create_shows_the_api_message_on_the_form(
    page: Any, devhost: DevhostProcess
) -> None:
    sign_in(page, devhost)
    page.click("#create-cluster")
    page.check("#f-autoscale")
    page.fill("#f-min", "3")
    page.fill("#f-max", "1")
    page.click("#f-submit")
    expect(page.locator("#error")).to_contain_text("max_workers")
    expect(page.locator("#view h1")).to_have_text("Create cluster")


def test_jobs_pools_and_files_pages(page: Any, devhost: DevhostProcess) -> None:
    w = devhost.client()
    w.instance_pools.create(
        instance_pool_name="warm", node_type_id="rec-small", min_idle_instances=2, max_capacity=4
    )
    w.dbfs.upload("/jobs/count.py", io.BytesIO(b"print('rows', 1000)\n"), overwrite=True)
    w.dbfs.mkdirs("/data")
    job = w.jobs.create(name="nightly-count")
    assert job.job_id

    sign_in(page, devhost)
    page.click("#nav a[href='#/pools']")
    row = page.locator("#pools tr", has_text="warm")
    expect(row).to_contain_text("rec-small")
    cells = row.locator("td")
    expect(cells.nth(2)).to_have_text("2")  # idle: the pool keeps its two warm nodes
    expect(cells.nth(3)).to_have_text("0")  # used
    expect(cells.nth(6)).to_have_text("4")  # max capacity
    shot(page, "pools")

    page.click("#nav a[href='#/files']")
    expect(page.locator("#view a", has_text="jobs/")).to_be_visible()
    page.click("#view a:text('jobs/')")
    expect(page.locator("#view")).to_contain_text("count.py")
    expect(page.locator("#breadcrumbs")).to_contain_text("jobs")
    shot(page, "files")

    page.click("#nav a[href='#/jobs']")
    expect(page.locator("#jobs")).to_contain_text("nightly-count")


def python_job(w: Any, name: str, code: bytes) -> int:
    w.dbfs.upload(f"/console/{name}.py", io.BytesIO(code), overwrite=True)
    task = jobs.Task(
        task_key="main",
        spark_python_task=jobs.SparkPythonTask(python_file=f"dbfs:/console/{name}.py"),
        new_cluster=compute.ClusterSpec(
            spark_version="4.1.x-scala2.13", node_type_id="rec-small", num_workers=1
        ),
    )
    job_id = w.jobs.create(name=name, tasks=[task]).job_id
    assert job_id is not None
    return job_id


def test_run_a_job_now_see_its_task_and_output_and_cancel_a_run(
    page: Any, devhost: DevhostProcess
) -> None:
    w = devhost.client()
    python_job(w, "count-rows", b"print('rows', 1000)\n")
    python_job(w, "nap", b"import time\nprint('sleeping', flush=True)\ntime.sleep(60)\n")
    sign_in(page, devhost)
    page.click("#nav a[href='#/jobs']")

    page.locator("#jobs tr", has_text="count-rows").locator("button").click()
    expect(page.locator("#run-title")).to_contain_text("count-rows")
    task = page.locator("#tasks tr", has_text="main")
    expect(task.locator("[data-state]")).to_have_text("SUCCESS", timeout=30_000)
    expect(task).to_contain_text("rows 1000")
    expect(page.locator("#run-summary [data-state]")).to_have_text("SUCCESS")
    expect(page.locator("#cancel-run")).to_be_disabled()
    shot(page, "run")

    page.click("#nav a[href='#/jobs']")
    page.locator("#jobs tr", has_text="nap").locator("button").click()
    expect(page.locator("#run-title")).to_contain_text("nap")
    page.click("#cancel-run")
    expect(page.locator("#run-summary [data-state]")).to_have_text("CANCELED", timeout=30_000)
    page.click("#nav a[href='#/jobs']")
    expect(page.locator("#runs tr", has_text="count-rows")).to_contain_text("SUCCESS")
    expect(page.locator("#runs tr", has_text="nap")).to_contain_text("CANCELED")
    shot(page, "jobs")


def test_the_event_log_pages_and_shows_the_autoscalers_numbers(
    page: Any, devhost: DevhostProcess
) -> None:
    # The record provisioner's clusters send no heartbeats, so the autoscaler never reports:
    # the events call answers as the API does for a cluster that scaled (two pages).
    report = {
        "cluster_id": "c-1",
        "timestamp": 1_780_000_000_000,
        "type": "AUTOSCALING_STATS_REPORT",
        "details": {
            "current_num_workers": 1,
            "target_num_workers": 3,
            "reason": {
                "code": "AUTOSCALE",
                "type": "SUCCESS",
                "parameters": {"explanation": "backlog", "pending_tasks": "12.0"},
            },
        },
    }

    def events(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        if body.get("offset", 0) == 0:
            page_ = {"events": [report] * 10, "total_count": 11, "next_page_token": "10"}
        else:
            page_ = {"events": [{**report, "type": "CREATING", "details": {}}], "total_count": 11}
        route.fulfill(json=page_)

    w = devhost.client()
    cluster_id = w.clusters.create(
        cluster_name="scaled",
        spark_version="4.1.x-scala2.13",
        node_type_id="rec-small",
        autoscale=compute.AutoScale(min_workers=1, max_workers=3),
    ).cluster_id
    page.route("**/api/2.1/clusters/events", events)
    sign_in(page, devhost)
    page.goto(f"{devhost.url}/#/clusters/{cluster_id}")
    first = page.locator("#events tr[data-event-type=AUTOSCALING_STATS_REPORT]").first
    expect(first).to_contain_text("workers 1 \u2192 3")
    expect(first).to_contain_text("pending_tasks: 12.0")
    expect(first).to_contain_text("explanation: backlog")
    expect(page.locator("#events-page")).to_have_text("1\u201310 of 11")
    expect(page.locator("#events-newer")).to_be_disabled()
    page.click("#events-older")
    expect(page.locator("#events-page")).to_have_text("11\u201311 of 11")
    expect(page.locator("#events tr[data-event-type=CREATING]")).to_have_count(1)
    expect(page.locator("#events-older")).to_be_disabled()
    page.click("#events-newer")
    expect(page.locator("#events-page")).to_have_text("1\u201310 of 11")


def test_a_clusters_spark_endpoints_link_and_its_connect_url_copies(
    page: Any, devhost: DevhostProcess
) -> None:
    # Record clusters have no Spark endpoints: GET answers as for a real cluster's driver.
    connect = "sc://127.0.0.1:15002/;token=secret"
    driver = {
        "spark_ui_url": "http://127.0.0.1:4040",
        "master_ui_url": "http://127.0.0.1:8080",
        "connect_url": connect,
    }

    def with_driver(route: Any) -> None:
        body = route.fetch().json()
        route.fulfill(json={**body, "driver": {**body.get("driver", {}), **driver}})

    w = devhost.client()
    cluster_id = w.clusters.create(
        cluster_name="linked",
        spark_version="4.1.x-scala2.13",
        node_type_id="rec-small",
        num_workers=0,
    ).cluster_id
    page.route("**/api/2.1/clusters/get?*", with_driver)
    sign_in(page, devhost)
    page.goto(f"{devhost.url}/#/clusters/{cluster_id}")
    endpoints = page.locator("#cluster-endpoints")
    expect(endpoints.locator("a[href='http://127.0.0.1:4040']")).to_be_visible()
    expect(endpoints.locator("a[href='http://127.0.0.1:8080']")).to_be_visible()
    expect(page.locator("#connect-url")).to_have_text(connect)
    page.click("#copy-connect")
    expect(page.locator("#copy-connect")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == connect
    page.wait_for_timeout(2500)  # a refresh later, the button still says so
    expect(page.locator("#copy-connect")).to_have_text("Copied")
