"""The Cosmos DB `Store` (azure-cosmos, synchronous client): documents and cluster events.

Three containers in one database, made if missing (docs/cosmos.md explains the design):

- "docs", partition key path "/pk": one item per document,
  `{"id": "<kind>:<escaped id>", "pk", "kind", "key": id, "body", ["ttl", "expires_ms"]}`.
  A Cosmos id is unique within its partition only, and the port's key is (kind, pk, id), so the
  item id is the kind plus the port's id, escaped (Cosmos refuses "/", "\\", "?" and "#" in
  ids, and "%" breaks request signing). The port's id is kept as it is in "key", which `list`
  orders and pages by.
- "samples", partition key path "/pk": the documents of kind "sample" (utilization
  heartbeats), laid out like "docs" but apart from them (`CONTAINER_OF_KIND`).
- "events", partition key path "/cluster_id": one item per event,
  `{"id", "cluster_id", "ts", "type", "seq", "ttl", "expires_ms", "event"}`. "seq" orders
  events of the same timestamp by insertion. An event with an "id" is stored under an item id
  made from it, so appending it again is a 409 that is skipped: stored once.

Time to live: every container has TTL on with no default (`default_ttl=-1`), so an item's own
"ttl" makes Cosmos DB delete it that many seconds after its last write. The adapter also
stores "expires_ms" (its clock at the write plus the TTL) and hides items past it, so expiry
is exact on the adapter's clock (the server purges on its own clock, in the background) and
holds where no TTL engine runs (cosmosdb-server in the tests). `purge_expired` deletes what
the server has not yet removed, normally nothing.

ETags: a document's ETag is the item's `_etag`; for a document with a TTL it also carries the
TTL and the expiry of that version (`<_etag>|<ttl_s>|<expires_ms>`), so `replace` is one
conditional write (If-Match) that keeps the TTL, with no read before it. A 412 becomes
`PreconditionFailed`, a 404 `NotFound`, a create's 409 `AlreadyExists`.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

from azure.core import MatchConditions
from azure.cosmos import ContainerProxy, CosmosClient, DatabaseProxy, PartitionKey
from azure.cosmos.documents import SSLConfiguration
from azure.cosmos.exceptions import (
    CosmosAccessConditionFailedError,
    CosmosHttpResponseError,
    CosmosResourceExistsError,
    CosmosResourceNotFoundError,
)

from shared.ports import AlreadyExists, EventQuery, NotFound, Page, PreconditionFailed, Record

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from shared.settings import Settings

__all__ = [
    "CONSISTENCY_LEVELS",
    "CONTAINER_OF_KIND",
    "DOCS",
    "EVENTS",
    "SAMPLES",
    "ContainerSpec",
    "CosmosStore",
]

log = logging.getLogger("sparkplane.cosmos")

CONSISTENCY_LEVELS = ("Strong", "BoundedStaleness", "Session", "ConsistentPrefix", "Eventual")


class ContainerSpec:
    """What a container must look like; infra/ creates the same (Bicep)."""

    def __init__(
        self,
        name: str,
        partition_key_path: str,
        indexing_policy: dict[str, Any] | None,
        conflict_resolution_policy: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.partition_key_path = partition_key_path
        self.indexing_policy = indexing_policy
        # Only used by accounts with several write regions, and fixed when the container is
        # made; None is Cosmos DB's default, last writer wins on _ts.
        self.conflict_resolution_policy = conflict_resolution_policy
        # TTL on, no default: only items with their own "ttl" expire.
        self.default_ttl = -1


# The default indexing policy (every path: scan filters on any top-level body field). A write
# conflict between regions is never settled by dropping a version silently (docs/cosmos.md):
# Custom with no merge procedure keeps one version and puts the other in the conflicts feed.
DOCS = ContainerSpec("docs", "/pk", None, {"mode": "Custom"})
# Utilization samples: documents too (same item layout), but many, short-lived and only ever
# listed by partition, so they get their own container (their own throughput and 20 GB per
# cluster) and an index of just the paths their queries use.
SAMPLES = ContainerSpec(
    "samples",
    "/pk",
    {
        "indexingMode": "consistent",
        "automatic": True,
        "includedPaths": [
            {"path": "/pk/?"},
            {"path": "/kind/?"},
            {"path": "/key/?"},
            {"path": "/expires_ms/?"},
        ],
        "excludedPaths": [{"path": "/*"}],
    },
)
# The kinds of documents kept in a container of their own; every other kind is in DOCS.
CONTAINER_OF_KIND = {"sample": SAMPLES}
EVENTS = ContainerSpec(
    "events",
    "/cluster_id",
    {
        "indexingMode": "consistent",
        "automatic": True,
        "includedPaths": [{"path": "/*"}],
        # The event bodies are only read back, never filtered on.
        "excludedPaths": [{"path": "/event/*"}, {"path": '/"_etag"/?'}],
        # For ORDER BY ts, seq. Cosmos DB serves either direction from one of them;
        # cosmosdb-server wants the exact one.
        "compositeIndexes": [
            [{"path": "/ts", "order": "ascending"}, {"path": "/seq", "order": "ascending"}],
            [{"path": "/ts", "order": "descending"}, {"path": "/seq", "order": "descending"}],
        ],
    },
)

# Cosmos refuses these in ids; "%" makes point operations fail request signing; "~" escapes.
_ID_ESCAPES = str.maketrans({c: f"~{ord(c):02X}" for c in "~/\\?#%"})
_KIND_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_ETAG_RE = re.compile(r"(.+)\|([0-9]+)\|(-?[0-9]+)")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LIVE = "(NOT IS_DEFINED(c.expires_ms) OR c.expires_ms > @now)"
_MAX_NUMBER = 2**53 - 1  # Cosmos DB numbers are doubles
_CREATE_ATTEMPTS = 5


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _escape(id: str) -> str:
    """An id Cosmos DB accepts; distinct ids stay distinct."""
    return id.translate(_ID_ESCAPES)


def _check_kind(kind: str) -> str:
    if not _KIND_RE.fullmatch(kind):
        raise ValueError(f"unsupported kind: {kind!r}")
    return kind


def _item_id(kind: str, id: str) -> str:
    return f"{_check_kind(kind)}:{_escape(id)}"


def _check_json(value: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of real JSON (Cosmos DB refuses NaN and Infinity, like SqliteStore)."""
    body = value if isinstance(value, dict) else dict(value)
    json.dumps(body, allow_nan=False)
    return body


def _pack_etag(raw: str, ttl_s: int | None, expires_ms: int | None) -> str:
    if ttl_s is None or expires_ms is None:
        return raw
    return f"{raw}|{ttl_s}|{expires_ms}"


def _unpack_etag(etag: str) -> tuple[str, int | None, int | None]:
    """(the item's _etag, the TTL, the expiry of that version); a foreign string is all _etag."""
    m = _ETAG_RE.fullmatch(etag)
    if m is None:
        return etag, None, None
    return m[1], int(m[2]), int(m[3])


def _encode_token(last_key: str) -> str:
    return base64.urlsafe_b64encode(last_key.encode()).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError) as e:
        raise ValueError(f"invalid page token: {token!r}") from e


def _params(**values: Any) -> list[dict[str, Any]]:
    return [{"name": f"@{k}", "value": v} for k, v in values.items()]


class _Sequence:
    """Increasing numbers for the events appended by this process: microseconds since the
    epoch, bumped past the last one handed out. Events of one timestamp appended by different
    processes in the same microsecond tie; their order is then unspecified."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def take(self) -> int:
        with self._lock:
            self._last = max(time.time_ns() // 1000, self._last + 1)
            return self._last


_sequence = _Sequence()


def _ensure_database(client: CosmosClient, name: str) -> DatabaseProxy:
    database = client.get_database_client(name)
    try:
        database.read()
    except CosmosResourceNotFoundError:
        try:
            client.create_database(name)
        except CosmosResourceExistsError:
            pass  # another process made it first
        except CosmosHttpResponseError as e:
            raise _cannot_create(f"database {name!r}", e) from e
    return database


def _ensure_container(database: DatabaseProxy, spec: ContainerSpec) -> ContainerProxy:
    container = database.get_container_client(spec.name)
    try:
        props = container.read()
    except CosmosResourceNotFoundError:
        try:
            database.create_container(
                spec.name,
                partition_key=PartitionKey(path=spec.partition_key_path, kind="Hash"),
                default_ttl=spec.default_ttl,
                indexing_policy=spec.indexing_policy,
                conflict_resolution_policy=spec.conflict_resolution_policy,
            )
        except CosmosResourceExistsError:
            pass  # another process made it first
        except CosmosHttpResponseError as e:
            raise _cannot_create(f"container {spec.name!r}", e) from e
        props = container.read()
    paths = (props.get("partitionKey") or {}).get("paths")
    if paths != [spec.partition_key_path]:
        raise RuntimeError(
            f"Cosmos DB container {spec.name!r} has partition key {paths}, "
            f"not [{spec.partition_key_path!r}]: it was made for something else"
        )
    if props.get("defaultTtl") is None:
        log.warning(
            "Cosmos DB container %r has TTL off: expired items are hidden, and deleted only "
            "by purge_expired(); set its default TTL to -1",
            spec.name,
        )
    return container


def _cannot_create(what: str, e: CosmosHttpResponseError) -> RuntimeError:
    if e.status_code == 403:
        # Microsoft Entra ID data-plane roles cannot create databases or containers.
        return RuntimeError(
            f"Cosmos DB {what} is missing and this identity may not create it; "
            "deploy infra/ (it creates the database and its containers)"
        )
    return RuntimeError(f"cannot create Cosmos DB {what}: {e.message}")


class CosmosStore:
    """The `Store` port on one Cosmos DB database. Safe to share between threads."""

    def __init__(
        self,
        client: CosmosClient,
        database: str,
        *,
        clock: Callable[[], int] | None = None,
        credential: Any = None,
    ) -> None:
        """Use `client` (closed by close()) and `database`, making what is missing.

        `credential`, when given, is closed with the store (the one `connect` made).
        """
        self._client = client
        self._credential = credential
        self._clock = clock or _wall_clock_ms
        try:
            db = _ensure_database(client, database)
            self._docs = _ensure_container(db, DOCS)
            self._by_kind = {
                kind: _ensure_container(db, spec) for kind, spec in CONTAINER_OF_KIND.items()
            }
            self._events = _ensure_container(db, EVENTS)
        except BaseException:
            self.close()
            raise

    @classmethod
    def connect(
        cls,
        endpoint: str,
        credential: str | TokenCredential,
        *,
        database: str,
        preferred_locations: Sequence[str] = (),
        consistency_level: str | None = None,
        ca_file: str | None = None,
        clock: Callable[[], int] | None = None,
    ) -> CosmosStore:
        """A store on a new client. `credential` is an account key or a token credential."""
        if not endpoint:
            raise ValueError("the Cosmos DB endpoint is not set (SPARKPLANE_COSMOS_ENDPOINT)")
        if consistency_level and consistency_level not in CONSISTENCY_LEVELS:
            raise ValueError(
                f"consistency level must be one of {', '.join(CONSISTENCY_LEVELS)}, "
                f"not {consistency_level!r}"
            )
        options: dict[str, Any] = {}
        if ca_file:
            # Without an SSL configuration the SDK never verifies a loopback endpoint's
            # certificate; with one it verifies against this CA bundle.
            ssl = SSLConfiguration()
            ssl.SSLCaCerts = ca_file
            options.update(ssl_config=ssl, connection_verify=ca_file)
        client = CosmosClient(
            endpoint,
            credential,
            consistency_level=consistency_level or None,
            preferred_locations=list(preferred_locations),
            # Writes go to the account's one write region (docs/cosmos.md: ETags only
            # serialize writers within a region).
            multiple_write_locations=False,
            user_agent_suffix="sparkplane",
            **options,
        )
        owned = None if isinstance(credential, str) else credential
        return cls(client, database, clock=clock, credential=owned)

    @classmethod
    def from_settings(cls, settings: Settings) -> CosmosStore:
        credential: str | TokenCredential
        if settings.cosmos_key:
            credential = settings.cosmos_key
        else:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential(
                managed_identity_client_id=settings.cosmos_managed_identity_client_id or None
            )
        return cls.connect(
            settings.cosmos_endpoint,
            credential,
            database=settings.cosmos_database,
            preferred_locations=settings.cosmos_preferred_locations,
            consistency_level=settings.cosmos_consistency or None,
            ca_file=settings.cosmos_ca_file or None,
        )

    def close(self) -> None:
        self._client.close()
        close = getattr(self._credential, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> CosmosStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------
    # Documents.

    @staticmethod
    def _record(kind: str, pk: str, item: dict[str, Any]) -> Record:
        etag = _pack_etag(item["_etag"], item.get("ttl"), item.get("expires_ms"))
        return Record(kind, pk, item["key"], item["body"], etag)

    @staticmethod
    def _doc_item(
        kind: str, pk: str, id: str, body: Mapping[str, Any], ttl_s: int | None, now: int
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": _item_id(kind, id),
            "pk": pk,
            "kind": kind,
            "key": id,
            "body": _check_json(body),
        }
        if ttl_s is not None:
            item["ttl"] = ttl_s
            item["expires_ms"] = now + ttl_s * 1000
        return item

    def _container(self, kind: str) -> ContainerProxy:
        return self._by_kind.get(kind, self._docs)

    def _read(self, kind: str, item_id: str, pk: str) -> dict[str, Any] | None:
        try:
            return self._container(kind).read_item(item_id, partition_key=pk)
        except CosmosResourceNotFoundError:
            return None

    @staticmethod
    def _live(item: dict[str, Any], now: int) -> bool:
        expires = item.get("expires_ms")
        return expires is None or expires > now

    def get(self, kind: str, pk: str, id: str) -> Record | None:
        item = self._read(kind, _item_id(kind, id), pk)
        if item is None or not self._live(item, self._clock()):
            return None
        return self._record(kind, pk, item)

    def create(
        self, kind: str, pk: str, id: str, body: Mapping[str, Any], *, ttl_s: int | None = None
    ) -> Record:
        if ttl_s is not None and ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1 (or None: no expiry), not {ttl_s}")
        for _ in range(_CREATE_ATTEMPTS):
            now = self._clock()
            item = self._doc_item(kind, pk, id, body, ttl_s, now)
            try:
                return self._record(kind, pk, self._container(kind).create_item(item))
            except CosmosResourceExistsError:
                pass
            # The id is taken: by a live document, or by an expired one not purged yet, whose
            # place the new one takes (on the condition that nobody else took it first).
            existing = self._read(kind, item["id"], pk)
            if existing is None:
                continue  # deleted in between: create again
            if self._live(existing, now):
                raise AlreadyExists(f"{kind}/{pk}/{id} exists")
            try:
                out = self._container(kind).replace_item(
                    item["id"],
                    item,
                    etag=existing["_etag"],
                    match_condition=MatchConditions.IfNotModified,
                )
            except CosmosAccessConditionFailedError:
                raise AlreadyExists(f"{kind}/{pk}/{id} exists") from None
            except CosmosResourceNotFoundError:
                continue  # purged in between: create again
            return self._record(kind, pk, out)
        raise AlreadyExists(f"{kind}/{pk}/{id} kept changing while it was being created")

    def replace(self, kind: str, pk: str, id: str, body: Mapping[str, Any], *, etag: str) -> Record:
        raw, ttl_s, expires_ms = _unpack_etag(etag)
        now = self._clock()
        item = self._doc_item(kind, pk, id, body, ttl_s, now)
        if expires_ms is not None and expires_ms <= now:
            # The version the caller holds has expired: it is gone, or was replaced since.
            self._raise_why(kind, pk, id, now)
        try:
            out = self._container(kind).replace_item(
                item["id"], item, etag=raw, match_condition=MatchConditions.IfNotModified
            )
        except CosmosResourceNotFoundError:
            raise NotFound(f"{kind}/{pk}/{id} does not exist") from None
        except CosmosAccessConditionFailedError:
            raise PreconditionFailed(f"{kind}/{pk}/{id} changed since it was read") from None
        return self._record(kind, pk, out)

    def delete(self, kind: str, pk: str, id: str, *, etag: str | None = None) -> None:
        item_id = _item_id(kind, id)
        now = self._clock()
        if etag is None:
            # Read first: an expired document that is still stored counts as absent.
            current = self._read(kind, item_id, pk)
            if current is None or not self._live(current, now):
                raise NotFound(f"{kind}/{pk}/{id} does not exist")
            try:
                self._container(kind).delete_item(item_id, partition_key=pk)
            except CosmosResourceNotFoundError:
                raise NotFound(f"{kind}/{pk}/{id} does not exist") from None
            return
        raw, _, expires_ms = _unpack_etag(etag)
        if expires_ms is not None and expires_ms <= now:
            self._raise_why(kind, pk, id, now)
        try:
            self._container(kind).delete_item(
                item_id, partition_key=pk, etag=raw, match_condition=MatchConditions.IfNotModified
            )
        except CosmosResourceNotFoundError:
            raise NotFound(f"{kind}/{pk}/{id} does not exist") from None
        except CosmosAccessConditionFailedError:
            raise PreconditionFailed(f"{kind}/{pk}/{id} changed since it was read") from None

    def _raise_why(self, kind: str, pk: str, id: str, now: int) -> NoReturn:
        """The caller's version of a document has expired: the document is gone (or expired
        and not purged yet), or was written again since (and lives on)."""
        current = self._read(kind, _item_id(kind, id), pk)
        if current is not None and self._live(current, now):
            raise PreconditionFailed(f"{kind}/{pk}/{id} changed since it was read")
        raise NotFound(f"{kind}/{pk}/{id} does not exist")

    def list(self, kind: str, pk: str, *, page_size: int, page_token: str | None) -> Page:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, not {page_size}")
        _check_kind(kind)
        after = "" if page_token is None else " AND c.key > @after"
        sql = (
            "SELECT TOP @n * FROM c WHERE c.pk = @pk AND c.kind = @kind"
            f"{after} AND {_LIVE} ORDER BY c.key"
        )
        params = _params(n=page_size + 1, pk=pk, kind=kind, now=self._clock())
        if page_token is not None:
            params += _params(after=_decode_token(page_token))
        items = list(
            self._container(kind).query_items(
                sql,
                parameters=params,
                partition_key=pk,
                max_item_count=min(page_size + 1, 1000),
            )
        )
        more = len(items) > page_size
        if more:
            del items[page_size:]
        records = [self._record(kind, pk, item) for item in items]
        return Page(records, _encode_token(items[-1]["key"]) if more else None)

    def scan(self, kind: str, *, field: str, values: Sequence[str]) -> Iterator[Record]:
        """Every live document of `kind` whose top-level `body[field]` is one of `values`.

        One cross-partition query, read page by page as the iterator is consumed (a scan sees
        writes made while it runs, or not). `field` is a plain name (letters, digits, "_").
        The order is unspecified.
        """
        if not _FIELD_RE.fullmatch(field):
            raise ValueError(f"unsupported field name for scan: {field!r}")
        _check_kind(kind)
        wanted = list(dict.fromkeys(v for v in values if isinstance(v, str)))
        if not wanted:
            return iter(())
        marks = ", ".join(f"@v{i}" for i in range(len(wanted)))
        sql = f"SELECT * FROM c WHERE c.kind = @kind AND c.body.{field} IN ({marks}) AND {_LIVE}"
        params = _params(kind=kind, now=self._clock())
        params += [{"name": f"@v{i}", "value": v} for i, v in enumerate(wanted)]
        items = self._container(kind).query_items(
            sql, parameters=params, enable_cross_partition_query=True
        )
        return self._scan_records(kind, field, frozenset(wanted), items)

    @classmethod
    def _scan_records(
        cls, kind: str, field: str, wanted: frozenset[str], items: Iterator[dict[str, Any]]
    ) -> Iterator[Record]:
        for item in items:
            value = item["body"].get(field)
            if isinstance(value, str) and value in wanted:
                yield cls._record(kind, item["pk"], item)

    # ----------------------------------------------------------------------------------------
    # Events.

    def append_events(
        self, cluster_id: str, events: Sequence[Mapping[str, Any]], *, ttl_s: int
    ) -> None:
        """One create per event, in order. An event with an "id" gets an item id made from
        it: a second append of it is a 409, skipped. If an append fails half way, appending
        the same events (with their ids) again completes it."""
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be >= 1, not {ttl_s}")
        checked = []
        for event in events:
            ts, type_ = event.get("timestamp"), event.get("type")
            if not isinstance(ts, int) or isinstance(ts, bool):
                raise ValueError(f"event timestamp must be an int (epoch ms): {event!r}")
            if abs(ts) > _MAX_NUMBER:
                raise ValueError(f"event timestamp out of range: {event!r}")
            if not isinstance(type_, str):
                raise ValueError(f"event type must be a str: {event!r}")
            checked.append(_check_json(event))
        expires_ms = self._clock() + ttl_s * 1000
        for event in checked:
            eid = event.get("id")
            item_id = f"n:{uuid.uuid4().hex}" if eid is None else "e:" + _escape(str(eid))
            item = {
                "id": item_id,
                "cluster_id": cluster_id,
                "ts": event["timestamp"],
                "type": event["type"],
                "seq": _sequence.take(),
                "ttl": ttl_s,
                "expires_ms": expires_ms,
                "event": event,
            }
            # A 409: stored by an earlier append (or by a retry of this very request).
            with contextlib.suppress(CosmosResourceExistsError):
                self._events.create_item(item)

    def events(
        self, cluster_id: str, query: EventQuery
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        """A page of events and the number matching; two queries (a count and a TOP), so a
        concurrent append may show in one and not the other."""
        if query.offset < 0 or query.limit < 0:
            raise ValueError(f"offset and limit must be >= 0: {query!r}")
        if query.order not in ("ASC", "DESC"):
            raise ValueError(f"order must be ASC or DESC, not {query.order!r}")
        where = "c.cluster_id = @cid AND c.expires_ms > @now"
        params = _params(cid=cluster_id, now=self._clock())
        if query.start_time is not None:
            where += " AND c.ts >= @start"
            params += _params(start=query.start_time)
        if query.end_time is not None:
            where += " AND c.ts <= @end"
            params += _params(end=query.end_time)
        types = list(dict.fromkeys(query.types))
        if types:
            where += " AND c.type IN (" + ", ".join(f"@t{i}" for i in range(len(types))) + ")"
            params += [{"name": f"@t{i}", "value": t} for i, t in enumerate(types)]
        (count,) = self._events.query_items(
            f"SELECT VALUE COUNT(1) FROM c WHERE {where}",
            parameters=params,
            partition_key=cluster_id,
        )
        total = int(cast(int, count))  # SELECT VALUE COUNT(1) yields a number, not an item
        if not query.limit or total <= query.offset:
            return [], total
        # OFFSET ... LIMIT costs the same as reading the skipped events (and cosmosdb-server
        # lacks it): read the first offset + limit and drop the offset.
        n = query.offset + query.limit
        o = query.order
        page = list(
            self._events.query_items(
                f"SELECT TOP @n VALUE c.event FROM c WHERE {where} ORDER BY c.ts {o}, c.seq {o}",
                parameters=[*params, *_params(n=n)],
                partition_key=cluster_id,
                max_item_count=min(n, 1000),
            )
        )
        return page[query.offset :], total

    def delete_events(self, cluster_id: str) -> None:
        ids = self._events.query_items(
            "SELECT VALUE c.id FROM c WHERE c.cluster_id = @cid",
            parameters=_params(cid=cluster_id),
            partition_key=cluster_id,
        )
        for item_id in list(ids):
            # A 404: purged, or deleted by another caller.
            with contextlib.suppress(CosmosResourceNotFoundError):
                self._events.delete_item(item_id, partition_key=cluster_id)

    def purge_expired(self) -> int:
        """Delete the documents and events past their expiry that the server has not removed
        yet (on Azure its TTL engine normally got there first); the number deleted."""
        now = self._clock()
        removed = 0
        for container in (self._docs, *self._by_kind.values()):
            expired = container.query_items(
                "SELECT c.id, c.pk, c._etag FROM c WHERE c.expires_ms <= @now",
                parameters=_params(now=now),
                enable_cross_partition_query=True,
            )
            for item in list(expired):
                try:
                    # On the condition that nobody created the document anew in between.
                    container.delete_item(
                        item["id"],
                        partition_key=item["pk"],
                        etag=item["_etag"],
                        match_condition=MatchConditions.IfNotModified,
                    )
                except (CosmosResourceNotFoundError, CosmosAccessConditionFailedError):
                    continue
                removed += 1
        expired = self._events.query_items(
            "SELECT c.id, c.cluster_id FROM c WHERE c.expires_ms <= @now",
            parameters=_params(now=now),
            enable_cross_partition_query=True,
        )
        for item in list(expired):
            try:
                self._events.delete_item(item["id"], partition_key=item["cluster_id"])
            except CosmosResourceNotFoundError:
                continue
            removed += 1
        return removed
