"""`swarmctl secret|config` and `--secret/--config` against a real manager process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from shoal.lab.procs import ManagerProcess, Result
from shoal.proto import objects_pb2 as pb
from shoal.swarmctl.filerefs import file_ref


def ctl(m: ManagerProcess, *args: str, stdin: bytes | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.swarmctl", *args],
        input=stdin,
        capture_output=True,
        env={**os.environ, "SWARM_SOCKET": str(m.socket)},
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def ok(m: ManagerProcess, *args: str, stdin: bytes | None = None) -> Any:
    r = ctl(m, *args, stdin=stdin)
    assert r.code == 0, f"swarmctl {' '.join(args)}: {r.err}"
    return json.loads(r.out) if "--format" in args else r.out


def test_file_ref_flags() -> None:
    ref = json_format.ParseDict(
        file_ref("db_pw@2,target=/etc/pw,uid=5,gid=6,mode=0400"), pb.FileReference()
    )
    assert (ref.name, ref.version, ref.pinned, ref.target, ref.uid, ref.gid, ref.mode) == (
        "db_pw",
        2,
        True,
        "/etc/pw",
        5,
        6,
        0o400,
    )
    assert file_ref("source=site,target=/etc/site.conf", "config")["name"] == "site"
    for bad, why in (
        ("pw@0", "count from 1"),
        ("pw,mode=999", "octal|number|not a file mode"),
        ("pw,colour=red", "unknown key"),
        ("pw,uid=-1", "out of range|number"),
        (",target=/x", "name is required"),
    ):
        with pytest.raises(ValueError, match=why):
            file_ref(bad)


def test_secret_commands_never_print_the_data(
    tmp_path: Path, managers: list[ManagerProcess]
) -> None:
    m = ManagerProcess(tmp_path / "m1").start()
    managers.append(m)
    plain = secrets.token_hex(16)
    outputs: list[str] = []

    sid = ok(m, "secret", "create", "pw", "-", "--label", "team=db", stdin=plain.encode()).strip()
    listed = ok(m, "secret", "ls", "--format", "json")
    assert [{k: s[k] for k in ("id", "name", "secret_version", "labels")} for s in listed] == [
        {"id": sid, "name": "pw", "secret_version": 1, "labels": {"team": "db"}}
    ]
    assert all(listed[0][k] for k in ("created_at", "updated_at"))
    outputs += [json.dumps(listed), ok(m, "secret", "ls")]
    big = tmp_path / "big"
    big.write_bytes(b"x" * (500 * 1024 + 1))
    r = ctl(m, "secret", "create", "big", str(big))
    assert r.code == 1 and "500 KiB" in r.err

    ok(m, "service", "create", "--name", "pinned", "--image", "127.0.0.1:1/busybox:1", "-d",
       "--secret", "pw@1,target=/etc/pw,uid=5,gid=6,mode=0400", "sleep", "1")  # fmt: skip
    ok(m, "service", "create", "--name", "follows", "--image", "127.0.0.1:1/busybox:1", "-d",
       "--secret", "pw", "sleep", "1")  # fmt: skip
    view = ok(m, "service", "inspect", "pinned", "--format", "json")
    assert view["secrets"] == [
        {
            "name": "pw",
            "id": sid,
            "secret_version": 1,
            "pinned": True,
            "target": "/etc/pw",
            "uid": 5,
            "gid": 6,
            "mode": "0400",
        }
    ]
    follows_before = ok(m, "service", "inspect", "follows", "--format", "json")
    assert follows_before["secrets"][0]["target"] == "/run/secrets/pw"

    (tmp_path / "v2").write_text(plain + "2")
    r = ctl(m, "secret", "update", "pw", str(tmp_path / "v2"))
    assert r.code == 0 and "follows" in r.err and "pinned" not in r.err
    outputs += [r.out, r.err]
    inspected = ok(m, "secret", "inspect", "pw", "--format", "json")
    assert inspected["secret_version"] == 2 and inspected["services"] == ["follows", "pinned"]
    outputs.append(json.dumps(inspected))
    follows = ok(m, "service", "inspect", "follows", "--format", "json")
    assert follows["secrets"][0]["secret_version"] == 2
    assert follows["spec_version"] == follows_before["spec_version"] + 1
    assert ok(m, "service", "inspect", "pinned", "--format", "json")["spec_version"] == 1

    r = ctl(m, "secret", "rm", "pw")
    assert r.code == 1 and "follows" in r.err and "pinned" in r.err
    ok(m, "service", "update", "follows", "--secret-rm", "pw", "-d")
    ok(m, "service", "rm", "pinned")
    assert ok(m, "secret", "rm", "pw").strip() == sid

    ok(m, "config", "create", "site", "-", stdin=b"listen 80\n")
    assert [c["name"] for c in ok(m, "config", "ls", "--format", "json")] == ["site"]
    assert ok(m, "secret", "ls", "--format", "json") == []

    assert not any(plain in text for text in outputs)
    for base, _, files in os.walk(m.state_dir):
        for name in files:
            path = Path(base, name)
            if path.is_file() and not path.is_socket():
                assert plain.encode() not in path.read_bytes(), path
