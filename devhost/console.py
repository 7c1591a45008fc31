"""What `make run` (`sparkplane up`) prints for a person: one line per cluster state change and
per job run state, with the cluster's name and the reason, and the nodes coming up while a
cluster starts. A logging handler over the records the services write anyway (the same
records are JSON lines in `<data_dir>/log.jsonl`): presentation only, no decisions."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.markup import escape

from shared.logs import mask

_COLOURS = {
    "RUNNING": "green",
    "PENDING": "yellow",
    "RESTARTING": "yellow",
    "RESIZING": "yellow",
    "TERMINATING": "blue",
    "TERMINATED": "blue",
    "ERROR": "red",
    "SUCCESS": "green",
    "FAILED": "red",
    "TIMEDOUT": "red",
    "CANCELED": "blue",
    "INTERNAL_ERROR": "red",
}
_STARTING = {"PENDING", "RESTARTING", "RESIZING"}


def _state(value: object) -> str:
    text = escape(str(value))
    colour = _COLOURS.get(str(value))
    return f"[{colour}]{text}[/]" if colour else text


def _bar(done: int, total: int, width: int = 10) -> str:
    filled = width if total <= 0 else min(width, round(width * done / total))
    return "[green]" + "█" * filled + "[/][dim]" + "░" * (width - filled) + "[/]"


def render(record: logging.LogRecord) -> str | None:
    """The readable line of a record, or None for records a person need not see."""
    f = record.__dict__
    when = time.strftime("%H:%M:%S", time.localtime(record.created))
    head = f"[dim]{when}[/] "
    reason = f.get("reason") or ""
    tail = f"  [dim]{escape(mask(str(reason)))}[/]" if reason else ""
    msg = record.getMessage()
    if msg == "cluster state":
        name = escape(str(f.get("cluster_name") or f.get("cluster_id")))
        return (
            f"{head}cluster [bold]{name}[/] [dim]({escape(str(f.get('cluster_id')))})[/] "
            f"{_state(f.get('previous_state'))} → {_state(f.get('state'))}{tail}"
        )
    if msg == "cluster created":
        name = escape(str(f.get("cluster_name") or f.get("cluster_id")))
        return (
            f"{head}cluster [bold]{name}[/] [dim]({escape(str(f.get('cluster_id')))})[/] "
            f"created → {_state('PENDING')}, {f.get('target_workers', 0)} workers"
        )
    if msg == "cluster nodes":
        if f.get("state") not in _STARTING:
            return None
        name = escape(str(f.get("cluster_name") or f.get("cluster_id")))
        workers, target = int(f.get("workers") or 0), int(f.get("target_workers") or 0)
        driver = "driver started" if f.get("driver_up") else "no driver yet"
        return (
            f"{head}cluster [bold]{name}[/] {_bar(workers + bool(f.get('driver_up')), target + 1)}"
            f" {driver}, {workers}/{target} workers"
        )
    if msg == "run state":
        name = escape(str(f.get("run_name") or ""))
        result = f" {_state(f['result'])}" if f.get("result") else ""
        job = f" [dim](job {f['job_id']})[/]" if f.get("job_id") is not None else ""
        return (
            f"{head}run [bold]{f.get('run_id')}[/] {name}{job} "
            f"→ {_state(f.get('state'))}{result}{tail}"
        )
    if record.levelno >= logging.WARNING:
        colour = "red" if record.levelno >= logging.ERROR else "yellow"
        return (
            f"{head}[{colour}]{record.levelname.lower()}[/] {escape(record.name)}: "
            f"{escape(mask(msg))}"
        )
    return None


class ConsoleHandler(logging.Handler):
    def __init__(self, console: Console | None = None) -> None:
        super().__init__(logging.INFO)
        self.console = console or Console(highlight=False)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = render(record)
            if line is not None:
                self.console.print(line, highlight=False, soft_wrap=True)
        except Exception:
            # A record that does not render must not break the code that logged it.
            self.handleError(record)
