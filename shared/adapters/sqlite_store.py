"""The embedded `Store`: one SQLite file (WAL) holding documents and cluster events.

Semantics follow the Cosmos DB adapter: point reads by (kind, pk, id), ETag optimistic
concurrency, per-document TTL counted from the last write, pages of one partition ordered by
id, a cross-partition scan on one top-level field, and events with a TTL.

Concurrency: a small pool of connections (one per concurrently active thread) shared by the
threads of a process; every operation is one short transaction. Writers of one process queue
on a Python lock (no sleeping in SQLite's busy handler); writers of other processes are
waited for by SQLite's busy timeout. WAL with synchronous=NORMAL: a committed transaction
survives the death of the process (kill -9); only an OS crash or power loss may drop the last
few commits, never corrupt the file.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import itertools
import json
import os
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from shared.adapters.sqlite_tx import write_transaction
from shared.ports import AlreadyExists, EventQuery, NotFound, Page, PreconditionFailed, Record
from shared.private_files import private_file

__all__ = ["SqliteStore"]

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    kind       TEXT NOT NULL,
    pk         TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,
    etag       TEXT NOT NULL,
    ttl_s      INTEGER,
    expires_ms INTEGER,
    PRIMARY KEY (kind, pk, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS docs_expiry ON docs (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY,
    cluster_id TEXT NOT NULL,
    ts         INTEGER NOT NULL,
    type       TEXT NOT NULL,
    event_id   TEXT,
    body       TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
-- An event that carries an "id" is stored once per cluster (a re-append is a no-op).
CREATE UNIQUE INDEX IF NOT EXISTS events_once ON events (cluster_id, event_id)
    WHERE event_id IS NOT NULL;
-- Covers the filters, so counting and skipping (OFFSET) never read the event bodies.
CREATE INDEX IF NOT EXISTS events_by_cluster ON events (cluster_id, ts, seq, type, expires_ms);
CREATE INDEX IF NOT EXISTS events_expiry ON events (expires_ms);
"""

# Top-level body fields with an expression index: scan() by one of them reads only the
# matching rows (the timers scan clusters by state). Adding one needs a new _SCHEMA_VERSION.
_INDEXED_FIELDS = ("state",)
_SCHEMA += "".join(
    f"CREATE INDEX IF NOT EXISTS docs_by_{f} ON docs (kind, json_extract(body, '$.{f}'));\n"
    for f in _INDEXED_FIELDS
)

_LIVE = "(expires_ms IS NULL OR expires_ms > ?)"

_SQL_GET = f"SELECT body, etag FROM docs WHERE kind = ? AND pk = ? AND id = ? AND {_LIVE}"
_SQL_EXISTS = f"SELECT 1 FROM docs WHERE kind = ? AND pk = ? AND id = ? AND {_LIVE}"
# An expired row counts as absent: create may take its place.
_SQL_CREATE = (
    "INSERT INTO docs (kind, pk, id, body, etag, ttl_s, expires_ms) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (kind, pk, id) DO UPDATE SET"
    " body = excluded.body, etag = excluded.etag, ttl_s = excluded.ttl_s,"
    " expires_ms = excluded.expires_ms"
    " WHERE docs.expires_ms IS NOT NULL AND docs.expires_ms <= ?"
)
# Like Cosmos DB, the time to live counts from the last write.
_SQL_REPLACE = (
    "UPDATE docs SET body = ?, etag = ?,"
    " expires_ms = CASE WHEN ttl_s IS NULL THEN NULL ELSE ? + ttl_s * 1000 END"
    f" WHERE kind = ? AND pk = ? AND id = ? AND etag = ? AND {_LIVE}"
)
_SQL_DELETE = f"DELETE FROM docs WHERE kind = ? AND pk = ? AND id = ? AND {_LIVE}"
_SQL_DELETE_IF = f"DELETE FROM docs WHERE kind = ? AND pk = ? AND id = ? AND etag = ? AND {_LIVE}"
_SQL_LIST_FIRST = (
    f"SELECT id, body, etag FROM docs WHERE kind = ? AND pk = ? AND {_LIVE} ORDER BY id LIMIT ?"
)
_SQL_LIST_AFTER = (
    "SELECT id, body, etag FROM docs WHERE kind = ? AND pk = ? AND id > ?"
    f" AND {_LIVE} ORDER BY id LIMIT ?"
)
# Which of the given event ids (?2, a JSON list) the cluster (?1) has already.
_SQL_EVENT_IDS_STORED = (
    "SELECT event_id FROM events WHERE cluster_id = ?1"
    " AND event_id IN (SELECT value FROM json_each(?2))"
)
_SQL_APPEND_EVENT = (
    "INSERT OR IGNORE INTO events (cluster_id, ts, type, event_id, body, expires_ms)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
# Numbered parameters: ?1 is the JSON list of types (or NULL); the rest follow it.
_EVENTS_WHERE = (
    "cluster_id = ?2 AND expires_ms > ?3 AND ts >= ?4 AND ts <= ?5"
    " AND (?1 IS NULL OR type IN (SELECT value FROM json_each(?1)))"
)
_SQL_EVENTS_COUNT = f"SELECT count(*) FROM events WHERE {_EVENTS_WHERE}"
_SQL_EVENTS_PAGE = {
    "ASC": f"SELECT body FROM events WHERE {_EVENTS_WHERE} ORDER BY ts, seq LIMIT ?6 OFFSET ?7",
    "DESC": (
        f"SELECT body FROM events WHERE {_EVENTS_WHERE}"
        " ORDER BY ts DESC, seq DESC LIMIT ?6 OFFSET ?7"
    ),
}
_SQL_DELETE_EVENTS = "DELETE FROM events WHERE cluster_id = ?"
_PURGE_BATCH = 5000
_SQL_PURGE_DOCS = (
    "DELETE FROM docs WHERE (kind, pk, id) IN (SELECT kind, pk, id FROM docs"
    f" WHERE expires_ms IS NOT NULL AND expires_ms <= ? LIMIT {_PURGE_BATCH})"
)
_SQL_PURGE_EVENTS = (
    "DELETE FROM events WHERE seq IN"
    f" (SELECT seq FROM events WHERE expires_ms <= ? LIMIT {_PURGE_BATCH})"
)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDLE_CONNECTIONS = 16

# One write lock per database file, shared by every SqliteStore of this process on it.
_write_locks: dict[str, threading.Lock] = {}
_write_locks_guard = threading.Lock()


def _write_lock_for(path: Path) -> threading.Lock:
    with _write_locks_guard:
        return _write_locks.setdefault(os.path.realpath(path), threading.Lock())


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# allow_nan=False: only real JSON goes in (Cosmos DB refuses NaN too). One encoder for every
# call: json.dumps with these options built a new one each time.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _dumps(body: Mapping[str, Any]) -> str:
    return _encode(body if isinstance(body, dict) else dict(body))


def _make_loads() -> Callable[[str], Any]:
    """json.loads, or orjson's (about 2x faster) when it is installed and can read the text."""
    try:
        import orjson
    except ImportError:
        return json.loads
    fast, fast_error, slow = orjson.loads, orjson.JSONDecodeError, json.loads

    def loads(text: str) -> Any:
        try:
            return fast(text)
        except fast_error:  # what json.dumps writes but orjson refuses: ints beyond 64 bits
            return slow(text)

    return loads


_loads = _make_loads()


# ETags: a random prefix per process and a counter, unique without a call to the OS's random
# source on every write.
_ETAG_PREFIX = uuid.uuid4().hex[:20]
_etag_counter = itertools.count()


def _new_etag() -> str:
    return f"{_ETAG_PREFIX}{next(_etag_counter):012x}"


def _encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError) as e:
        raise ValueError(f"invalid page token: {token!r}") from e


class SqliteStore:
    """The `Store` port on one SQLite file. Safe to share between threads and processes."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], int] | None = None,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self._path = Path(path)
        self._clock = clock or _wall_clock_ms
        self._busy_timeout_s = busy_timeout_s
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._closed = False
        self._path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self._path)  # its -wal and -shm files get the same mode
        # Writers of this process take turns here instead of in SQLite's busy handler.
        self._write_lock = _write_lock_for(self._path)
        conn = self._connect()
        try:
            self._init_schema(conn)
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)

    # ----------------------------------------------------------------------------------------
    # Connections.

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_s,
            isolation_level=None,  # autocommit: one statement = one transaction, or BEGIN
            check_same_thread=False,  # pooled: used by one thread at a time
            cached_statements=256,
        )
        try:
            self._use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA temp_store = MEMORY")
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch the file to WAL (it stays so); processes opening a new file at once take turns.

        Two connections that both read the file and then ask for the exclusive lock the switch
        needs would deadlock, so SQLite answers one of them "database is locked" at once instead
        of waiting out the busy timeout: that one retries until the timeout has passed.
        """
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                # The switch answers the mode the file is in: the old one if it could not change.
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if str(mode).lower() == "wal":
                    return
            except sqlite3.OperationalError as exc:
                # Only the deadlock answer is temporary; anything else is the file's fault.
                if "locked" not in str(exc):
                    raise
            if time.monotonic() >= deadline:
                raise sqlite3.OperationalError(f"{self._path}: could not switch to WAL")
            time.sleep(0.01 + random.random() * 0.04)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == _SCHEMA_VERSION:
            return
        if version > _SCHEMA_VERSION:
            raise RuntimeError(
                f"{self._path}: schema version {version} is newer than this code "
                f"({_SCHEMA_VERSION})"
            )
        with self._write_lock, write_transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    def _acquire(self) -> sqlite3.Connection:
        with self._pool_lock:
            if self._closed:
                raise RuntimeError(f"store {self._path} is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # an interrupted operation: never hand out an open one
            conn.rollback()
        with self._pool_lock:
            if not self._closed and len(self._idle) < _MAX_IDLE_CONNECTIONS:
                self._idle.append(conn)
                return
        conn.close()

    def _write(self, sql: str, params: Sequence[Any]) -> int:
        """Run one writing statement as its own transaction; the number of rows it changed."""
        conn = self._acquire()
        try:
            with self._write_lock:
                return conn.execute(sql, params).rowcount
        finally:
            self._release(conn)

    def close(self) -> None:
        """Close the connections; an operation in flight closes its own when it ends."""
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------
    # Documents.

    def get(self, kind: str, pk: str, id: str) -> Record | None:
        conn = self._acquire()
        try:
            row = conn.execute(_SQL_GET, (kind, pk, id, self._clock())).fetchone()
        finally:
            self._release(conn)
        if row is None:
            return None
        return Record(kind, pk, id, _loads(row[0]), row[1])

    def create(
        self, kind: str, pk: str, id: str, body: Mapping[str, Any], *, ttl_s: int | None = None
    ) -> Record:
        if ttl_s is not None and ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1 (or None: no expiry), not {ttl_s}")
        text = _dumps(body)
        etag = _new_etag()
        now = self._clock()
        expires_ms = None if ttl_s is None else now + ttl_s * 1000
        changed = self._write(_SQL_CREATE, (kind, pk, id, text, etag, ttl_s, expires_ms, now))
        if not changed:
            raise AlreadyExists(f"{kind}/{pk}/{id} exists")
        return Record(kind, pk, id, _loads(text), etag)

    def replace(self, kind: str, pk: str, id: str, body: Mapping[str, Any], *, etag: str) -> Record:
        text = _dumps(body)
        new_etag = _new_etag()
        now = self._clock()
        changed = self._write(_SQL_REPLACE, (text, new_etag, now, kind, pk, id, etag, now))
        if not changed:
            self._raise_why(kind, pk, id, now)
        return Record(kind, pk, id, _loads(text), new_etag)

    def delete(self, kind: str, pk: str, id: str, *, etag: str | None = None) -> None:
        now = self._clock()
        if etag is None:
            if not self._write(_SQL_DELETE, (kind, pk, id, now)):
                raise NotFound(f"{kind}/{pk}/{id} does not exist")
        elif not self._write(_SQL_DELETE_IF, (kind, pk, id, etag, now)):
            self._raise_why(kind, pk, id, now)

    def _raise_why(self, kind: str, pk: str, id: str, now: int) -> None:
        """A conditional write changed nothing: the document is absent or its ETag moved."""
        conn = self._acquire()
        try:
            exists = conn.execute(_SQL_EXISTS, (kind, pk, id, now)).fetchone() is not None
        finally:
            self._release(conn)
        if exists:
            raise PreconditionFailed(f"{kind}/{pk}/{id} changed since it was read")
        raise NotFound(f"{kind}/{pk}/{id} does not exist")

    def list(self, kind: str, pk: str, *, page_size: int, page_token: str | None) -> Page:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, not {page_size}")
        now = self._clock()
        conn = self._acquire()
        try:
            if page_token is None:
                rows = conn.execute(_SQL_LIST_FIRST, (kind, pk, now, page_size + 1)).fetchall()
            else:
                after = _decode_token(page_token)
                rows = conn.execute(
                    _SQL_LIST_AFTER, (kind, pk, after, now, page_size + 1)
                ).fetchall()
        finally:
            self._release(conn)
        more = len(rows) > page_size
        if more:
            del rows[page_size:]
        items = [Record(kind, pk, id, _loads(body), etag) for id, body, etag in rows]
        return Page(items, _encode_token(rows[-1][0]) if more else None)

    def scan(self, kind: str, *, field: str, values: Sequence[str]) -> Iterator[Record]:
        """Every live document of `kind` whose top-level `body[field]` is one of `values`.

        The rows are read in one short read transaction when scan() is called (a snapshot);
        their bodies are decoded as the iterator is consumed. The order is unspecified.
        """
        wanted = list(dict.fromkeys(v for v in values if isinstance(v, str)))
        if not wanted:
            return iter(())
        table = "docs"
        if _FIELD_RE.fullmatch(field):
            # A literal path, which an expression index docs_by_<field> matches.
            path_sql, path_params = f"'$.{field}'", cast(tuple[str, ...], ())
            if field in _INDEXED_FIELDS:
                # Without ANALYZE statistics the planner would prefer the primary key.
                table = f"docs INDEXED BY docs_by_{field}"
        elif '"' not in field:
            path_sql, path_params = "?", (f'$."{field}"',)
        else:
            raise ValueError(f"unsupported field name for scan: {field!r}")
        marks = ", ".join("?" * len(wanted))
        sql = (
            f"SELECT pk, id, body, etag FROM {table}"
            f" WHERE kind = ? AND json_extract(body, {path_sql}) IN ({marks}) AND {_LIVE}"
        )
        params = (kind, *path_params, *wanted, self._clock())
        conn = self._acquire()
        try:
            rows = conn.execute(sql, params).fetchall()
        finally:
            self._release(conn)
        return self._scan_records(kind, field, frozenset(wanted), rows)

    @staticmethod
    def _scan_records(
        kind: str,
        field: str,
        wanted: frozenset[str],
        rows: builtins.list[tuple[str, str, str, str]],
    ) -> Iterator[Record]:
        for pk, id, text, etag in rows:
            body = _loads(text)
            # json_extract() also yields a nested object/array as JSON text; keep strings only.
            value = body.get(field)
            if isinstance(value, str) and value in wanted:
                yield Record(kind, pk, id, body, etag)

    # ----------------------------------------------------------------------------------------
    # Events.

    def append_events(
        self, cluster_id: str, events: Sequence[Mapping[str, Any]], *, ttl_s: int
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1, not {ttl_s}")
        ids: builtins.list[str | None] = []
        for event in events:
            ts, type_ = event.get("timestamp"), event.get("type")
            if not isinstance(ts, int) or isinstance(ts, bool):
                raise ValueError(f"event timestamp must be an int (epoch ms): {event!r}")
            if not isinstance(type_, str):
                raise ValueError(f"event type must be a str: {event!r}")
            eid = event.get("id")
            ids.append(None if eid is None else str(eid))
        if not ids:
            return
        conn = self._acquire()
        try:
            # The callers re-append a write's events before the next write (so a crash between
            # a document write and its events loses none): they are nearly always stored
            # already, and a read that says so spares encoding them and a write transaction.
            if None not in ids:
                stored = conn.execute(_SQL_EVENT_IDS_STORED, (cluster_id, json.dumps(ids)))
                if len({eid for (eid,) in stored}) == len(set(ids)):
                    return
            expires_ms = self._clock() + ttl_s * 1000
            rows = [
                (cluster_id, e["timestamp"], e["type"], eid, _dumps(e), expires_ms)
                for e, eid in zip(events, ids, strict=True)
            ]
            with self._write_lock, write_transaction(conn):
                conn.executemany(_SQL_APPEND_EVENT, rows)
        finally:
            self._release(conn)

    def events(
        self, cluster_id: str, query: EventQuery
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        if query.offset < 0 or query.limit < 0:
            raise ValueError(f"offset and limit must be >= 0: {query!r}")
        if query.order not in _SQL_EVENTS_PAGE:
            raise ValueError(f"order must be ASC or DESC, not {query.order!r}")
        types = json.dumps(list(query.types)) if query.types else None
        where = (
            types,
            cluster_id,
            self._clock(),
            _INT64_MIN if query.start_time is None else query.start_time,
            _INT64_MAX if query.end_time is None else query.end_time,
        )
        conn = self._acquire()
        try:
            conn.execute("BEGIN")  # one snapshot for the page and the count
            try:
                (total,) = conn.execute(_SQL_EVENTS_COUNT, where).fetchone()
                rows = (
                    conn.execute(
                        _SQL_EVENTS_PAGE[query.order], (*where, query.limit, query.offset)
                    ).fetchall()
                    if query.limit and total > query.offset
                    else []
                )
            finally:
                conn.execute("COMMIT")
        finally:
            self._release(conn)
        return [_loads(text) for (text,) in rows], total

    def delete_events(self, cluster_id: str) -> None:
        self._write(_SQL_DELETE_EVENTS, (cluster_id,))

    def purge_expired(self) -> int:
        """Delete expired documents and events (in batches); the number of rows removed."""
        now = self._clock()
        removed = 0
        for sql in (_SQL_PURGE_DOCS, _SQL_PURGE_EVENTS):
            while True:
                n = self._write(sql, (now,))
                removed += n
                if n < _PURGE_BATCH:
                    break
        return removed
