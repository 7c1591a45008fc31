"""The one way the SQLite adapters write several statements at once.

The adapters open their connections in autocommit mode (`isolation_level=None`: a statement on
its own is its own transaction), and group statements that must land together explicitly.
`BEGIN IMMEDIATE` takes the database's write lock at the start, so what the transaction reads
is not made stale by another writer before it writes (a deferred BEGIN would only take it at
the first write, and could then fail with SQLITE_BUSY).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE, the block, COMMIT; ROLLBACK when the block (or the commit) fails."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:  # any failure, interrupts included: nothing of the block lands
        conn.execute("ROLLBACK")
        raise
