"""The agent's summary of Spark's REST payloads."""

from shared.agent import summarize, worker_key


def ex(id_: str, port: int, cores: int, active: int, shuffle: int = 0, mem: int = 0) -> dict:
    return {
        "id": id_,
        "isActive": True,
        "totalCores": cores,
        "activeTasks": active,
        "totalShuffleWrite": shuffle,
        "memoryUsed": mem,
        "diskUsed": 0,
        "executorLogs": {"stdout": f"http://127.0.0.1:{port}/logPage/?appId=a&executorId={id_}"},
    }


def test_summary_of_two_apps() -> None:
    app1 = {
        "jobs": [{"jobId": 1}],
        "stages": [
            {"numTasks": 10, "numActiveTasks": 2, "numCompleteTasks": 3},
            {"numTasks": 4, "numActiveTasks": 0, "numCompleteTasks": 0},
        ],
        "executors": [
            {"id": "driver", "totalCores": 8, "activeTasks": 0},
            ex("0", 8081, 2, 2, shuffle=100),
            ex("1", 8082, 2, 0),
        ],
        "sql": [{"status": "RUNNING"}, {"status": "COMPLETED"}],
    }
    app2 = {"jobs": [], "stages": [], "executors": [ex("0", 8082, 1, 0, mem=5)], "sql": []}
    s = summarize([app1, app2])
    assert s["running_tasks"] == 2 and s["pending_tasks"] == 5 + 4
    assert s["active_jobs"] == 1 and s["active_queries"] == 1 and s["total_slots"] == 5
    assert s["workers"] == [
        {
            "node_id": "http://127.0.0.1:8081/",
            "running_tasks": 2,
            "shuffle_bytes": 100,
            "cached_bytes": 0,
        },
        {
            "node_id": "http://127.0.0.1:8082/",
            "running_tasks": 0,
            "shuffle_bytes": 0,
            "cached_bytes": 5,
        },
    ]


def test_idle_cluster_and_worker_key_fallback() -> None:
    assert summarize([])["running_tasks"] == 0
    assert worker_key({"hostPort": "10.0.0.5:4000"}) == "10.0.0.5:4000"
