"""What a cluster's nodes are given at creation: its tags and its customData (the node
cloud-init with the provisioner's placeholders filled, its conf files, spark_conf and
spark_env_vars packed)."""

from __future__ import annotations

import base64
import gzip
import json
import re
from collections.abc import Mapping

from shared.adapters.arm.base import ArmBase
from shared.domain import spark_auth
from shared.domain.azure_nodes import SPARK_BUILDS
from shared.domain.node_env import spark_env_problem
from shared.ports import NodeRequest

# Azure caps tags per resource, and tag names may not contain these characters.
MAX_TAGS = 50
BAD_TAG_NAME = re.compile(r"[<>%&\\?/]")
# Azure's limit on customData (base64 text).
MAX_CUSTOM_DATA = 87380
# What a placeholder value may contain (URLs, ids, versions, tokens; no blanks, quotes, $, &).
SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/?=+@,%-]*")

# A file of NodeRequest.conf_files: a plain file name in the Spark conf directory. The
# bootstrap writes spark-defaults.conf itself, and spark-env.sh would be run by every Spark
# script.
CONF_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_CONF_FILES = frozenset({"spark-defaults.conf", "spark-env.sh"})


def sanitize_tags(tags: Mapping[str, str], fixed: Mapping[str, str]) -> dict[str, str]:
    """Tags Azure accepts: `fixed` first (they win), then the user's, valid names only, values
    cut to 256 characters, at most 50."""
    out = {k: str(v)[:256] for k, v in fixed.items()}
    for k, v in tags.items():
        if len(out) >= MAX_TAGS:
            break
        if k in out or not k or len(k) > 512 or BAD_TAG_NAME.search(k):
            continue
        out[k] = str(v)[:256]
    return out


def custom_data(template: str, values: Mapping[str, str]) -> str:
    """The base64 customData of a cluster: the node cloud-init template
    (infra/bootstrap/cloud-init.yaml) with the provisioner's placeholders filled.

    Each `__SPARKPLANE_<NAME>__` with a non-empty value is replaced; an empty one is left for
    the bootstrap to treat as "not given". In the deployment's customData, ROLE and DRIVER_HOST
    are the cluster template's to fill (only it knows which resource is the driver and the
    driver's address); the scale set's own customData for workers with the node agent
    (`ArmProvisioner.add_workers`) is filled whole here, the driver's address read back. The values
    land in files the bootstrap sources with bash, so only characters that cannot end or
    extend a shell assignment are accepted.
    """
    text = template
    for name, value in values.items():
        if not SAFE_VALUE.fullmatch(value):
            raise ValueError(f"{name} has characters a node's environment file cannot carry")
        if value:
            text = text.replace(f"__SPARKPLANE_{name}__", value)
    data = base64.b64encode(text.encode()).decode()
    if len(data) > MAX_CUSTOM_DATA:
        raise ValueError(f"customData is {len(data)} characters; Azure allows {MAX_CUSTOM_DATA}")
    return data


def conf_files_value(files: Mapping[str, str]) -> str:
    """The CONF_FILES placeholder's value: base64 of the gzipped JSON object name -> content
    (base64 only has characters a node's environment file can carry)."""
    for name in files:
        if not CONF_FILE_NAME.fullmatch(name) or name in RESERVED_CONF_FILES:
            raise ValueError(
                f"conf file {name!r}: a plain file name is expected (letters, digits, '.', '_', "
                f"'-'), other than {', '.join(sorted(RESERVED_CONF_FILES))}"
            )
    return _packed(files)


def spark_conf_value(conf: Mapping[str, str]) -> str:
    """The SPARK_CONF placeholder's value: the cluster's spark_conf, packed like CONF_FILES.
    Any key and value can be written to spark-defaults.conf (the node escapes them); pinned
    keys are dropped on the node."""
    for key, value in conf.items():
        if not isinstance(key, str) or not key.strip() or not isinstance(value, str):
            raise ValueError(f"spark_conf {key!r}: keys must be non-empty strings, values strings")
    return _packed(conf)


def spark_env_value(env: Mapping[str, str]) -> str:
    """The SPARK_ENV placeholder's value: the cluster's spark_env_vars, packed like CONF_FILES.
    Raises ValueError when a variable cannot be set on the nodes (spark_env_problem)."""
    problems = [spark_env_problem(k, v) for k, v in sorted(env.items())]
    if any(problems):
        raise ValueError(
            "spark_env_vars cannot be set on the nodes: " + "; ".join(p for p in problems if p)
        )
    return _packed(env)


def _packed(obj: Mapping[str, str]) -> str:
    """base64 of the gzipped JSON object (base64 only has characters a node's environment file
    can carry)."""
    text = json.dumps(dict(sorted(obj.items())), separators=(",", ":"))
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


class CustomDataMixin(ArmBase):
    def _worker_custom_data(self, req: NodeRequest, driver_ip: str) -> str:
        """The customData of the scale set's model for workers that run the node agent: the
        cluster's cloud-init with `req.agent_env` (control-plane URL, cluster id, agent token),
        NODE_AGENT=1 (the agent runs in node mode: disk reports only) and the two placeholders
        the cluster template fills for the deployment's copy (ROLE, DRIVER_HOST)."""
        return self._custom_data(
            req, {"NODE_AGENT": "1", "ROLE": "worker", "DRIVER_HOST": driver_ip}
        )

    def _custom_data(self, req: NodeRequest, extra: Mapping[str, str]) -> str:
        with self._lock:
            template = self._templates.get("cloud-init")
        if template is None:
            template = self.cloud_init.read_text()
            with self._lock:
                self._templates["cloud-init"] = template
        env = req.agent_env
        pyspark = SPARK_BUILDS.get(req.spark_version, ("", ""))[0]
        return custom_data(
            template,
            {
                "CLUSTER_ID": req.cluster_id,
                "CONTROL_PLANE_URL": self.control_plane_url
                or env.get("SPARKPLANE_CONTROL_PLANE_URL", ""),
                "AGENT_TOKEN": env.get("SPARKPLANE_AGENT_TOKEN", ""),
                "PYSPARK_VERSION": pyspark,
                "AGENT_SOURCE_URL": self.agent_source_url,
                "AGENT_SOURCE_SHA256": self.agent_source_sha256,
                "CONF_FILES": conf_files_value(req.conf_files),
                "SPARK_CONF": spark_conf_value(spark_auth.without_reserved(req.spark_conf)),
                # The cluster's Spark credentials (securestring parameter, root-only files).
                "SPARK_AUTH_SECRET": req.spark_auth_secret,
                "CONNECT_TOKEN": req.connect_token,
                "SPARK_ENV": spark_env_value(req.spark_env_vars),
                **extra,
            },
        )
