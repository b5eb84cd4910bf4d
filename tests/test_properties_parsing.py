"""Property tests (hypothesis) of pure parsing and building: OCI specs for random task
configs, image references, and swarmctl's duration and size values."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import registry
from shoal.manager import validation
from shoal.manager.confinement import CAPABILITIES
from shoal.swarmctl import output, parse
from shoal.worker.runtime import ocispec
from shoal.worker.runtime.base import ContainerConfig, MountConfig

# ---------------------------------------------------------------- OCI spec

ENV = st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}=[ -~]{0,12}", fullmatch=True)
CAPS = st.lists(st.sampled_from(sorted(CAPABILITIES)), max_size=3, unique=True)
IMAGE = {"config": {"Cmd": ["sh"], "Env": ["PATH=/bin", "IMG=1"], "WorkingDir": "/app"}}


@st.composite
def configs(draw: st.DrawFn) -> ContainerConfig:
    return ContainerConfig(
        container_id="c1",
        image="busybox",
        command=draw(st.lists(st.text(min_size=1, max_size=8), max_size=2)),
        args=draw(st.lists(st.text(max_size=8), max_size=3)),
        env=draw(st.lists(ENV, max_size=5)),
        workdir=draw(st.sampled_from(["", "/", "/srv/x"])),
        user=draw(st.sampled_from(["", "0", "1000", "1000:1000", "65534:100"])),
        hostname=draw(st.sampled_from(["", "abc123"])),
        mounts=[
            MountConfig(type="volume", source=name, target=f"/v/{name}", readonly=ro)
            for name, ro in draw(
                st.dictionaries(
                    st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.booleans(), max_size=2
                )
            ).items()
        ],
        # What the API accepts: 0, or 0.01 CPU and up.
        nano_cpus=draw(st.one_of(st.just(0), st.integers(validation.MIN_CPU_LIMIT, 64 * 10**9))),
        memory_bytes=draw(st.one_of(st.just(0), st.integers(validation.MIN_MEMORY, 1 << 40))),
        cap_add=draw(CAPS),
        cap_drop=draw(st.one_of(CAPS, st.just(["ALL"]))),
        seccomp_unconfined=draw(st.booleans()),
        pids_limit=draw(st.one_of(st.sampled_from([-1, 0]), st.integers(1, 100_000))),
    )


@settings(max_examples=60, deadline=None)
@given(config=configs())
def test_oci_spec_for_any_accepted_config(
    config: ContainerConfig, tmp_path_factory: pytest.TempPathFactory
) -> None:
    volumes = tmp_path_factory.mktemp("vol")
    spec = ocispec.build(config, IMAGE, [], volumes, "/shoal/t/c1")
    json.dumps(spec)  # what runc reads
    proc, linux = spec["process"], spec["linux"]
    assert proc["args"] and proc["noNewPrivileges"] is True
    assert proc["cwd"].startswith("/")
    # Env: one entry per key, the service's value over the image's.
    keys = [e.partition("=")[0] for e in proc["env"]]
    assert len(keys) == len(set(keys)) and "PATH" in keys
    for e in config.env:
        k = e.partition("=")[0]
        assert [x for x in proc["env"] if x.partition("=")[0] == k] == [
            config.env[max(i for i, y in enumerate(config.env) if y.partition("=")[0] == k)]
        ]
    caps = set(proc["capabilities"]["bounding"])
    assert caps <= CAPABILITIES and set(config.cap_add) <= caps
    if "ALL" in config.cap_drop:
        assert caps == set(config.cap_add)
    else:
        assert not (set(config.cap_drop) - set(config.cap_add)) & caps
    res = linux["resources"]
    if config.nano_cpus:
        # The kernel refuses a CFS quota under 1ms.
        assert res["cpu"]["quota"] >= 1000 and res["cpu"]["period"] == ocispec.CPU_PERIOD
    assert ("memory" in res) == bool(config.memory_bytes)
    if config.pids_limit == -1:
        assert "pids" not in res
    else:
        assert res["pids"]["limit"] == (config.pids_limit or ocispec.DEFAULT_PIDS_LIMIT)
    assert ("seccomp" in linux) != config.seccomp_unconfined
    assert {"type": "cgroup"} in linux["namespaces"]
    dests = [m["destination"] for m in spec["mounts"]]
    assert len(dests) == len(set(dests)) and all(d.startswith("/") for d in dests)
    for m in spec["mounts"]:
        if m["type"] == "bind":
            assert {"nosuid", "nodev"} <= set(m["options"])


# ---------------------------------------------------------------- image references

COMPONENT = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)?", fullmatch=True)
# Docker's rule: a first component with a '.' or ':' (or `localhost`) names a registry.
FIRST = st.from_regex(r"[a-z0-9]+(?:[_-][a-z0-9]+)?", fullmatch=True).filter(
    lambda c: c != "localhost"
)
REGISTRY = st.one_of(
    st.just(""),
    st.from_regex(r"[a-z0-9]+\.[a-z]{2,5}(?::[0-9]{2,5})?", fullmatch=True),
    st.from_regex(r"localhost:[0-9]{2,5}", fullmatch=True),
    st.from_regex(r"127\.0\.0\.1:[0-9]{2,5}", fullmatch=True),
)
TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
DIGEST = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@given(
    reg=REGISTRY,
    first=FIRST,
    rest=st.lists(COMPONENT, max_size=2),
    tag=st.one_of(st.just(""), TAG),
    digest=st.one_of(st.just(""), DIGEST),
)
def test_image_reference_round_trip(
    reg: str, first: str, rest: list[str], tag: str, digest: str
) -> None:
    repo = "/".join([first, *rest])
    text = (
        (f"{reg}/" if reg else "")
        + repo
        + (f":{tag}" if tag else "")
        + (f"@{digest}" if digest else "")
    )
    validation.check_image(text)  # what the API accepts, the puller parses
    ref = registry.parse_reference(text)
    assert ref.registry == (reg or registry.DOCKER_HUB)
    assert ref.repository == (repo if reg or "/" in repo else f"library/{repo}")
    assert ref.tag == (tag or "latest") and ref.digest == digest
    assert ref.target == (digest or tag or "latest")
    # containerd's name is a fixed point: parsing it again names the same image.
    again = registry.parse_reference(ref.name)
    assert again.name == ref.name and again.target == ref.target
    if digest:
        pinned = registry.pinned_reference(text, digest)
        assert registry.parse_reference(pinned).digest == digest


@settings(max_examples=60)
@given(st.one_of(st.from_regex(validation._IMAGE), st.text(max_size=40)))
def test_every_reference_the_api_accepts_parses(text: str) -> None:
    """What a service may name, the puller can parse (and the other way round: the API
    refuses what the puller would choke on)."""
    try:
        validation.check_image(text)
    except validation.InvalidSpec:
        return
    ref = registry.parse_reference(text)
    assert ref.repository and ref.target


# ---------------------------------------------------------------- durations and sizes


@given(st.integers(0, 10**12))
def test_duration_round_trip(ms: int) -> None:
    assert parse.duration_ms(output.duration(ms)) == ms


@given(
    st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(["h", "m", "s", "ms"])),
        min_size=1,
        max_size=4,
    )
)
def test_duration_parts_add_up(parts: list[tuple[int, str]]) -> None:
    unit_ms = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse.duration_ms(text) == sum(n * unit_ms[u] for n, u in parts)


@given(
    st.integers(0, 10**9),
    st.sampled_from(["", "k", "m", "g", "K", "M", "G", "t"]),
    st.sampled_from(["", "b", "ib", "B", "iB"]),
)
def test_memory_size_round_trip(n: int, unit: str, suffix: str) -> None:
    if not unit and suffix.lower() == "ib":
        suffix = ""
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit.lower()]
    assert parse.memory_bytes(f"{n}{unit}{suffix}") == n * scale


@given(st.text(max_size=30))
def test_parsers_refuse_with_one_line_or_return_a_value(text: str) -> None:
    for fn in (parse.duration_ms, parse.memory_bytes, parse.nano_cpus):
        try:
            value = fn(text)
        except ValueError as err:
            assert "\n" not in str(err).replace(repr(text), "")
        else:
            assert isinstance(value, int) and value >= 0
