"""A flag takes no value, and ``--help`` shows it without one: every flag of every command read
``--version <bool>``, ``--json <bool>``, ``--force --no-force <bool>``, and a technician tried
``s4edge agent status --json true``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from s4edge.cli import Listed, app
from s4edge.plugins import COMMANDS, plugins

runner = CliRunner()


def command_paths(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """``path`` and the path of every command under it."""
    yield path
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from command_paths(sub, (*path, name))


def all_command_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    paths: list[tuple[str, ...]] = [()]
    for name in sorted(plugins(COMMANDS)):
        command = root.get_command(typer.Context(root), name)
        paths += command_paths(command.load() if isinstance(command, Listed) else command, (name,))
    return paths


def help_of(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda path: " ".join(path) or "s4edge")
def test_no_flag_shows_a_value_type(path: tuple[str, ...]) -> None:
    assert "<bool>" not in help_of(path)


def test_flags_show_no_type_and_options_with_a_value_keep_theirs() -> None:
    text = help_of(("agent", "status"))
    (json_line,) = [line for line in text.splitlines() if "--json" in line]
    assert "<" not in json_line and "Print one JSON object" in json_line
    (config_line,) = [line for line in text.splitlines() if "--config" in line]
    assert "<path>" in config_line
