"""The README's CLI table is checked against the click commands, so it cannot drift from the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import click

from scenegrep.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])")


def _cli_rows() -> dict[str, str]:
    """command name -> the first cell of its row in the README's "## CLI" table."""
    section = README.read_text(encoding="utf-8").split("\n## CLI\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([a-z][a-z-]*)([^`]*)`\s*\|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} has two rows"
            rows[m.group(1)] = m.group(1) + m.group(2)
    return rows


def test_every_command_has_a_row_and_every_row_a_command():
    assert set(_cli_rows()) == set(cli.commands)


def test_each_row_names_exactly_the_options_of_its_command():
    for name, cell in _cli_rows().items():
        cmd = cli.commands[name]
        named = set(_FLAG.findall(cell))
        options = [p for p in cmd.params if isinstance(p, click.Option)]
        names_of = {p.name: set(p.opts) | set(p.secondary_opts) for p in options}  # --x/--no-x: both
        known = set().union(*names_of.values()) if names_of else set()
        assert named <= known, f"README names options `{name}` does not have: {sorted(named - known)}"
        missing = [p.opts[-1] for p in options if not names_of[p.name] & named]
        assert not missing, f"README's `{name}` row lacks {missing}"
        for arg in (p for p in cmd.params if isinstance(p, click.Argument)):
            shown = (arg.metavar or arg.name).upper()
            assert shown in cell.upper(), f"README's `{name}` row lacks the argument {shown}"


def test_global_options_are_documented():
    text = README.read_text(encoding="utf-8")
    for p in cli.params:
        if isinstance(p, click.Option):
            assert any(o in text for o in p.opts), p.opts
