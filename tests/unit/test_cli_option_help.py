"""Every option of every command a node or the fleet centre installs says what it is, and what it
is when not given: a technician on site, offline, has ``--help`` and nothing else (``s4edge sensors
calibrate --help`` showed ``--config``, ``--samples`` and ``--sim`` bare), and so has the
municipality's operator who runs the aggregator at 3 a.m. (``aggregator run --username`` and
``ng112 psap --count`` said nothing of what they were or what they were when not given)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.core import TyperGroup

from s4edge.cli import Listed, app
from s4edge.plugins import COMMANDS, plugins

NODE_EXTRAS = {"node", "vision"}  # the extras a node installs (pyproject.toml)
CENTRE_EXTRAS = {"node", "aggregator", "postgres", "ng112"}  # the fleet centre's: the CA and provisioning too


def commands_for(extras: set[str]) -> list[str]:
    """The commands an install of these extras provides: those that need no other extra."""
    return sorted(name for name, entry_point in plugins(COMMANDS).items() if set(entry_point.extras) <= extras)


def node_commands() -> list[str]:
    return commands_for(NODE_EXTRAS)


def installed_commands() -> list[str]:
    """What a node or the fleet centre runs."""
    return sorted(set(commands_for(NODE_EXTRAS)) | set(commands_for(CENTRE_EXTRAS)))


def parameters(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(command path, parameter) for every parameter under ``command``, subcommands included."""
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from parameters(sub, f"{path} {name}")
        return
    for param in command.params:
        if param.name != "help":
            yield path, param


def loaded(name: str) -> Any:
    """``s4edge NAME`` as the root group resolves it to run (its module imported)."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    command = root.get_command(typer.Context(root), name)
    return command.load() if isinstance(command, Listed) else command


def test_the_node_commands_are_found() -> None:
    assert {"agent", "doctor", "sensors", "nir", "models", "detect", "provision"} <= set(node_commands())


def test_the_centre_commands_are_found() -> None:
    assert {"aggregator", "fleet", "ng112"} <= set(installed_commands())


@pytest.mark.parametrize("name", installed_commands())
def test_every_option_says_what_it_is(name: str) -> None:
    bare = [f"s4edge {path} {param.opts[0]}" for path, param in parameters(loaded(name), name) if not param.help]
    assert not bare, f"options without a help text: {bare}"


@pytest.mark.parametrize("name", installed_commands())
def test_every_option_says_its_default(name: str) -> None:
    # --help prints "[default: X]" for a value; None or "" prints nothing, so the text must say it
    unsaid = [
        f"s4edge {path} {param.opts[0]}: {param.help}"
        for path, param in parameters(loaded(name), name)
        if param.param_type_name == "option"
        and not param.required
        and not param.is_flag
        and (param.default in (None, "") or param.show_default is False)
        and "default" not in (param.help or "").lower()
    ]
    assert not unsaid, f"options whose default --help does not show: {unsaid}"
