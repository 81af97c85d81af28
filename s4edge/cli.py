"""The ``s4edge`` command. Every surface registers itself through the same path."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import typer

from s4edge import __version__

app = typer.Typer(
    name="s4edge",
    help="Edge runtime for smart-city safety nodes: metadata-only alerts, never pixels.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
schema_app = typer.Typer(help="The wire contract (s4edge/1).", no_args_is_help=True)
app.add_typer(schema_app, name="schema")

# Each module exposes register(app); built-ins use the path a third-party plugin would.
SURFACES = (
    "s4edge.edge.cli",
    "s4edge.edge.doctor",
    "s4edge.edge.vision.cli",
    "s4edge.edge.sensing.cli",
    "s4edge.cloud_sync.aggregator.cli",
    "s4edge.cloud_sync.ng112.cli",
    "s4edge.cloud_sync.fleet.cli",
    "s4edge.demo",
    "s4edge.bench",
)


@schema_app.command("export")
def schema_export(
    out_dir: Path = typer.Argument(..., help="Folder to write one JSON Schema per message type."),
) -> None:
    """Write the JSON Schema of every message type, for systems that validate without Python."""
    from s4edge.cloud_sync.messages import json_schemas

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        path = out_dir / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        typer.echo(str(path))


@app.callback(invoke_without_command=True)
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()


for _surface in SURFACES:
    importlib.import_module(_surface).register(app)


def main() -> None:
    app()
