"""A validated, merged compose file -> one DeployStackRequest (client side).

Services become NAME_SVC, labelled with the stack; networks, secrets, configs
and named volumes declared in the file get the stack's prefix unless they are
`external` (or carry an explicit `name:`). Every service answers to its short
compose name on its networks (the alias list of each network attachment).
A key Shoal cannot honour is refused by name, never dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal.proto import control_pb2 as api
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl.compose import services as svc_conv
from shoal.swarmctl.compose.context import MAX_FILE_BYTES, STACK_LABEL, Context, Locate, strings


def convert(stack: str, data: dict[str, Any], base_dir: Path, locate: Locate) -> Context:
    """Fills a Context; `request(ctx)` then builds the request."""
    ctx = Context(stack, data, base_dir, locate)
    if not data.get("services"):
        ctx.fail(["services"], "a stack needs at least one service")
    _networks(ctx)
    ctx.secrets = _file_objects(ctx, "secrets")
    ctx.configs = _file_objects(ctx, "configs")
    _volumes(ctx)
    return ctx


def request(ctx: Context, req_objects: dict[str, Any]) -> api.DeployStackRequest:
    req = api.DeployStackRequest(name=ctx.stack)
    for short, svc in ctx.data["services"].items():
        req.services.append(svc_conv.service(ctx, short, svc or {}))
    for short, spec in (ctx.data.get("networks") or {}).items():
        spec = spec or {}
        if spec.get("external"):
            req.external_networks.append(ctx.networks[short])
        elif short != "default" or ctx.default_network_used:
            req.networks.append(_network_spec(ctx, short, spec))
    if ctx.default_network_used and "default" not in (ctx.data.get("networks") or {}):
        req.networks.append(
            pb.NetworkSpec(
                annotations=pb.Annotations(
                    name=ctx.networks["default"], labels={STACK_LABEL: ctx.stack}
                ),
                driver="overlay",
            )
        )
    for kind, files, external in (
        ("secrets", req.secrets, req.external_secrets),
        ("configs", req.configs, req.external_configs),
    ):
        for short, spec in (ctx.data.get(kind) or {}).items():
            name = (ctx.secrets if kind == "secrets" else ctx.configs)[short]
            if (spec or {}).get("external"):
                external.append(name)
            else:
                files.append(req_objects[f"{kind}/{short}"])
    return req


def _networks(ctx: Context) -> None:
    declared = ctx.data.get("networks") or {}
    for short, spec in declared.items():
        spec = spec or {}
        where = ["networks", short]
        ctx.networks[short] = (
            str(spec.get("name") or short) if spec.get("external") else (ctx.full(short, spec))
        )
        for key in spec.get("driver_opts") or {}:
            if key == "encrypted":
                ctx.fail(
                    [*where, "driver_opts", key],
                    "encrypted overlay networks are refused: Shoal does not encrypt VXLAN "
                    "traffic on this kernel (no IPsec); remove `encrypted` or use an "
                    "encrypted underlay",
                )
            ctx.fail([*where, "driver_opts", key], f"driver option {key!r} is not supported")
        if spec.get("external") and set(spec) - {"external", "name"}:
            ctx.fail(where, "an external network takes only `external` and `name`")
    ctx.networks.setdefault("default", f"{ctx.stack}_default")


def _network_spec(ctx: Context, short: str, spec: dict[str, Any]) -> pb.NetworkSpec:
    labels = strings(spec.get("labels"))
    labels[STACK_LABEL] = ctx.stack
    out = pb.NetworkSpec(
        annotations=pb.Annotations(name=ctx.networks[short], labels=labels), driver="overlay"
    )
    out.internal = bool(spec.get("internal"))
    configs = (spec.get("ipam") or {}).get("config") or []
    if configs and configs[0].get("subnet"):
        out.subnet = configs[0]["subnet"]
    return out


def _file_objects(ctx: Context, kind: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for short, spec in (ctx.data.get(kind) or {}).items():
        spec = spec or {}
        where = [kind, short]
        if spec.get("external"):
            if "file" in spec:
                ctx.fail(where, "an external object has no `file`")
            names[short] = str(spec.get("name") or short)
        elif not spec.get("file"):
            ctx.fail(where, "needs `file: PATH` (or `external: true`)")
        else:
            names[short] = ctx.full(short, spec)
    return names


def read_file_objects(ctx: Context) -> dict[str, Any]:
    """The data of the secrets and configs the stack creates (never printed)."""
    out: dict[str, Any] = {}
    for kind, names in (("secrets", ctx.secrets), ("configs", ctx.configs)):
        for short, spec in (ctx.data.get(kind) or {}).items():
            spec = spec or {}
            if spec.get("external"):
                continue
            where = [kind, short, "file"]
            path = ctx.path(str(spec["file"]))
            try:
                data = path.read_bytes()
            except OSError as err:
                ctx.fail(where, f"cannot read {path}: {err.strerror}")
            if len(data) > MAX_FILE_BYTES:
                ctx.fail(where, f"{path} is over 500 KiB (the limit for {kind})")
            if not data:
                ctx.fail(where, f"{path} is empty")
            labels = strings(spec.get("labels"))
            labels[STACK_LABEL] = ctx.stack
            out[f"{kind}/{short}"] = api.StackFile(name=names[short], labels=labels, data=data)
    return out


def _volumes(ctx: Context) -> None:
    for short, spec in (ctx.data.get("volumes") or {}).items():
        spec = spec or {}
        ctx.volumes[short] = (
            str(spec.get("name") or short) if spec.get("external") else ctx.full(short, spec)
        )
