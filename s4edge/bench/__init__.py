"""``s4edge bench …``: benchmarks that print JSON. Each one measures, in the same run,
the peer or limit it is judged against, and quotes medians."""

from __future__ import annotations

import importlib

import typer

bench_app = typer.Typer(help="Benchmarks (JSON output, medians, ratios to targets).", no_args_is_help=True)

BENCHMARKS: tuple[str, ...] = ("ingest", "latency", "ng112", "outbox", "replicas", "sensing", "vision")


def register(app: typer.Typer) -> None:
    for name in BENCHMARKS:
        importlib.import_module(f"s4edge.bench.{name}").register(bench_app)
    app.add_typer(bench_app, name="bench")
