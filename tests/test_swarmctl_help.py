"""`swarmctl --help` lists every group with its own help line, loading none of them."""

from __future__ import annotations

import importlib
import subprocess
import sys

from shoal.swarmctl.cli import GROUPS, SUMMARIES


def test_summaries_are_the_groups_own() -> None:
    assert set(SUMMARIES) == set(GROUPS)
    for name, module in GROUPS.items():
        group = importlib.import_module(module).group
        assert SUMMARIES[name] == group.get_short_help_str(limit=200), name


def test_root_help_loads_no_group_nor_grpc() -> None:
    code = (
        "import sys\n"
        "from shoal.swarmctl.cli import cli\n"
        "try:\n"
        "    cli.main(['--help'], prog_name='swarmctl')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in sys.modules if m.startswith(('grpc', 'google', 'shoal.proto',"
        " 'shoal.swarmctl.commands'))]\n"
        "print('LOADED', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stderr, out.stderr
    for name, line in SUMMARIES.items():
        assert name in out.stdout and line in out.stdout
