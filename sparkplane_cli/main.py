"""`sparkplane`: the operator's commands over the admin API (thin: each command is one or two
requests and a table; the API decides). Errors are one line on stderr and exit code 1."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from sparkplane_cli.api import Api, CliError, default_token_file, default_url

app = typer.Typer(
    name="sparkplane",
    help="The sparkplane control plane: run it locally, and operate it (local or in Azure).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
workspaces = typer.Typer(help="Workspaces (each with its first user token).", no_args_is_help=True)
quotas = typer.Typer(help="A workspace's quotas.", no_args_is_help=True)
tokens = typer.Typer(help="Operator tokens.", no_args_is_help=True)
dead_letters = typer.Typer(help="The queues' dead-lettered messages.", no_args_is_help=True)
azure = typer.Typer(help="A deployment in Azure.", no_args_is_help=True)
app.add_typer(workspaces, name="workspaces")
app.add_typer(quotas, name="quotas")
app.add_typer(tokens, name="tokens")
app.add_typer(dead_letters, name="dead-letters")
app.add_typer(azure, name="azure")

out = Console()
QUEUE = "cluster-lifecycle"


@app.callback()
def _options(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option(envvar="SPARKPLANE_URL", help="The control plane's URL.")
    ] = "",
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar="SPARKPLANE_OPERATOR_TOKEN_FILE",
            help="The operator token's file (default: $SPARKPLANE_DATA_DIR/operator-token).",
        ),
    ] = None,
) -> None:
    # The token itself only from the environment or a file (never in argv: `ps` shows it).
    ctx.meta["url_given"] = bool(url)
    ctx.obj = Api(
        url or default_url(),
        token_file or default_token_file(),
        os.environ.get("SPARKPLANE_OPERATOR_TOKEN") or None,
    )


def _ms(ms: Any) -> str:
    if not ms or ms < 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


# ---------------------------------------------------------------------------- up, status


def _root() -> Path:
    """The checkout to run: the current directory, else the one this package lives in."""
    for d in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (d / "function_app.py").is_file() and (d / "devhost").is_dir():
            return d
    raise CliError("this command runs the app's code: run it in a sparkplane checkout")


@app.command()
def up(
    json_logs: Annotated[
        bool, typer.Option("--json-logs", help="Also print the JSON log lines on stdout.")
    ] = False,
) -> None:
    """Run the local control plane in the foreground (what `make run` runs)."""
    root = _root()
    os.chdir(root)
    argv = [sys.executable, "-m", "devhost", "--readable"] + (["--json-logs"] if json_logs else [])
    os.execv(sys.executable, argv)


def _status_view(api: Api) -> Group:
    s = api.call("GET", "/api/admin/status")
    clusters = _table(
        "Clusters",
        ["workspace", "cluster", "name", "state", "workers", "since", "message"],
        [
            [
                c["workspace_id"],
                c["cluster_id"],
                c["cluster_name"],
                c["state"],
                f"{c['workers']}/{c['target_workers']}",
                _ms(c["start_time"]),
                c["state_message"],
            ]
            for c in s["clusters"]
        ],
    )
    parts: list[Any] = [clusters]
    if "queues" in s:
        parts.append(
            _table(
                "Queues",
                ["queue", "active", "scheduled", "locked", "dead-lettered"],
                [
                    [q["queue"], q["active"], q["scheduled"], q["locked"], q["dead_lettered"]]
                    for q in s["queues"]
                ],
            )
        )
    return Group(*parts)


@app.command()
def status(
    ctx: typer.Context,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 2.0,
) -> None:
    """Every workspace's clusters and the queues."""
    api: Api = ctx.obj
    if not watch:
        out.print(_status_view(api))
        return
    try:
        with Live(_status_view(api), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_status_view(api), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --watch ends


# ---------------------------------------------------------------------------- workspaces


def _assignments(pairs: list[str]) -> dict[str, int | None]:
    """KEY=VALUE quota settings; VALUE `default` puts the limit back to the default."""
    body: dict[str, int | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"expected KEY=VALUE, got {pair!r}")
        if value == "default":
            body[key] = None
        elif value.lstrip("-").isdigit():
            body[key] = int(value)
        else:
            raise CliError(f"{key}: expected an integer or 'default', got {value!r}")
    return body


@workspaces.command("create")
def workspaces_create(
    ctx: typer.Context,
    name: str,
    workspace_id: Annotated[str, typer.Option("--id", help="Default: generated.")] = "",
    region: Annotated[str, typer.Option(help="The Azure region (Azure only).")] = "",
    admin_user: Annotated[str, typer.Option(help="The first token's user.")] = "",
    quota: Annotated[
        list[str] | None, typer.Option("--quota", help="KEY=VALUE, repeatable.")
    ] = None,
) -> None:
    """Create a workspace; prints its first user token (shown only this once)."""
    body: dict[str, Any] = {"name": name}
    for key, value in (("workspace_id", workspace_id), ("region", region)):
        if value:
            body[key] = value
    if admin_user:
        body["admin_user"] = admin_user
    if quota:
        body["quotas"] = _assignments(quota)
    w = ctx.obj.call("POST", "/api/admin/workspaces", body)
    out.print(f"workspace {w['workspace_id']} ({w['name']}) created")
    out.print(f"first token ({w['token_info'].get('token_id', '')}): {w['token_value']}")


@workspaces.command("list")
def workspaces_list(ctx: typer.Context) -> None:
    """Every workspace."""
    ws = ctx.obj.call("GET", "/api/admin/workspaces")["workspaces"]
    rows = [
        [
            w["workspace_id"],
            w.get("name"),
            w.get("state"),
            w.get("region") or "",
            _ms(w.get("created")),
        ]
        for w in ws
    ]
    out.print(_table("Workspaces", ["id", "name", "state", "region", "created"], rows))


@workspaces.command("delete")
def workspaces_delete(ctx: typer.Context, workspace_id: str) -> None:
    """Delete a workspace and everything it owns (asynchronous: it is DELETING at once)."""
    w = ctx.obj.call("DELETE", f"/api/admin/workspaces/{workspace_id}")
    out.print(f"workspace {workspace_id}: {w.get('state', 'DELETING')}")


# ---------------------------------------------------------------------------- quotas


def _print_quotas(q: dict[str, Any]) -> None:
    rows = [
        [
            k,
            v,
            "set" if k in q["overrides"] else "default",
            q["usage"].get(k.removeprefix("max_"), ""),  # usage names drop the max_
        ]
        for k, v in sorted(q["quotas"].items())
    ]
    out.print(_table(f"Quotas of {q['workspace_id']}", ["quota", "limit", "", "usage"], rows))


@quotas.command("get")
def quotas_get(ctx: typer.Context, workspace_id: str) -> None:
    """A workspace's limits, which are set (not default), and its usage."""
    _print_quotas(ctx.obj.call("GET", f"/api/admin/workspaces/{workspace_id}/quotas"))


@quotas.command("set")
def quotas_set(
    ctx: typer.Context,
    workspace_id: str,
    assignments: Annotated[list[str], typer.Argument(help="KEY=VALUE (VALUE `default`).")],
) -> None:
    """Set limits of a workspace (`KEY=default` goes back to the default)."""
    body = _assignments(assignments)
    _print_quotas(ctx.obj.call("PATCH", f"/api/admin/workspaces/{workspace_id}/quotas", body))


# ---------------------------------------------------------------------------- tokens


@tokens.command("create")
def tokens_create(
    ctx: typer.Context,
    comment: Annotated[str, typer.Option(help="What the token is for.")] = "",
    lifetime_seconds: Annotated[
        int | None, typer.Option(help="Default: as long as the API allows.")
    ] = None,
) -> None:
    """A new operator token for your user (printed only this once)."""
    body: dict[str, Any] = {"comment": comment}
    if lifetime_seconds is not None:
        body["lifetime_seconds"] = lifetime_seconds
    t = ctx.obj.call("POST", "/api/admin/tokens", body)
    out.print(f"token {t['token_info']['token_id']}: {t['token_value']}")


@tokens.command("list")
def tokens_list(ctx: typer.Context) -> None:
    """Every operator token (never their values)."""
    ts = ctx.obj.call("GET", "/api/admin/tokens")["token_infos"]
    rows = [
        [
            t["token_id"],
            t.get("user", ""),
            t.get("comment", ""),
            _ms(t.get("creation_time")),
            _ms(t.get("expiry_time")),
        ]
        for t in ts
    ]
    out.print(_table("Operator tokens", ["id", "user", "comment", "created", "expires"], rows))


@tokens.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: str) -> None:
    """Revoke an operator token (it stays revoked across restarts)."""
    ctx.obj.call("DELETE", f"/api/admin/tokens/{token_id}")
    out.print(f"token {token_id} revoked")


# ---------------------------------------------------------------------------- dead letters

QueueOpt = Annotated[str, typer.Option("--queue", "-q", help="cluster-lifecycle or job-runs.")]


@dead_letters.command("list")
def dead_letters_list(ctx: typer.Context, queue: QueueOpt = QUEUE) -> None:
    """A queue's dead-lettered messages."""
    ms = ctx.obj.call("GET", f"/api/admin/dead-letters/{queue}")["messages"]
    rows = [
        [
            m["sequence_number"],
            m["message_id"],
            m.get("session_id") or "",
            m["delivery_count"],
            _ms(m.get("enqueued_time")),
            m.get("dead_letter_reason") or "",
            m.get("dead_letter_description") or "",
        ]
        for m in ms
    ]
    cols = ["seq", "message", "session", "deliveries", "enqueued", "reason", "description"]
    out.print(_table(f"Dead letters of {queue}", cols, rows))


@dead_letters.command("replay")
def dead_letters_replay(
    ctx: typer.Context, seq: Annotated[list[int], typer.Argument()], queue: QueueOpt = QUEUE
) -> None:
    """Move dead letters back to their queue (with a fresh delivery count)."""
    for n in seq:
        ctx.obj.call("POST", f"/api/admin/dead-letters/{queue}/{n}/resubmit")
        out.print(f"{queue} {n}: replayed")


@dead_letters.command("purge")
def dead_letters_purge(
    ctx: typer.Context,
    seq: Annotated[list[int] | None, typer.Argument()] = None,
    queue: QueueOpt = QUEUE,
    all_: Annotated[bool, typer.Option("--all", help="Every dead letter of the queue.")] = False,
) -> None:
    """Delete dead letters (the given ones, or --all)."""
    if all_ == bool(seq):
        raise CliError("name the sequence numbers to purge, or --all (not both)")
    if all_:
        n = ctx.obj.call("DELETE", f"/api/admin/dead-letters/{queue}")["purged"]
        out.print(f"{queue}: {n} purged")
        return
    for s in seq or []:
        ctx.obj.call("DELETE", f"/api/admin/dead-letters/{queue}/{s}")
        out.print(f"{queue} {s}: purged")


# ---------------------------------------------------------------------------- azure


@azure.command("bootstrap")
def azure_bootstrap(
    ctx: typer.Context,
    user: Annotated[str, typer.Option(help="Your user name (the token's user).")],
    cosmos_endpoint: Annotated[
        str,
        typer.Option(
            envvar="SPARKPLANE_COSMOS_ENDPOINT",
            help="The app's Cosmos DB account (documentEndpoint).",
        ),
    ] = "",
    comment: Annotated[str, typer.Option(help="The token's comment.")] = "first operator",
    check: Annotated[bool, typer.Option(help="Call the app at --url with the new token.")] = True,
) -> None:
    """The first operator token of a deployed app, written straight into its store with your
    own Entra ID login (`az login`; the data-plane role on the account, docs/deploy.md)."""
    # The app's store; the bus and the provisioner are built but never used.
    for key, value in (
        ("SPARKPLANE_STORE", "cosmos"),
        ("SPARKPLANE_BUS", "embedded"),
        ("SPARKPLANE_PROVISIONER", "records"),
    ):
        os.environ.setdefault(key, value)
    if cosmos_endpoint:
        os.environ["SPARKPLANE_COSMOS_ENDPOINT"] = cosmos_endpoint
    if os.environ["SPARKPLANE_STORE"] == "cosmos" and not os.environ.get(
        "SPARKPLANE_COSMOS_ENDPOINT"
    ):
        raise CliError("--cosmos-endpoint is needed (the account's documentEndpoint)")
    scratch = tempfile.TemporaryDirectory(prefix="sparkplane-bootstrap-")
    os.environ.setdefault("SPARKPLANE_DATA_DIR", scratch.name)
    sys.path.insert(0, str(_root()))
    try:
        from shared.services.auth import OPERATOR_WORKSPACE
        from shared.settings import get_settings
        from shared.wiring import build

        c = build(get_settings())
        c.auth.ensure_workspace(OPERATOR_WORKSPACE, "operators")
        token, info = c.auth.issue_token(
            OPERATOR_WORKSPACE, user=user, comment=comment, role="operator"
        )
    except CliError:
        raise
    except Exception as e:
        # The store refused or was unreachable (login, role, endpoint): one line, not a trace.
        raise CliError(f"bootstrap failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        scratch.cleanup()
    out.print(f"operator token {info['token_id']}: {token}")
    if check and ctx.meta.get("url_given"):
        api = Api(ctx.obj.url, ctx.obj.token_file, token)
        n = len(api.call("GET", "/api/admin/tokens")["token_infos"])
        out.print(f"{ctx.obj.url} accepts it ({n} operator tokens)")


def main() -> None:
    try:
        app(prog_name="sparkplane")
    except CliError as e:
        print(f"sparkplane: {e}", file=sys.stderr)
        sys.exit(1)
