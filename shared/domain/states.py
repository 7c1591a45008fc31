"""Cluster states and their legal transitions (the Databricks state machine, made explicit).

Databricks documents PENDING->RUNNING|TERMINATING, RUNNING->RESIZING|RESTARTING|TERMINATING,
RESTARTING->RUNNING|TERMINATING, RESIZING->RUNNING|TERMINATING, TERMINATING->TERMINATED.
The control plane also needs the edges a user or a failure causes, listed below with why.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    RESIZING = "RESIZING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"
    UNKNOWN = "UNKNOWN"


S = State

TRANSITIONS: dict[State, frozenset[State]] = {
    # start() of a terminated cluster; a failed start ends in ERROR then TERMINATED.
    S.PENDING: frozenset({S.RUNNING, S.TERMINATING, S.ERROR}),
    # RUNNING->PENDING: a lost driver node that is being replaced is not possible here (a dead
    # driver terminates the cluster), so RUNNING only moves to the documented states.
    S.RUNNING: frozenset({S.RESIZING, S.RESTARTING, S.TERMINATING, S.ERROR}),
    S.RESTARTING: frozenset({S.RUNNING, S.TERMINATING, S.ERROR}),
    S.RESIZING: frozenset({S.RUNNING, S.TERMINATING, S.ERROR}),
    S.TERMINATING: frozenset({S.TERMINATED}),
    # start() moves a terminated cluster back to PENDING.
    S.TERMINATED: frozenset({S.PENDING}),
    # An errored cluster is cleaned up: its nodes are released, then it is TERMINATED.
    S.ERROR: frozenset({S.TERMINATING}),
    S.UNKNOWN: frozenset({S.PENDING, S.RUNNING, S.TERMINATING, S.TERMINATED, S.ERROR}),
}

ACTIVE = frozenset({S.PENDING, S.RUNNING, S.RESTARTING, S.RESIZING})
TRANSITIONAL = frozenset({S.PENDING, S.RESTARTING, S.RESIZING, S.TERMINATING, S.ERROR})


def can_move(src: State, dst: State) -> bool:
    return src == dst or dst in TRANSITIONS[src]


class IllegalTransition(Exception):
    def __init__(self, src: State, dst: State) -> None:
        super().__init__(f"illegal cluster state transition {src} -> {dst}")
        self.src = src
        self.dst = dst


def check_move(src: State, dst: State) -> State:
    if not can_move(src, dst):
        raise IllegalTransition(src, dst)
    return dst
