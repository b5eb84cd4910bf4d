"""The compose converter (client side) on files shaped like the ones people write."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.proto import objects_pb2 as pb
from shoal.swarmctl.compose import STACK_LABEL, ComposeError, Stack, build
from shoal.swarmctl.compose.loader import Interpolator

APP = """\
version: "3.8"
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: "${REGISTRY:-registry.local:5000}/web:${TAG}"
    command: ["httpd", "-f", "-p", "8080"]
    environment:
      - BACKEND_URL=http://api:9000
      - PRICE=$$5
    ports:
      - "80:8080"
      - target: 8443
        published: 443
        protocol: tcp
        mode: ingress
      - "7000-7001:7000-7001/udp"
    networks:
      - front
    configs:
      - source: site
        target: /etc/httpd.conf
    deploy:
      replicas: ${WEB_REPLICAS:-2}
      labels:
        tier: front
      placement:
        constraints: [node.labels.zone == a]
        max_replicas_per_node: 1
      resources:
        limits: {cpus: "0.50", memory: 64M}
        reservations: {memory: 16M}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 3, window: 30s}
      update_config: {parallelism: 2, delay: 1s, failure_action: rollback, order: start-first}
      rollback_config: {parallelism: 0, failure_action: continue}
    healthcheck:
      test: wget -q -O- http://localhost:8080/ || exit 1
      start_period: 30s
      interval: 5s
      timeout: 2s
      retries: 3
    stop_grace_period: 20s
    depends_on:
      api:
        condition: service_healthy
  api:
    image: registry.local:5000/api:1.0
    entrypoint: /bin/api
    command: --listen :9000
    user: "1000:1000"
    working_dir: /srv
    env_file: api.env
    environment:
      DB_PASSWORD_FILE: /run/secrets/db_password
      DEBUG: false
    networks:
      front:
        aliases: [backend]
      back:
    volumes:
      - data:/var/lib/api
      - ./static:/srv/static:ro
      - type: bind
        source: /etc/ssl/certs
        target: /etc/ssl/certs
        read_only: true
    secrets:
      - db_password
      - source: api_key
        target: key.txt
        uid: "1000"
        gid: "1000"
        mode: 0440
    labels:
      com.example.role: api
    container_name: ignored-name
    deploy:
      mode: global
      endpoint_mode: vip
networks:
  front:
  back:
    driver: overlay
    ipam:
      config:
        - subnet: 10.77.0.0/24
  shared:
    external: true
    name: corp_shared
volumes:
  data:
secrets:
  db_password:
    file: ./db_password.txt
  api_key:
    external: true
configs:
  site:
    file: ./httpd.conf
"""


def write(d: Path, name: str, text: str) -> Path:
    path = d / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def app(tmp_path: Path) -> Path:
    write(tmp_path, ".env", "TAG=1.4\n# comment\nWEB_REPLICAS=3\n")
    write(tmp_path, "api.env", "LOG_LEVEL=info\nDEBUG=true\n")
    write(tmp_path, "db_password.txt", "s3cret-pw\n")
    write(tmp_path, "httpd.conf", "listen 8080\n")
    return write(tmp_path, "docker-compose.yml", APP)


def services(stack: object) -> dict[str, pb.ServiceSpec]:
    return {s.annotations.name: s for s in stack.request.services}  # type: ignore[attr-defined]


def test_two_tier_app(app: Path) -> None:
    stack = build([app], "shop", environ={})
    svc = services(stack)
    assert sorted(svc) == ["shop_api", "shop_web"]
    web, api_ = svc["shop_web"], svc["shop_api"]
    # Interpolation: .env next to the file, defaults, $$.
    assert web.task.container.image == "registry.local:5000/web:1.4"
    assert web.replicated.replicas == 3
    assert "PRICE=$5" in web.task.container.env
    assert web.annotations.labels == {STACK_LABEL: "shop", "tier": "front"}
    assert web.task.container.labels[STACK_LABEL] == "shop"
    assert list(web.task.container.args) == ["httpd", "-f", "-p", "8080"]
    ports = [(p.published_port, p.target_port, p.protocol) for p in web.ports]
    assert ports == [
        (80, 8080, pb.PortConfig.TCP),
        (443, 8443, pb.PortConfig.TCP),
        (7000, 7000, pb.PortConfig.UDP),
        (7001, 7001, pb.PortConfig.UDP),
    ]
    t = web.task
    assert (t.limits.nano_cpus, t.limits.memory_bytes) == (500_000_000, 64 << 20)
    assert t.reservations.memory_bytes == 16 << 20
    assert list(t.placement.constraints) == ["node.labels.zone == a"]
    assert t.placement.max_replicas_per_node == 1
    assert (t.restart.condition, t.restart.delay_ms, t.restart.max_attempts) == (
        pb.RestartPolicy.ON_FAILURE,
        2000,
        3,
    )
    assert (web.update.parallelism, web.update.failure_action, web.update.order) == (
        2,
        pb.UpdateConfig.ROLLBACK,
        pb.UpdateConfig.START_FIRST,
    )
    assert (web.rollback.parallelism, web.rollback.failure_action) == (
        0,
        pb.UpdateConfig.CONTINUE,
    )
    assert not svc["shop_api"].HasField("rollback")
    hc = t.container.healthcheck
    assert hc.start_period_ms == 30_000
    assert hc.test[0] == "CMD-SHELL" and (hc.interval_ms, hc.retries) == (5000, 3)
    assert t.container.stop_grace_period_ms == 20_000
    assert [(r.name, r.target) for r in t.container.configs] == [("shop_site", "/etc/httpd.conf")]
    assert list(web.depends_on_healthy) == ["shop_api"]
    # Short names on the networks: the service name and the compose aliases.
    assert [(a.target, list(a.aliases)) for a in web.task.networks] == [("shop_front", ["web"])]
    assert [(a.target, list(a.aliases)) for a in api_.task.networks] == [
        ("shop_front", ["api", "backend"]),
        ("shop_back", ["api"]),
    ]

    check_api(api_, app)
    check_top_level(stack)


def check_api(api_: pb.ServiceSpec, app: Path) -> None:
    assert api_.WhichOneof("mode") == "global"
    c = api_.task.container
    assert (list(c.command), list(c.args)) == (["/bin/api"], ["--listen", ":9000"])
    assert (c.user, c.dir) == ("1000:1000", "/srv")
    # env_file first, environment wins; booleans as compose writes them.
    assert sorted(c.env) == [
        "DB_PASSWORD_FILE=/run/secrets/db_password",
        "DEBUG=false",
        "LOG_LEVEL=info",
    ]
    mounts = [(m.type, m.source, m.target, m.readonly) for m in c.mounts]
    assert mounts == [
        (pb.Mount.VOLUME, "shop_data", "/var/lib/api", False),
        (pb.Mount.BIND, str(app.parent / "static"), "/srv/static", True),
        (pb.Mount.BIND, "/etc/ssl/certs", "/etc/ssl/certs", True),
    ]
    refs = [(r.name, r.target, r.uid, r.gid, r.mode) for r in c.secrets]
    assert refs == [
        ("shop_db_password", "/run/secrets/db_password", 0, 0, 0),
        ("api_key", "/run/secrets/key.txt", 1000, 1000, 0o440),
    ]


def check_top_level(stack: Stack) -> None:
    req = stack.request
    # Networks: stack-prefixed, the subnet kept, the external one only named.
    nets = {n.annotations.name: n for n in req.networks}
    assert sorted(nets) == ["shop_back", "shop_front"]
    assert nets["shop_back"].subnet == "10.77.0.0/24"
    assert nets["shop_front"].annotations.labels[STACK_LABEL] == "shop"
    assert list(req.external_networks) == ["corp_shared"]
    assert [(f.name, f.data) for f in req.secrets] == [("shop_db_password", b"s3cret-pw\n")]
    assert list(req.external_secrets) == ["api_key"]
    assert [f.name for f in req.configs] == ["shop_site"]
    # Keys Swarm ignores: one warning each, naming file and line.
    assert len(stack.warnings) == 2
    assert any("container_name" in w and "docker-compose.yml:" in w for w in stack.warnings)
    assert any("services.web.restart" in w for w in stack.warnings)


def test_environment_beats_dotenv_and_required_variables(app: Path) -> None:
    stack = build([app], "shop", environ={"TAG": "2.0", "REGISTRY": "r.example"})
    assert services(stack)["shop_web"].task.container.image == "r.example/web:2.0"
    path = write(app.parent, "req.yml", "services:\n  a:\n    image: ${IMAGE:?set IMAGE}\n")
    with pytest.raises(ComposeError) as err:
        build([path], "s", environ={})
    assert "req.yml:3" in str(err.value) and "services.a.image" in str(err.value)
    assert "set IMAGE" in str(err.value)


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (
            "services:\n  web:\n    image: busybox\n    deploy:\n      replicas: three\n",
            ":5: services.web.deploy.replicas:",
            "expected an integer",
        ),
        ("servicez:\n  web:\n    image: busybox\n", ":1: servicez:", "unknown key 'servicez'"),
        (
            "services:\n  web:\n    image: busybox\n    portz: [80]\n",
            ":4: services.web.portz:",
            "unknown key",
        ),
        (
            "services:\n  web:\n    image: busybox\n    deploy:\n      mode: replicated\n"
            "      restart_policy:\n        condition: sometimes\n",
            ":7: services.web.deploy.restart_policy.condition:",
            "is not one of",
        ),
        (
            "services:\n  web:\n    image: busybox\n    networks: [net]\n"
            "networks:\n  net:\n    driver_opts:\n      encrypted: 'true'\n",
            ":8: networks.net.driver_opts.encrypted:",
            "encrypted overlay networks are refused",
        ),
        (
            "services:\n  web:\n    image: busybox\n    secrets: [nope]\n",
            ":4: services.web.secrets.0:",
            "not declared",
        ),
        ("services:\n  web:\n    command: sleep 1\n", ":2: services.web:", "`image` is required"),
        ("services:\n  web: [\n", ":3:", "invalid YAML"),
    ],
)
def test_invalid_files_name_file_key_and_line(
    tmp_path: Path, text: str, where: str, what: str
) -> None:
    path = write(tmp_path, "bad.yml", text)
    with pytest.raises(ComposeError) as err:
        build([path], "s", environ={})
    message = str(err.value)
    assert message.startswith(str(path)), message
    assert where in message and what in message, message


def test_several_files_merge_in_order(app: Path) -> None:
    override = write(
        app.parent,
        "docker-compose.prod.yml",
        """\
        services:
          web:
            environment:
              PRICE: "10"
              EXTRA: "1"
            deploy:
              replicas: 5
          api:
            deploy:
              replicas: 4
        """,
    )
    with pytest.raises(ComposeError) as err:
        build([app, override], "shop", environ={})
    # The merged api is global with replicas: the error names the override's line.
    assert "docker-compose.prod.yml:10" in str(err.value) and "replicas" in str(err.value)
    override.write_text(override.read_text().replace("      replicas: 4", "      labels: {x: z}"))
    stack = build([app, override], "shop", environ={})
    web = services(stack)["shop_web"]
    assert web.replicated.replicas == 5
    assert "PRICE=10" in web.task.container.env and "EXTRA=1" in web.task.container.env
    assert "BACKEND_URL=http://api:9000" in web.task.container.env
    assert services(stack)["shop_api"].annotations.labels["x"] == "z"


def test_default_network_and_unsupported_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        """\
        services:
          one: {image: busybox, command: sleep 1000}
          two:
            image: busybox
            depends_on: [one]
        """,
    )
    stack = build([path], "st", environ={})
    assert [n.annotations.name for n in stack.request.networks] == ["st_default"]
    assert all(
        [(a.target, list(a.aliases)) for a in s.task.networks]
        == [("st_default", [s.annotations.name[3:]])]
        for s in stack.request.services
    )
    assert any("depends_on" in w for w in stack.warnings)
    for bad, why in (
        ("    ports: ['127.0.0.1:80:80']\n", "one host address"),
        ("    volumes: ['/data']\n", "anonymous volumes"),
    ):
        path = write(tmp_path, "u.yml", "services:\n  one:\n    image: busybox\n" + bad)
        with pytest.raises(ComposeError, match=why):
            build([path], "st", environ={})


def test_a_rollback_follows_the_rollback_config_of_the_spec_it_leaves() -> None:
    from shoal.manager.orchestrator.update import update_config

    service = pb.Service()
    service.spec.update.parallelism = 1
    service.previous_spec.rollback.parallelism = 5
    assert update_config(service).parallelism == 1
    service.update_status.state = pb.UpdateStatus.ROLLBACK_STARTED
    assert update_config(service).parallelism == 5
    service.previous_spec.ClearField("rollback")
    assert update_config(service).parallelism == 1


@given(
    text=st.text(st.characters(blacklist_characters="$", blacklist_categories=("Cs",))),
    value=st.text(st.characters(blacklist_characters="$", blacklist_categories=("Cs",))),
)
def test_interpolation_properties(text: str, value: str) -> None:
    """Text without `$` is left alone; `$$` is one `$`; `${V}`, `$V` and defaults expand."""
    subst = Interpolator({"V": value}, Path("c.yml")).substitute
    assert subst(text, []) == text
    assert subst(f"{text}$${text}", []) == f"{text}${text}"
    default = text.replace("}", "")  # a default ends at the first `}`, as in compose
    expanded = subst(f"<${{V}}|$V|${{W:-{default}}}|${{W-x}}>", [])
    assert expanded == f"<{value}|{value}|{default}|x>"
    if value:
        assert subst("${V:?needed}", []) == value
    else:
        with pytest.raises(ComposeError, match="needed"):
            subst("${V:?needed}", [])


def test_service_networking_keys_map_to_the_spec(tmp_path: Path) -> None:
    """Host-mode and target-only ports, dnsrr and internal networks are honoured."""
    path = write(
        tmp_path,
        "net.yml",
        """\
        services:
          web:
            image: busybox
            ports:
              - {target: 80, published: 8080, mode: host}
              - {target: 53, protocol: udp}
              - "9000"
            networks: [back]
            deploy: {endpoint_mode: dnsrr}
        networks:
          back: {internal: true}
        """,
    )
    stack = build([path], "st", environ={})
    (web,) = stack.request.services
    ports = [(p.published_port, p.target_port, p.protocol, p.mode) for p in web.ports]
    assert ports == [
        (8080, 80, pb.PortConfig.TCP, pb.PortConfig.HOST),
        (0, 53, pb.PortConfig.UDP, pb.PortConfig.INGRESS),
        (0, 9000, pb.PortConfig.TCP, pb.PortConfig.INGRESS),
    ]
    assert web.endpoint_mode == pb.ENDPOINT_DNSRR
    (back,) = stack.request.networks
    assert back.internal is True
