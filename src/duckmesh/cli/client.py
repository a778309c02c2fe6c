"""Commands that talk to a DuckMesh server over HTTP."""

from __future__ import annotations

import typer


def register(app: typer.Typer, panel: str) -> None:
    return None
