"""Settings from the environment (app settings in Azure). The one place names are defined."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ApiError


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
    # "local": real Spark standalone clusters as local processes (the default of `make run`);
    # "records": nodes as database rows that boot after a delay (tests, benchmarks).
    provisioner: Literal["records", "local", "arm"] = "local"
    # Workspace files (DBFS and workspace files): "local": a 0700 directory per workspace under
    # files_dir; "blob": a virtual directory per workspace in one Blob Storage container
    # (shared/adapters/blob_files.py explains why not the workspace's own storage account).
    files: Literal["local", "blob"] = "local"
    # Root of the local file store; empty = <data_dir>/files.
    files_dir: str = ""

    # The key every cluster's Spark secret and Spark Connect token are derived from
    # (shared/domain/spark_auth.py). Locally, empty = the key in <data_dir>/spark-secret-key
    # (made once, mode 0600); in Azure a Key Vault reference, required with the ARM provisioner.
    spark_secret_key: str = Field(default="", repr=False)

    # Requests per second per token (token bucket; 429 with Retry-After beyond it).
    rate_limit_per_s: float = 100.0
    rate_limit_burst: int = 200

    # Quotas of a workspace the operator has not set (JSON object over the defaults of
    # shared.domain.quotas.Quotas, e.g. '{"max_clusters": 10}'; docs/security.md).
    quota_defaults: str = ""

    @field_validator("quota_defaults")
    @classmethod
    def _known_quotas(cls, v: str) -> str:
        """A bad SPARKPLANE_QUOTA_DEFAULTS stops the app at start, not at some request."""
        if v:
            from shared.domain.quotas import parse

            try:
                parse(json.loads(v), where="SPARKPLANE_QUOTA_DEFAULTS")
            except (ValueError, ApiError) as e:
                raise ValueError(getattr(e, "message", str(e))) from None
        return v

    # Requests without a valid token (none, malformed, unknown, expired or revoked), per client
    # address (docs/security.md, "Throttling"): a token bucket of failures checked in memory
    # before the token is looked up (429 with Retry-After once spent) ...
    bad_auth_rate_limit_per_s: float = 1.0
    bad_auth_rate_limit_burst: int = 20
    # ... and, with bad_auth_shared, every failure counted in the store per window of
    # bad_auth_window_s, so the limit holds over all instances together.
    bad_auth_shared: bool = True
    bad_auth_window_s: int = 60
    # Proxies that append to X-Forwarded-For in front of the app: the Functions host's front
    # end (devhost does the same), plus one for API Management or Front Door in front of it.
    # The entry this far from the right is the client address; entries left of it are ignored.
    trusted_proxy_hops: int = 1

    # Tokens (docs/security.md, "Tokens"). The longest lifetime of a token made through the
    # Token API or the admin API, in seconds; 0 = no maximum. A token never outlives the token
    # that made it, whatever this says.
    token_max_lifetime_s: int = 0

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
    # ... and to stop.
    record_stop_s: float = 0.2
    # Record provisioner: a driver also runs the cluster agent, which runs job tasks (as plain
    # Python: there is no Spark). Off: clusters are rows only (benchmarks of the control plane).
    record_agents: bool = True

    # Utilization: heartbeats, autoscaling and idle termination.
    # The URL cluster agents post heartbeats to (default: this host's own address).
    agent_callback_url: str = ""
    heartbeat_s: float = 10.0
    # Node health (shared/domain/node_health.py): a node whose agent is silent this many
    # heartbeats is suspect, and only then is the cloud asked about a RUNNING cluster ...
    health_silent_beats: int = 3
    # ... which is otherwise read for drift (and orphans) once per this many seconds, spread
    # over the period by cluster; 0 = at every reconciler tick (local provisioners).
    drift_check_s: float = 0.0
    sample_ttl_s: int = 3600
    # Samples the autoscaler reads per cluster and decision.
    autoscale_samples: int = 90
    # JSON object overriding shared.domain.autoscale.AutoscaleParams fields.
    autoscale_params: str = ""
    # The length of a "minute" of auto-termination (tests shorten it; the API keeps 10..10000).
    idle_minute_s: float = 60.0

    # Local storage of clusters with enable_elastic_disk (serverless pools have it): the
    # smallest growth step and the largest size of one node's local disk.
    storage_min_step_mb: int = 1024
    storage_max_gb: int = 5120
    # Local provisioner: a node's scratch space (SPARK_LOCAL_DIRS) quota when it starts.
    local_scratch_mb: int = 10240

    # Retention.
    event_ttl_days: int = 30
    terminated_list_days: int = 30

    # Jobs.
    # The session-enabled queue that advances job runs (session id = run id).
    jobs_queue: str = "job-runs"
    # How often an active run is evaluated (its submission and clusters polled).
    jobs_poll_interval_s: float = 2.0
    # An active run not changed for this long is re-kicked by the jobs timer (a lost message).
    jobs_stuck_after_s: float = 30.0
    # Runs (with their task runs and output tails) are kept this long after their last change.
    jobs_run_retention_days: int = 60
    # A job cluster that is not RUNNING this long after it was asked for fails the task run.
    jobs_setup_timeout_s: float = 1200.0
    # Job clusters not TERMINATED this long after a run's tasks ended: the run ends anyway.
    jobs_cleanup_timeout_s: float = 300.0
    # Seconds between SIGTERM and SIGKILL when the driver's agent cancels a task's process.
    jobs_kill_grace_s: float = 10.0

    # Cosmos DB.
    cosmos_endpoint: str = ""
    # Empty: Microsoft Entra ID (DefaultAzureCredential, the managed identity in Azure).
    cosmos_key: str = Field(default="", repr=False)
    cosmos_database: str = "sparkplane"
    # Regions to read from (and to fail over to) in order, as JSON: '["West Europe", ...]'.
    cosmos_preferred_locations: list[str] = []
    # Strong, BoundedStaleness, Session, ConsistentPrefix or Eventual (can only weaken the
    # account's default); empty = the account's default.
    cosmos_consistency: str = "Session"
    # Client id of a user-assigned managed identity; empty = system-assigned or developer login.
    cosmos_managed_identity_client_id: str = ""
    # CA bundle to verify the endpoint with (an emulator's own certificate); empty = system CAs.
    cosmos_ca_file: str = ""

    # Blob file store: the account (https://<account>.blob.core.windows.net, Microsoft Entra ID
    # through DefaultAzureCredential) and its container.
    files_account_url: str = ""
    files_container: str = "workspaces"
    # Development (Azurite): a connection string with an account key instead of the URL.
    files_connection_string: str = Field(default="", repr=False)

    # Service Bus.
    servicebus_fqdn: str = ""
    servicebus_connection_string: str = Field(default="", repr=False)

    # Azure Resource Manager.
    # The subscription that holds the workspaces' managed resource groups.
    arm_subscription_id: str = ""
    # More of them, comma-separated: each workspace's group is placed in one of these and the
    # one above (shared/domain/arm_placement.py); ARM's request limits apply per subscription.
    arm_subscription_ids: str = ""
    # The most clusters (with nodes in ARM) one subscription may hold; 0: no maximum. A new
    # workspace goes only to a subscription below it (create_workspace answers 400
    # QUOTA_EXCEEDED when every one is full) and a cluster whose subscription is full ends
    # TERMINATED with AZURE_QUOTA_EXCEEDED_EXCEPTION (shared/domain/arm_placement.py).
    arm_subscription_max_clusters: int = Field(default=0, ge=0)
    arm_endpoint: str = "https://management.azure.com"
    # Region of a workspace created without one.
    arm_location: str = "westeurope"
    # `managedBy` of every managed resource group: the platform's own resource id (for example
    # the function app's), so the portal shows who owns the group.
    arm_platform_resource_id: str = ""
    # Managed resource group of workspace W: <prefix><W>-managed.
    arm_resource_group_prefix: str = "sparkplane-"
    # ARM JSON templates (workspace.json, cluster.json); empty = <app root>/infra/templates.
    arm_templates_dir: str = ""
    # The control plane's URL as the nodes reach it (the driver's agent posts heartbeats
    # there); empty = the agent environment's (agent_callback_url).
    arm_control_plane_url: str = ""
    # The nodes' cloud-init template; empty = <app root>/infra/bootstrap/cloud-init.yaml.
    arm_cloud_init: str = ""
    # Where the driver's cluster agent is downloaded from (an https .tar.gz of this source
    # tree) and its SHA-256; empty = no agent on the clusters.
    arm_agent_source_url: str = ""
    arm_agent_source_sha256: str = ""
    # OpenSSH public key for break-glass access to the nodes; empty = nobody can log in.
    arm_admin_public_key: str = ""
    # Object id of the control plane's managed identity: the one principal left out of the deny
    # assignment (deployment stack deny settings) each managed resource group gets; empty = the
    # groups get no deny assignment.
    arm_principal_id: str = ""

    @property
    def arm_subscriptions(self) -> list[str]:
        """Every subscription of managed resource groups, `arm_subscription_id` first (the
        workspaces made before there were several stay there), no repeats."""
        out: list[str] = []
        for sub in [self.arm_subscription_id, *self.arm_subscription_ids.split(",")]:
            sub = sub.strip()
            if sub and sub.lower() not in (o.lower() for o in out):
                out.append(sub)
        return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
