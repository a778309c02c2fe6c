"""The DuckMesh Python client: sync (``Client``) and async (``AsyncClient``) over httpx.

    from duckmesh.client import Client

    with Client("http://127.0.0.1:8080", "dm_...") as dm:
        summary = dm.ingest_file("events", "events.ndjson")        # batched, retried, idempotent
        dm.wait_for_token(summary.last_token)                      # read-after-write
        rows = dm.query("SELECT count(*) FROM events").rows
        table = dm.query_arrow("SELECT * FROM events")             # pyarrow.Table
        frame = dm.query_pandas("SELECT * FROM events")            # when pandas is installed

Errors are ``duckmesh.errors.RemoteError`` (the server's ``server_code``, ``message``, ``status``,
``context``) and ``ServerUnreachable``; retryable ones are retried with backoff first.
"""

from duckmesh.client.aio import AsyncClient
from duckmesh.client.calls import RetryPolicy
from duckmesh.client.config import Connection, config_path, resolve
from duckmesh.client.results import ExportResult, IngestSummary, QueryResult, Receipt
from duckmesh.client.sync import Client
from duckmesh.errors import RemoteError, ServerUnreachable

__all__ = [
    "AsyncClient", "Client", "Connection", "ExportResult", "IngestSummary", "QueryResult", "Receipt", "RemoteError",
    "RetryPolicy", "ServerUnreachable", "config_path", "resolve",
]
