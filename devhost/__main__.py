"""`python -m devhost`: the local control plane in the foreground.

`make run` (`sparkplane up`) runs it with `--readable`: a line per cluster and run state change
on stdout (devhost/console.py) and the JSON log lines in `<data_dir>/log.jsonl` (and on stdout
too with `--json-logs`). Without it the JSON lines go to stderr (what the tests read)."""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cli_hint(url: str, token_file: Path) -> str:
    """A command that works as printed with the legacy `databricks` CLI (0.18, what pip
    installs): it keeps only the scheme and host name of DATABRICKS_HOST and drops the port,
    so it reaches the control plane as its HTTP proxy (devhost serves proxy-form requests);
    the made-up host name fails loudly where the proxy is not used."""
    return (
        f"http_proxy={url} DATABRICKS_HOST=http://sparkplane "
        f"DATABRICKS_TOKEN=$(cat {shlex.quote(str(token_file))}) databricks clusters list"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devhost")
    parser.add_argument("--readable", action="store_true", help="readable lines on stdout")
    parser.add_argument("--json-logs", action="store_true", help="JSON lines on stdout too")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from devhost.host import DevHost, load_settings

    load_settings(ROOT / "devhost.settings.json")

    import uvicorn

    from shared import logs
    from shared.settings import get_settings

    settings = get_settings()
    if not _loopback(settings.host) and not settings.allow_remote_bind:
        print(
            f"refusing to bind {settings.host}: set SPARKPLANE_ALLOW_REMOTE_BIND=true to listen "
            "beyond loopback",
            file=sys.stderr,
        )
        return 2
    from shared.private_files import private, private_dir

    data_dir = private_dir(settings.data_dir.resolve())
    lock = open(data_dir / "devhost.lock", "w", opener=private)  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another devhost is running on {data_dir}", file=sys.stderr)
        return 2
    level = os.environ.get("SPARKPLANE_LOG_LEVEL", "INFO")
    log_file = data_dir / "log.jsonl"
    if args.readable:
        from devhost.console import ConsoleHandler

        logs.setup(
            level,
            json_file=log_file,
            json_stream=sys.stdout if args.json_logs else None,
            extra=[ConsoleHandler()],
        )
    else:
        logs.setup(level)

    from function_app import app
    from shared.wiring import bootstrap_local, container

    c = container()
    token = bootstrap_local(c)
    receiver = c.bus if hasattr(c.bus, "receive") else None
    if receiver is not None and hasattr(receiver, "release_all_locks"):
        # We hold the data directory exclusively: locks still held belong to a dead process.
        receiver.release_all_locks()
    host_json = json.loads((ROOT / "host.json").read_text())
    host = DevHost(app, receiver, host_json, lock_s=settings.bus_lock_s)  # type: ignore[arg-type]
    url = f"http://{settings.host}:{settings.port}"
    host.start()
    print(f"sparkplane control plane: {url}", flush=True)
    print(f"  data directory: {data_dir}", flush=True)
    print(f"  token:          {token}  (also in {data_dir / 'token'})", flush=True)
    print(f"  provisioner:    {settings.provisioner}", flush=True)
    if args.readable:
        print(f"  JSON logs:      {log_file}", flush=True)
    print(f"  try: {cli_hint(url, data_dir / 'token')}", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            host.asgi,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            # Never take the client address from a client's X-Forwarded-For (uvicorn trusts
            # it from 127.0.0.1 by default): the host appends the real peer itself.
            proxy_headers=False,
            lifespan="on",
            interface="asgi3",
            timeout_graceful_shutdown=10,
        )
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # Ctrl-C: uvicorn has shut down gracefully and re-raised the signal
    finally:
        host.stop()
        print("sparkplane stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
