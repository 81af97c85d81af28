"""The ``s4edge`` command. Its commands are entry points (``s4edge.commands``), built-in or
third-party alike: ``s4edge --help`` lists them without importing them, and a command's
module is imported only when that command runs, so that start-up stays fast and a
node without the aggregator's libraries runs its own commands.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from s4edge import __version__


def _flags_show_no_value_type() -> None:
    """A flag takes no value, so its help shows none. click's plain help leaves a flag's type out
    (``TyperOption.get_help_record``); typer's rich panel, which every ``--help`` here renders,
    asks ``display_type_rich`` of every option and showed ``--version <bool>``, ``--json <bool>``,
    as if each took one (typer 0.29). A typer without that method skips flags itself."""
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:
        return

    def value_type(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag or self.count else shown(self, ctx)

    TyperOption.display_type_rich = value_type  # type: ignore[method-assign]


_flags_show_no_value_type()


class Listed(TyperCommand):
    """A command as a listing shows it: its name and the help its source declares.
    ``load`` imports it when it runs."""

    def __init__(self, name: str, help: str, load: Callable[[], Any]) -> None:
        super().__init__(name, help=help)
        self.load = load


class BrokenCommand(RuntimeError):
    """A command's module raised as it was imported (a third-party plugin's bug)."""


class LazyGroup(TyperGroup):
    """A group that imports a command only when it is resolved to run (or show its own help)."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._listed = False

    def catalogue(self) -> dict[str, Listed]:
        raise NotImplementedError

    def _all(self) -> Any:
        if not self._listed:
            self._listed = True
            for name, listed in self.catalogue().items():
                self.commands.setdefault(name, listed)
        return self.commands

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted(self._all())

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return self._all().get(cmd_name)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and isinstance(command, Listed):
            command = self.commands[name] = command.load()
        return name, command, rest


def click_command(name: str, target: Any) -> Any:
    """A Typer app becomes a group and a function a command, as ``add_typer`` and ``command`` make them."""
    if isinstance(target, typer.Typer):
        return typer.main.get_group(target)
    single = typer.Typer(add_completion=False)
    single.command(name)(target)
    return typer.main.get_command(single)


def declared_help(module: str, attr: str | None = None) -> str:
    """The help a module's source declares for ``attr`` (``Typer(help=...)`` or the function's
    docstring), or its own docstring. The module is parsed, not run (finding it imports only
    its parent packages), so a listing neither pays for a command's imports nor fails on a
    missing extra."""
    try:
        spec = importlib.util.find_spec(module)
        get_source = getattr(spec.loader, "get_source", None) if spec else None
        source = (get_source(module) if get_source else None) or ""
        tree = ast.parse(source)
    except Exception:  # a third-party package whose __init__ raises anything: no help, still listed
        return ""
    if attr is None:
        return ast.get_docstring(tree) or ""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == attr:
            return ast.get_docstring(node) or ""
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == attr for t in targets):
                helps = [k.value for k in node.value.keywords if k.arg == "help" and isinstance(k.value, ast.Constant)]
                return str(helps[0].value) if helps else ""
    return ""


class Commands(LazyGroup):
    """The root group: one command per ``s4edge.commands`` entry point. A command whose extra
    is not installed says which, in one line, and exits 2."""

    def catalogue(self) -> dict[str, Listed]:
        from s4edge.plugins import COMMANDS, MissingExtra, load, plugins

        def loader(name: str, entry_point: Any) -> Callable[[], Any]:
            def load_command() -> Any:
                try:
                    return click_command(name, load(entry_point, f"'s4edge {name}'"))
                except (ImportError, MissingExtra):
                    raise  # invoke names the extra that installs it
                except Exception as exc:  # a plugin that raises as it is imported: one line, the rest still run
                    raise BrokenCommand(f"'s4edge {name}' ({entry_point.value}) failed to load: {exc!r}") from exc

            return load_command

        return {
            name: Listed(name, declared_help(ep.module, ep.attr), loader(name, ep))
            for name, ep in plugins(COMMANDS).items()
        }

    def invoke(self, ctx: Any) -> Any:
        from s4edge.plugins import COMMANDS, MissingExtra, missing_extra, plugins

        try:
            return super().invoke(ctx)
        except BrokenCommand as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except MissingExtra as exc:
            missing: MissingExtra | None = exc
        except ModuleNotFoundError as exc:  # a lazy import inside the command
            name = ctx.invoked_subcommand
            entry_point = plugins(COMMANDS).get(name) if name else None
            missing = missing_extra(exc, f"'s4edge {name}'", entry_point) if entry_point else None
            if missing is None:
                raise
        typer.echo(f"error: {missing}", err=True)
        raise typer.Exit(2)


app = typer.Typer(
    name="s4edge",
    cls=Commands,
    help="Edge runtime for smart-city safety nodes: metadata-only alerts, never pixels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="The wire contract (s4edge/1).", no_args_is_help=True)


@schema_app.command("export")
def schema_export(
    out_dir: Path = typer.Argument(..., help="Folder to write one JSON Schema per message type."),
) -> None:
    """Write the JSON Schema of every message type, for systems that validate without Python."""
    from s4edge.cloud_sync.messages import json_schemas

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, schema in json_schemas().items():
            path = out_dir / f"{name}.schema.json"
            path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
            typer.echo(str(path))
    except OSError as exc:
        typer.echo(f"error: cannot write to {out_dir}: {exc.strerror or exc}; choose a folder you can write", err=True)
        raise typer.Exit(1) from None


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


def main() -> None:
    # Answered before typer parses anything: its option parsing imports pydantic (0.1 s), and
    # scripts and installers ask for the version more than anything else.
    if sys.argv[1:] == ["--version"]:
        print(__version__)
        return
    app()
