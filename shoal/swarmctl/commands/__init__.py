"""swarmctl's command groups, one module each.

A module defines `group`, the click group of its commands. To add a group, write
its module and add one line to `GROUPS` in shoal/swarmctl/cli.py; a group is
imported only when it runs (or for `swarmctl --help`).
"""
