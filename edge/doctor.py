"""CLI surface (placeholder: its owner fills it in)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this surface's commands to the root ``s4edge`` app."""
