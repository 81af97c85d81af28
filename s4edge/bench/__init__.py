"""``s4edge bench …``: benchmarks that print JSON. Each one measures, in the same run,
the peer or limit it is judged against, and quotes medians."""

from __future__ import annotations

import importlib
import re
from typing import Any

import typer

from s4edge.cli import LazyGroup, Listed, declared_help

BENCHMARKS: tuple[str, ...] = (
    "console",
    "incidents",
    "ingest",
    "latency",
    "ng112",
    "outbox",
    "replicas",
    "sensing",
    "soak",
    "vision",
)
# a benchmark module's docstring opens with ``s4edge bench NAME``: then says what it measures
_LEAD = re.compile(r"^``[^`]*``:\s*")


class Benchmarks(LazyGroup):
    """One command per module of this package, imported only when it runs: each one needs
    other extras (the aggregator's database, the vision runtime, …)."""

    def catalogue(self) -> dict[str, Listed]:
        def loader(name: str) -> Any:
            def load() -> Any:
                bench = typer.Typer(add_completion=False)
                importlib.import_module(f"{__name__}.{name}").register(bench)
                return typer.main.get_command(bench)

            return load

        def summary(name: str) -> str:
            what = _LEAD.sub("", declared_help(f"{__name__}.{name}"))
            return what[:1].upper() + what[1:]

        return {name: Listed(name, summary(name), loader(name)) for name in BENCHMARKS}


bench_app = typer.Typer(
    cls=Benchmarks, help="Benchmarks (JSON output, medians, ratios to targets).", no_args_is_help=True
)
