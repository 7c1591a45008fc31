"""Settings from the environment (app settings in Azure). The one place names are defined."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPARKPLANE_", extra="ignore")

    # Where the embedded adapters keep their files.
    data_dir: Path = Path(".sparkplane")
    host: str = "127.0.0.1"
    port: int = 7071
    # A non-loopback bind must be asked for explicitly.
    allow_remote_bind: bool = False

    # Adapter choice (wiring.py is the only reader).
    store: Literal["sqlite", "cosmos"] = "sqlite"
    bus: Literal["embedded", "servicebus"] = "embedded"
    provisioner: Literal["records", "local", "arm"] = "records"

    # Requests per second per token (token bucket; 429 with Retry-After beyond it).
    rate_limit_per_s: float = 100.0
    rate_limit_burst: int = 200

    # Queues.
    lifecycle_queue: str = "cluster-lifecycle"

    # Embedded bus.
    bus_lock_s: float = 30.0
    bus_max_delivery_count: int = 10
    bus_duplicate_window_s: int = 600

    # Lifecycle pacing.
    reconcile_interval_s: float = 2.0
    # A cluster away from its desired state this long is re-kicked by the reconciler timer.
    stuck_after_s: float = 20.0
    # Record provisioner: how long a node takes to "boot".
    record_boot_s: float = 1.0

    # Retention.
    event_ttl_days: int = 30
    terminated_list_days: int = 30

    # Cosmos DB.
    cosmos_endpoint: str = ""
    cosmos_key: str = Field(default="", repr=False)
    cosmos_database: str = "sparkplane"
    cosmos_preferred_locations: list[str] = []
    cosmos_consistency: str = "Session"

    # Service Bus.
    servicebus_fqdn: str = ""
    servicebus_connection_string: str = Field(default="", repr=False)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
