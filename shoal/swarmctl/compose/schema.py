"""The JSON schema of the compose keys Shoal reads (written for Shoal, draft 2020-12).

Keys that `docker stack deploy` also ignores are allowed by the schema and
warned about once each (IGNORED); any other key is an error. `x-` keys
(compose extensions) are allowed anywhere a mapping of keys is.
"""

from __future__ import annotations

from typing import Any

# Service keys Swarm ignores: accepted with one warning each.
IGNORED_SERVICE_KEYS = (
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "container_name",
    "devices",
    "external_links",
    "links",
    "network_mode",
    "restart",
    "security_opt",
    "userns_mode",
)
IGNORED_NETWORK_KEYS = ("attachable",)

_STR = {"type": "string"}
_INT = {"type": "integer"}
_NONNEG = {"type": "integer", "minimum": 0}
_DURATION = {"type": "string", "pattern": r"^((\d+(\.\d+)?)(ms|s|m|h))+$|^0$"}
_STRINGS = {"type": "array", "items": _STR}
_STR_OR_LIST = {"oneOf": [_STR, _STRINGS]}
_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_KV = {
    "oneOf": [
        {"type": "object", "additionalProperties": _SCALAR},
        {"type": "array", "items": _STR, "uniqueItems": True},
    ]
}
_EXT: dict[str, Any] = {"^x-": {}}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": props,
        "patternProperties": _EXT,
        "additionalProperties": False,
    }
    if required:
        out["required"] = required
    return out


_UPDATE = _obj(
    {
        "parallelism": _NONNEG,
        "delay": _DURATION,
        "failure_action": {"enum": ["continue", "rollback", "pause"]},
        "monitor": _DURATION,
        "max_failure_ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "order": {"enum": ["stop-first", "start-first"]},
    }
)
_RESOURCES = _obj(
    {
        "cpus": {"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?$"},
        "memory": {"type": ["string", "integer"]},
    }
)
_DEPLOY = _obj(
    {
        "mode": {"enum": ["replicated", "global"]},
        "replicas": _NONNEG,
        "labels": _KV,
        "endpoint_mode": {"enum": ["vip", "dnsrr"]},
        "placement": _obj({"constraints": _STRINGS, "max_replicas_per_node": _NONNEG}),
        "resources": _obj({"limits": _RESOURCES, "reservations": _RESOURCES}),
        "restart_policy": _obj(
            {
                "condition": {"enum": ["none", "on-failure", "any"]},
                "delay": _DURATION,
                "max_attempts": _NONNEG,
                "window": _DURATION,
            }
        ),
        "update_config": _UPDATE,
        "rollback_config": _UPDATE,
    }
)
_PORT_LONG = _obj(
    {
        "target": {"type": "integer", "minimum": 1, "maximum": 65535},
        "published": {"type": ["integer", "string"]},
        "protocol": {"enum": ["tcp", "udp"]},
        "mode": {"enum": ["ingress", "host"]},
    },
    ["target"],
)
_VOLUME_LONG = _obj(
    {
        "type": {"enum": ["bind", "volume", "tmpfs", "npipe"]},
        "source": _STR,
        "target": _STR,
        "read_only": {"type": "boolean"},
    },
    ["target"],
)
_FILE_REF = {
    "oneOf": [
        _STR,
        _obj(
            {
                "source": _STR,
                "target": _STR,
                "uid": {"type": ["string", "integer"]},
                "gid": {"type": ["string", "integer"]},
                "mode": {"type": ["integer", "string"]},
            },
            ["source"],
        ),
    ]
}
_HEALTHCHECK = _obj(
    {
        "test": _STR_OR_LIST,
        "interval": _DURATION,
        "timeout": _DURATION,
        "retries": {"type": "integer", "minimum": 1},
        "start_period": _DURATION,
        "disable": {"type": "boolean"},
    }
)
_DEPENDS = {
    "oneOf": [
        {"type": "array", "items": _STR},
        {
            "type": "object",
            "additionalProperties": _obj(
                {
                    "condition": {
                        "enum": [
                            "service_started",
                            "service_healthy",
                            "service_completed_successfully",
                        ]
                    },
                    "restart": {"type": "boolean"},
                    "required": {"type": "boolean"},
                }
            ),
        },
    ]
}
_SERVICE = _obj(
    {
        "image": _STR,
        "command": _STR_OR_LIST,
        "entrypoint": _STR_OR_LIST,
        "environment": _KV,
        "env_file": _STR_OR_LIST,
        "ports": {"type": "array", "items": {"oneOf": [_STR, {"type": "integer"}, _PORT_LONG]}},
        "networks": {
            "oneOf": [
                _STRINGS,
                {
                    "type": "object",
                    "additionalProperties": {
                        "oneOf": [{"type": "null"}, _obj({"aliases": _STRINGS})]
                    },
                },
            ]
        },
        "volumes": {"type": "array", "items": {"oneOf": [_STR, _VOLUME_LONG]}},
        "secrets": {"type": "array", "items": _FILE_REF},
        "configs": {"type": "array", "items": _FILE_REF},
        "healthcheck": _HEALTHCHECK,
        "user": {"type": ["string", "integer"]},
        "working_dir": _STR,
        "labels": _KV,
        "stop_grace_period": _DURATION,
        "deploy": _DEPLOY,
        "depends_on": _DEPENDS,
        **{key: {} for key in IGNORED_SERVICE_KEYS},
    }
)
_EXTERNAL = {"external": {"type": "boolean"}, "name": _STR, "labels": _KV}
_NETWORK = {
    "oneOf": [
        {"type": "null"},
        _obj(
            {
                **_EXTERNAL,
                "driver": {"enum": ["overlay"]},
                "driver_opts": {"type": "object", "additionalProperties": _SCALAR},
                "internal": {"type": "boolean"},
                "ipam": _obj(
                    {
                        "driver": {"enum": ["default"]},
                        "config": {"type": "array", "items": _obj({"subnet": _STR}), "maxItems": 1},
                    }
                ),
                **{key: {} for key in IGNORED_NETWORK_KEYS},
            }
        ),
    ]
}
_FILE_OBJECT = {"oneOf": [{"type": "null"}, _obj({**_EXTERNAL, "file": _STR})]}
_VOLUME = {
    "oneOf": [
        {"type": "null"},
        _obj({**_EXTERNAL, "driver": {"enum": ["local"]}}),
    ]
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    **_obj(
        {
            "version": {"type": ["string", "number"]},
            "name": _STR,
            "services": {
                "type": "object",
                "propertyNames": {"pattern": r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"},
                "additionalProperties": _SERVICE,
            },
            "networks": {"type": "object", "additionalProperties": _NETWORK},
            "volumes": {"type": "object", "additionalProperties": _VOLUME},
            "secrets": {"type": "object", "additionalProperties": _FILE_OBJECT},
            "configs": {"type": "object", "additionalProperties": _FILE_OBJECT},
        }
    ),
}
