"""One compose service -> a ServiceSpec (see convert.py for the stack around it)."""

from __future__ import annotations

import os
from typing import Any

from google.protobuf import json_format

from shoal.proto import objects_pb2 as pb
from shoal.swarmctl import parse
from shoal.swarmctl.compose.context import (
    STACK_LABEL,
    Context,
    command,
    duration,
    mapping,
    scalar,
    strings,
)

_CONDITIONS = {
    "any": pb.RestartPolicy.ANY,
    "on-failure": pb.RestartPolicy.ON_FAILURE,
    "none": pb.RestartPolicy.NONE,
}
_FAILURE = {
    "pause": pb.UpdateConfig.PAUSE,
    "continue": pb.UpdateConfig.CONTINUE,
    "rollback": pb.UpdateConfig.ROLLBACK,
}
_ORDER = {"stop-first": pb.UpdateConfig.STOP_FIRST, "start-first": pb.UpdateConfig.START_FIRST}


def service(ctx: Context, short: str, svc: dict[str, Any]) -> pb.ServiceSpec:
    where = ["services", short]
    if not svc.get("image"):
        ctx.fail(where, "`image` is required (Shoal does not build images)")
    spec = pb.ServiceSpec(
        annotations=pb.Annotations(name=f"{ctx.stack}_{short}", labels={STACK_LABEL: ctx.stack})
    )
    c = spec.task.container
    c.image = str(svc["image"])
    if "entrypoint" in svc:
        c.command.extend(command(svc["entrypoint"]))
    if "command" in svc:
        c.args.extend(command(svc["command"]))
    c.env.extend(_environment(ctx, where, svc))
    if "user" in svc:
        c.user = parse.user(str(svc["user"]))
    c.dir = str(svc.get("working_dir", ""))
    c.labels.update(strings(svc.get("labels")))
    c.labels[STACK_LABEL] = ctx.stack
    if "stop_grace_period" in svc:
        c.stop_grace_period_ms = duration(
            ctx, [*where, "stop_grace_period"], svc["stop_grace_period"]
        )
    _healthcheck(ctx, where, svc.get("healthcheck"), c)
    for i, vol in enumerate(svc.get("volumes") or []):
        c.mounts.append(_mount(ctx, [*where, "volumes", i], vol))
    for kind, refs in (("secrets", c.secrets), ("configs", c.configs)):
        for i, item in enumerate(svc.get(kind) or []):
            refs.append(_file_ref(ctx, [*where, kind, i], kind, item))
    for i, item in enumerate(svc.get("ports") or []):
        spec.ports.extend(_ports(ctx, [*where, "ports", i], item))
    _attach(ctx, where, short, svc.get("networks"), spec.task)
    _depends(ctx, where, svc.get("depends_on"), spec)
    _deploy(ctx, [*where, "deploy"], svc.get("deploy") or {}, spec)
    return spec


def _environment(ctx: Context, where: list[Any], svc: dict[str, Any]) -> list[str]:
    env: dict[str, Any] = {}
    files = svc.get("env_file") or []
    for i, text in enumerate([files] if isinstance(files, str) else files):
        env.update(ctx.read_env_file([*where, "env_file", i], str(text)))
    for key, value in mapping(svc.get("environment")).items():
        if value is None:  # `- KEY` alone: from the deploying shell, or left out
            if key in os.environ:
                env[key] = os.environ[key]
            continue
        env[key] = scalar(value)
    return [f"{k}={v}" for k, v in env.items()]


def _healthcheck(ctx: Context, where: list[Any], hc: Any, c: pb.ContainerSpec) -> None:
    if not hc:
        return
    where = [*where, "healthcheck"]
    if hc.get("disable"):
        c.healthcheck.test.append("NONE")
        return
    test = hc.get("test")
    if isinstance(test, str):
        c.healthcheck.test.extend(["CMD-SHELL", test])
    elif test:
        if test[0] not in ("CMD", "CMD-SHELL", "NONE"):
            ctx.fail([*where, "test", 0], "a test list starts with CMD, CMD-SHELL or NONE")
        c.healthcheck.test.extend(str(t) for t in test)
    if "interval" in hc:
        c.healthcheck.interval_ms = duration(ctx, [*where, "interval"], hc["interval"])
    if "timeout" in hc:
        c.healthcheck.timeout_ms = duration(ctx, [*where, "timeout"], hc["timeout"])
    if "retries" in hc:
        c.healthcheck.retries = int(hc["retries"])
    if "start_period" in hc:
        c.healthcheck.start_period_ms = duration(ctx, [*where, "start_period"], hc["start_period"])


def _mount(ctx: Context, where: list[Any], vol: Any) -> pb.Mount:
    if isinstance(vol, str):
        parts = vol.split(":")
        if len(parts) == 1:
            ctx.fail(where, "anonymous volumes are not supported: name the volume (NAME:PATH)")
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            ctx.fail(where, f"expected SOURCE:TARGET[:ro|rw], got {vol!r}")
        source, target, readonly = parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
    else:
        kind, source = str(vol.get("type", "volume")), str(vol.get("source", ""))
        target, readonly = str(vol["target"]), bool(vol.get("read_only", False))
        if kind not in ("bind", "volume"):
            ctx.fail([*where, "type"], f"volume type {kind!r} is not supported (bind or volume)")
        if not source:
            ctx.fail(where, "`source` is required (anonymous volumes are not supported)")
    if kind == "bind":
        return pb.Mount(
            type=pb.Mount.BIND, source=str(ctx.path(source)), target=target, readonly=readonly
        )
    if source not in ctx.volumes:
        ctx.fail(where, f"volume {source!r} is not declared in the top-level volumes")
    return pb.Mount(
        type=pb.Mount.VOLUME, source=ctx.volumes[source], target=target, readonly=readonly
    )


def _file_ref(ctx: Context, where: list[Any], kind: str, item: Any) -> pb.FileReference:
    long = item if isinstance(item, dict) else {"source": item}
    source = str(long["source"])
    names = ctx.secrets if kind == "secrets" else ctx.configs
    if source not in names:
        ctx.fail(where, f"{kind[:-1]} {source!r} is not declared in the top-level {kind}")
    target = str(long.get("target") or source)
    if not target.startswith("/"):
        target = f"/run/secrets/{target}" if kind == "secrets" else f"/{target}"
    ref = pb.FileReference(name=names[source], target=target)
    for key in ("uid", "gid"):
        if key in long:
            try:
                setattr(ref, key, int(str(long[key])))
            except ValueError:
                ctx.fail([*where, key], f"expected a numeric {key}, got {long[key]!r}")
    if "mode" in long:
        mode = long["mode"]
        try:
            ref.mode = int(mode, 8) if isinstance(mode, str) else int(mode)
        except ValueError:
            ctx.fail([*where, "mode"], f"expected an octal mode such as 0440, got {mode!r}")
        if ref.mode > 0o777:
            ctx.fail([*where, "mode"], f"mode {oct(ref.mode)} is not a file mode")
    return ref


def _ports(ctx: Context, where: list[Any], item: Any) -> list[pb.PortConfig]:
    mode = pb.PortConfig.INGRESS
    if isinstance(item, dict):
        if item.get("mode", "ingress") not in parse.PUBLISH_MODE:
            ctx.fail([*where, "mode"], f"port mode {item['mode']!r}: ingress or host")
        mode = pb.PortConfig.PublishMode.Value(parse.PUBLISH_MODE[item.get("mode", "ingress")])
        published = item.get("published")
        text = f"{'' if published is None else f'{published}:'}{item['target']}"
        text += f"/{item.get('protocol', 'tcp')}"
    else:
        text = str(item)
    ports, slash, proto = text.partition("/")
    parts = ports.split(":")
    if len(parts) == 3:
        ctx.fail(where, "binding a published port to one host address is not supported")
    if len(parts) == 1:  # a target alone: the manager picks the published port
        return [_port(ctx, where, f"target={t},protocol={proto or 'tcp'}", mode)
                for t in _range(ctx, where, parts[0])]  # fmt: skip
    published, target = (_range(ctx, where, p) for p in parts)
    if len(published) != len(target):
        ctx.fail(where, f"{text!r}: the two port ranges differ in length")
    return [
        _port(ctx, where, f"{pub}:{tgt}{slash}{proto}", mode)
        for pub, tgt in zip(published, target, strict=True)
    ]


def _port(ctx: Context, where: list[Any], text: str, mode: int) -> pb.PortConfig:
    try:
        port = json_format.ParseDict(parse.port(text), pb.PortConfig())
    except ValueError as err:
        ctx.fail(where, str(err))
    port.mode = mode  # type: ignore[assignment]
    return port


def _range(ctx: Context, where: list[Any], text: str) -> list[int]:
    low, dash, high = text.partition("-")
    if not low.isdigit() or (dash and not high.isdigit()):
        ctx.fail(where, f"{text!r} is not a port or port range")
    return list(range(int(low), int(high if dash else low) + 1))


def _attach(ctx: Context, where: list[Any], short: str, nets: Any, task: pb.TaskSpec) -> None:
    if not nets:
        ctx.default_network_used = True
        task.networks.add(target=ctx.networks["default"], aliases=[short])
        return
    items = nets.items() if isinstance(nets, dict) else ((n, None) for n in nets)
    declared = ctx.data.get("networks") or {}
    for name, opts in items:
        if name == "default":
            ctx.default_network_used = True
        elif name not in declared:
            ctx.fail(
                [*where, "networks", name],
                f"network {name!r} is not declared in the top-level networks",
            )
        aliases = [short, *((opts or {}).get("aliases") or [])]
        task.networks.add(target=ctx.networks[name], aliases=list(dict.fromkeys(aliases)))


def _depends(ctx: Context, where: list[Any], deps: Any, spec: pb.ServiceSpec) -> None:
    if not isinstance(deps, dict):
        return
    for name, opts in deps.items():
        if name not in ctx.data["services"]:
            ctx.fail([*where, "depends_on", name], f"service {name!r} is not in this stack")
        if (opts or {}).get("condition") == "service_healthy":
            spec.depends_on_healthy.append(f"{ctx.stack}_{name}")


def _deploy(ctx: Context, where: list[Any], d: dict[str, Any], spec: pb.ServiceSpec) -> None:
    if d.get("mode") == "global":
        if "replicas" in d:
            ctx.fail([*where, "replicas"], "a global service has no replica count")
        getattr(spec, "global").SetInParent()
    else:
        spec.replicated.replicas = int(d.get("replicas", 1))
    spec.annotations.labels.update(strings(d.get("labels")))
    if d.get("endpoint_mode") == "dnsrr":
        spec.endpoint_mode = pb.ENDPOINT_DNSRR
    task = spec.task
    placement = d.get("placement") or {}
    task.placement.constraints.extend(str(x) for x in placement.get("constraints") or [])
    task.placement.max_replicas_per_node = int(placement.get("max_replicas_per_node", 0))
    resources = d.get("resources") or {}
    for key, target in (("limits", task.limits), ("reservations", task.reservations)):
        res = resources.get(key) or {}
        try:
            if "cpus" in res:
                target.nano_cpus = parse.nano_cpus(str(res["cpus"]))
            if "memory" in res:
                target.memory_bytes = parse.memory_bytes(str(res["memory"]))
        except ValueError as err:
            ctx.fail([*where, "resources", key], str(err))
    _policies(ctx, where, d, spec)


def _policies(ctx: Context, where: list[Any], d: dict[str, Any], spec: pb.ServiceSpec) -> None:
    rp = d.get("restart_policy")
    if rp is not None:
        r = spec.task.restart
        r.condition = _CONDITIONS[rp.get("condition", "any")]
        r.delay_ms = duration(ctx, [*where, "restart_policy", "delay"], rp.get("delay", "5s"))
        r.max_attempts = int(rp.get("max_attempts", 0))
        if "window" in rp:
            r.window_ms = duration(ctx, [*where, "restart_policy", "window"], rp["window"])
    for key, target in (("update_config", spec.update), ("rollback_config", spec.rollback)):
        if d.get(key) is not None:
            _update(ctx, [*where, key], d[key], target)


def _update(ctx: Context, where: list[Any], uc: dict[str, Any], u: pb.UpdateConfig) -> None:
    u.parallelism = int(uc.get("parallelism", 1))
    u.delay_ms = duration(ctx, [*where, "delay"], uc.get("delay", "0s"))
    u.failure_action = _FAILURE[uc.get("failure_action", "pause")]
    u.order = _ORDER[uc.get("order", "stop-first")]
    if "monitor" in uc:
        u.monitor_ms = duration(ctx, [*where, "monitor"], uc["monitor"])
    u.max_failure_ratio = float(uc.get("max_failure_ratio", 0))
