"""The ``duckmesh`` command, assembled from its parts.

- ``serve``: the server processes (``up``, ``api``, ``coordinator``, ``compactor``);
- ``admin``: catalog commands (migrations, tenants, keys, maintenance of one tenant);
- ``client``: commands that talk to a running server over HTTP;
- ``runtime``: the composition root every server process starts from.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from duckmesh.cli import admin, client, demo, serve

SERVERS = "Server processes"
CLIENT = "Client: needs a server and a key (HTTP)"
CATALOG = "Catalog admin: needs the catalog database"

app = typer.Typer(
    help="DuckMesh: HTTP ingest -> Parquet snapshots -> DuckDB SQL.\n\n"
    "Client commands talk to a running server over HTTP: --server/--key, else DUCKMESH_SERVER/DUCKMESH_API_KEY,"
    " else a profile in $XDG_CONFIG_HOME/duckmesh/config.toml (docs/cli.md). Catalog commands open the catalog"
    " database: DUCKMESH_CATALOG_DSN, else the embedded PostgreSQL under DUCKMESH_STATE_DIR (./.duckmesh).",
    no_args_is_help=True, pretty_exceptions_enable=False,
)
serve.register(app, SERVERS)
demo.register(app, SERVERS)
client.register(app, CLIENT)
admin.register(app, CATALOG)


def main() -> None:
    """The console script. Anything that escapes a command is one line too (DUCKMESH_TRACEBACK=1 shows it)."""
    try:
        app(prog_name="duckmesh")
    except Exception as exc:
        if os.environ.get("DUCKMESH_TRACEBACK"):
            raise
        logging.getLogger("duckmesh").debug("command_failed", exc_info=True)
        print(f"error: INTERNAL: {type(exc).__name__}: {exc} (DUCKMESH_TRACEBACK=1 shows where)", file=sys.stderr)
        sys.exit(1)
